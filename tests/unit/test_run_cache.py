"""The session's result cache: what enters its keys, which scope each result gets, and real runs reusing the reference."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pytest_blendmask import run_cache
from pytest_blendmask.cache_dir import CACHE_ENV, reference_dir, session_dir
from pytest_blendmask.model.fingerprint import code_digest, model_source_files, weights_digest
from pytest_blendmask.run_cache import common_key, open_run_cache, package_code_digest, tensors_digest
from pytest_blendmask.settings import Settings
from pytest_blendmask.targets import parse_target

REPO = Path(__file__).resolve().parents[2]
CPU, FP16 = parse_target("cpu"), parse_target("cpu:fp16")


class TinyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class EditedTinyModel(TinyModel):
    """The same layers with another forward: a code change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * 2


@pytest.fixture
def cache_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


def _model() -> nn.Module:
    torch.manual_seed(0)
    return TinyModel().eval()


def test_the_common_key_follows_weights_code_and_settings() -> None:
    model, settings = _model(), Settings()
    base = common_key(model, settings)
    assert common_key(model, settings) == base
    json.dumps(base)  # every part is JSON, as the store requires
    with torch.no_grad():
        changed = _model()
        changed.conv.bias.add_(1e-6)
    assert common_key(changed, settings)["weights"] != base["weights"]
    edited = EditedTinyModel().eval()
    edited.load_state_dict(model.state_dict())
    assert common_key(edited, settings)["model_code"] != base["model_code"]
    assert common_key(model, Settings(reference=FP16))["reference"] != base["reference"]
    assert common_key(model, Settings(deform_conv="fallback"))["deform_conv"] != base["deform_conv"]
    for part in ("package", "package_code", "torch", "torchvision", "cpu_capability", "torch_threads"):
        assert base[part]


def test_the_inputs_digest_follows_one_pixel() -> None:
    batch = torch.zeros(1, 3, 8, 8)
    other = batch.clone()
    other[0, 1, 2, 3] = 1e-3
    assert tensors_digest([batch]) == tensors_digest([batch.clone()])
    assert tensors_digest([other]) != tensors_digest([batch])
    assert tensors_digest([batch.half()]) != tensors_digest([batch])


def test_the_package_code_digest_follows_an_edit_without_a_version_bump(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(run_cache, "_PACKAGE_DIR", tmp_path)
    before = package_code_digest()
    (tmp_path / "a.py").write_text("x = 2\n")
    assert package_code_digest() != before


def test_the_model_code_covers_helpers_its_classes_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A package whose module class calls a helper of another file, imported inside a function.
    package = tmp_path / "edited_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "helpers.py").write_text("def double(x):\n    return x * 2\n")
    (package / "net.py").write_text(
        "from torch import nn\n\nclass Net(nn.Module):\n    def forward(self, x):\n"
        "        from .helpers import double\n        return double(x)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from edited_pkg.net import Net  # type: ignore[import-not-found]

    model = Net()
    assert set(model_source_files(model)) == {"edited_pkg.helpers", "edited_pkg.net"}
    before = code_digest(model)
    (package / "helpers.py").write_text("def double(x):\n    return x * 3\n")
    assert code_digest(model) != before


def test_a_reference_result_is_kept_and_a_device_result_is_the_sessions(cache_root: Path) -> None:
    model = _model()
    calls: list[str] = []
    first = open_run_cache(model, Settings(), "run-1")
    first.result("target_run", CPU, {"batch": "b"}, lambda: calls.append("cpu") or "ref")
    first.result("target_run", FP16, {"batch": "b"}, lambda: calls.append("fp16") or "dut")
    assert len(list(reference_dir().glob("*/manifest.json"))) == 1
    assert len(list(session_dir("run-1").glob("*/manifest.json"))) == 1
    worker_beside_it = open_run_cache(model, Settings(), "run-1")
    assert worker_beside_it.result("target_run", FP16, {"batch": "b"}, lambda: calls.append("fp16") or "dut") == "dut"
    second_session = open_run_cache(model, Settings(), "run-2")
    assert second_session.result("target_run", CPU, {"batch": "b"}, lambda: calls.append("cpu") or "ref") == "ref"
    assert second_session.result("target_run", FP16, {"batch": "b"}, lambda: calls.append("fp16") or "dut") == "dut"
    assert calls == ["cpu", "fp16", "fp16"]  # the device again in the second session, the reference not
    use = run_cache.reference_cache_use("run-2", Settings())
    assert use["loaded"] == [f"target_run cpu: {next(reference_dir().glob('*/')).name[:16]}"] and use["computed"] == []


def test_a_session_without_workers_keeps_device_results_off_disk(cache_root: Path) -> None:
    calls: list[str] = []
    alone = open_run_cache(_model(), Settings(), "run-1", workers_share=False)
    alone.result("target_run", CPU, {"batch": "b"}, lambda: calls.append("cpu") or "ref")
    assert alone.result("target_run", FP16, {"batch": "b"}, lambda: calls.append("fp16") or "dut") == "dut"
    assert calls == ["cpu", "fp16"]
    assert len(list(reference_dir().glob("*/manifest.json"))) == 1  # the reference is still kept for the next run
    assert not list(session_dir("run-1").glob("*/manifest.json"))


def test_recompute_computes_the_reference_again_once_per_session(cache_root: Path) -> None:
    model, calls = _model(), []
    open_run_cache(model, Settings(), "run-1").result("target_run", CPU, {}, lambda: calls.append(1))
    recompute = Settings(reference_cache="recompute")
    open_run_cache(model, recompute, "run-2").result("target_run", CPU, {}, lambda: calls.append(2))
    open_run_cache(model, recompute, "run-2").result("target_run", CPU, {}, lambda: calls.append(3))
    assert calls == [1, 2]


def test_a_reference_off_the_cpu_is_not_kept_across_sessions(cache_root: Path) -> None:
    settings = Settings(reference=parse_target("cuda:0"))
    run = open_run_cache(_model(), settings, "run-1")
    run.result("target_run", settings.reference, {}, lambda: "ref")
    assert not reference_dir().exists() or not any(reference_dir().iterdir())


# --- real sessions ----------------------------------------------------------------------------

def _session(root: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """The tensor-level acceptance tests on cpu:fp16 at 64x64, with the cache under ``root``."""
    reports = root / f"reports-{len(list(root.glob('reports-*')))}"
    command = [sys.executable, "-m", "pytest", str(REPO / "tests" / "precision" / "test_tensors.py"), "-m", "precision",
               "--bm-target", "cpu:fp16", "--bm-input-size", "64", "--bm-report-dir", str(reports),
               "-p", "no:cacheprovider", "-q", *args]
    env = {**os.environ, CACHE_ENV: str(root / "cache"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads((reports / "FINAL_REPORT.json").read_text())


def _values(report: dict) -> list[tuple]:
    return sorted((r["test"], r["metric"], json.dumps(r["value"]), r["passed"]) for r in report["records"]["precision"])


@pytest.mark.slow
def test_a_second_session_reuses_the_reference_and_xdist_gives_the_serial_records(tmp_path: Path) -> None:
    # Three runs of 5 tests on a 64x64 lite batch: ~30 s each on 2 busy cores.
    _, first = _session(tmp_path)
    computed = first["environment"]["reference_cache"]["computed"]
    assert [c.split(":")[0] for c in computed] == ["target_run cpu"] and first["environment"]["reference_cache"]["loaded"] == []
    _, second = _session(tmp_path, "-p", "xdist", "-n", "2")
    assert second["environment"]["xdist_workers"] == 2
    assert second["environment"]["reference_cache"]["loaded"] == computed
    assert second["environment"]["reference_cache"]["computed"] == []
    assert _values(second) == _values(first) and len(_values(first)) == 5
    _, third = _session(tmp_path, "--bm-reference-cache", "recompute")
    assert third["environment"]["reference_cache"]["computed"] == computed and _values(third) == _values(first)
    # Each session removed its device results at its end; the reference's stay.
    assert list((tmp_path / "cache" / "session").iterdir()) == []
    assert len(list((tmp_path / "cache" / "reference").glob("*/manifest.json"))) == 1

