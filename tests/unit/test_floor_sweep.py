"""The false-alarm sweep's command: its per-batch log, and resuming a stopped sweep from it."""
from __future__ import annotations

import json

import pytest

from pytest_blendmask import floor_sweep

SMALL = ["--target", "cpu:fp16", "--size", "64", "--batch-size", "1", "--json"]


def run(capsys, *argv: str) -> dict:
    assert floor_sweep.main([*SMALL, *argv]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_resumed_sweep_takes_logged_batches_and_runs_only_the_rest(tmp_path, capsys, monkeypatch):
    log = tmp_path / "sweep.jsonl"
    first = run(capsys, "--images", "1", "--log", str(log))
    measured = []
    real_floor = floor_sweep.target_floor

    def counted_floor(target, model, batch, *rest):
        measured.append(batch.shape[0])
        return real_floor(target, model, batch, *rest)

    monkeypatch.setattr(floor_sweep, "target_floor", counted_floor)
    resumed = run(capsys, "--images", "2", "--log", str(log), "--resume")
    assert measured == [1]  # image 0 came from the log; image 1 was measured
    (sweep,) = resumed["targets"]
    assert (sweep["batches"], sweep["from_log"]) == (2, 1)
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert [row.get("images") for row in logged] == [None, [0], [1]]
    for metric, (value, _) in first["targets"][0]["highest"].items():
        assert sweep["highest"][metric][0] >= value


def test_the_log_is_not_overwritten_nor_resumed_with_other_settings(tmp_path, capsys):
    log = tmp_path / "sweep.jsonl"
    run(capsys, "--images", "1", "--log", str(log))
    before = log.read_text()
    with pytest.raises(SystemExit) as exists:
        floor_sweep.main([*SMALL, "--images", "1", "--log", str(log)])
    with pytest.raises(SystemExit) as other:
        floor_sweep.main([*SMALL, "--images", "1", "--log", str(log), "--resume", "--size", "96"])
    assert exists.value.code == other.value.code == 2
    errors = capsys.readouterr().err
    assert "exists; pass --resume" in errors and "other settings" in errors and str(log) in errors
    assert log.read_text() == before


def test_a_log_cut_short_names_its_line(tmp_path, capsys):
    log = tmp_path / "sweep.jsonl"
    run(capsys, "--images", "1", "--log", str(log))
    log.write_text(log.read_text() + '{"target": "cpu:fp16", "ima')
    with pytest.raises(SystemExit):
        floor_sweep.main([*SMALL, "--images", "2", "--log", str(log), "--resume"])
    assert "line 3 is not JSON; remove it to resume" in capsys.readouterr().err
