"""The compute-once store: loads what was stored, recomputes what cannot be trusted, computes once across processes."""
from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pytest_blendmask.result_cache import MANIFEST, PAYLOAD, ResultCache, StaleCacheWarning

KEY = {"what": "target_run", "target": "cpu", "weights": "ab12"}


class Counter:
    """A compute function that counts its calls and returns a value with a tensor shared twice."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, object]:
        self.calls += 1
        shared = torch.arange(6.0)
        return {"raw": shared, "again": shared, "calls": self.calls}


def _stored(tmp_path: Path, key: dict = KEY) -> tuple[Path, Counter]:
    """An entry stored under ``key`` by a first computation, and the counter that computed it."""
    counter = Counter()
    entry = ResultCache(tmp_path, "run-1").get_or_compute(key, counter).entry
    return entry, counter


def test_a_second_call_loads_what_the_first_stored_without_computing(tmp_path: Path) -> None:
    counter = Counter()
    first = ResultCache(tmp_path, "run-1").get_or_compute(KEY, counter)
    second = ResultCache(tmp_path, "run-2").get_or_compute(dict(reversed(KEY.items())), counter)  # key order is no part of it
    assert (first.loaded, second.loaded, counter.calls) == (False, True, 1)
    assert second.entry == first.entry
    assert torch.equal(second.value["raw"], torch.arange(6.0)) and second.value["calls"] == 1
    assert second.value["raw"] is second.value["again"]  # torch.save keeps a shared tensor shared


@pytest.mark.parametrize("change", [{"weights": "ab13"}, {"target": "cpu:fp16"}, {"inputs": "x"}, {"what": "detection_run"}])
def test_each_part_of_the_key_makes_its_own_entry(tmp_path: Path, change: dict) -> None:
    entry, counter = _stored(tmp_path)
    other = ResultCache(tmp_path, "run-1").get_or_compute({**KEY, **change}, counter)
    assert (other.loaded, counter.calls) == (False, 2)
    assert other.entry != entry


def test_a_key_that_is_not_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ResultCache(tmp_path, "run-1").get_or_compute({"batch": torch.zeros(1)}, Counter())


def _flip_a_byte(entry: Path) -> None:
    data = bytearray((entry / PAYLOAD).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (entry / PAYLOAD).write_bytes(bytes(data))


def _truncate(entry: Path) -> None:
    data = (entry / PAYLOAD).read_bytes()
    (entry / PAYLOAD).write_bytes(data[: len(data) // 2])


def _garble_manifest(entry: Path) -> None:
    (entry / MANIFEST).write_text("{not json")


def _drop_manifest(entry: Path) -> None:
    (entry / MANIFEST).unlink()


def _edit_key(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["key"]["weights"] = "edited"
    (entry / MANIFEST).write_text(json.dumps(manifest))


def _unloadable_with_a_matching_checksum(entry: Path) -> None:
    from pytest_blendmask.result_cache import file_digest

    (entry / PAYLOAD).write_bytes(b"not a pickle")
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest.update(sha256=file_digest(entry / PAYLOAD), bytes=len(b"not a pickle"))
    (entry / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(("damage", "why"), [
    (_flip_a_byte, "truncated or corrupt"), (_truncate, "truncated or corrupt"), (_garble_manifest, "no readable"),
    (_drop_manifest, "no readable"), (_edit_key, "another key"), (_unloadable_with_a_matching_checksum, "does not load"),
])
def test_a_damaged_or_stale_entry_is_recomputed_with_a_warning_naming_it(tmp_path: Path, damage: Callable[[Path], None], why: str) -> None:
    entry, counter = _stored(tmp_path)
    damage(entry)
    with pytest.warns(StaleCacheWarning, match=rf"cache entry {entry}: .*{why}.*computing it again"):
        again = ResultCache(tmp_path, "run-2").get_or_compute(KEY, counter)
    assert (again.loaded, counter.calls, again.value["calls"]) == (False, 2, 2)
    # The entry was rewritten whole: the next call trusts it.
    assert ResultCache(tmp_path, "run-3").get_or_compute(KEY, counter).loaded


def test_recompute_ignores_entries_of_earlier_runs_but_shares_its_own(tmp_path: Path) -> None:
    entry, counter = _stored(tmp_path)
    recomputing = ResultCache(tmp_path, "run-2", accept_only_run="run-2")
    assert recomputing.get_or_compute(KEY, counter).loaded is False and counter.calls == 2
    worker_beside_it = ResultCache(tmp_path, "run-2", accept_only_run="run-2")  # another xdist worker of that run
    assert worker_beside_it.get_or_compute(KEY, counter).value["calls"] == 2 and counter.calls == 2
    assert json.loads((entry / MANIFEST).read_text())["run"] == "run-2"  # overwritten


def test_without_fcntl_every_call_still_gets_a_correct_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fcntl", None)  # `import fcntl` raises ImportError, as on Windows
    entry, counter = _stored(tmp_path)
    assert ResultCache(tmp_path, "run-2").get_or_compute(KEY, counter).loaded and counter.calls == 1


def _compute_slowly_in_a_process(root: str, log: str) -> tuple[float, bool, float, float]:
    """Run in a child process: count the computation in ``log`` and take long enough for the other
    process to ask meanwhile; (value, loaded, asked at, answered at)."""

    def compute() -> float:
        with open(log, "a") as stream:
            stream.write("computed\n")
        time.sleep(3.0)
        Path(f"{log}.end").write_text(repr(time.time()))
        return 42.0

    asked = time.time()
    cached = ResultCache(Path(root), "run-1").get_or_compute(KEY, compute)
    return cached.value, cached.loaded, asked, time.time()


def test_two_processes_asking_for_one_key_compute_it_once(tmp_path: Path) -> None:
    log = tmp_path / "computations.log"
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each, like an xdist worker
    with context.Pool(2) as pool:
        answers = pool.starmap(_compute_slowly_in_a_process, [(str(tmp_path / "cache"), str(log))] * 2)
    assert log.read_text().splitlines() == ["computed"]
    (computer,), (waiter,) = [a for a in answers if not a[1]], [a for a in answers if a[1]]
    assert computer[0] == waiter[0] == 42.0
    # The other process asked while the value was being computed, waited for it, and loaded it.
    computed_at = float((tmp_path / "computations.log.end").read_text())
    assert waiter[2] < computed_at <= waiter[3]
