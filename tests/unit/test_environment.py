"""The environment block: what the report says ran where, captured once when the session starts."""
from __future__ import annotations

from pathlib import Path

import pytest

from pytest_blendmask.environment import cann_version
from pytest_blendmask.result_cache import file_digest
from tests.unit.report_support import final_report


def test_the_environment_is_the_one_at_session_start(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASK_QUEUE_ENABLE", raising=False)
    pytester.makepyfile(
        """
        import os

        def test_changes_a_knob():
            os.environ["TASK_QUEUE_ENABLE"] = "2"
        """
    )
    pytester.runpytest("--bm-target=cpu").assert_outcomes(passed=1)
    assert final_report(pytester)["environment"]["npu_env"]["TASK_QUEUE_ENABLE"] is None


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"compiler/version.info": "Version=8.0.RC2\nversion_dir=8.0\n"}, "8.0.RC2"),
        ({"version.cfg": "# comment\ntoolkit_installed_version=[8.1.RC1.alpha002:8.1]\n"}, "8.1.RC1.alpha002"),
        ({}, "not found"),
    ],
)
def test_cann_version_reads_the_toolkit_version_files(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = cann_version({"ASCEND_TOOLKIT_HOME": str(tmp_path)})
    assert found["version"] == expected
    assert (found["source"] is None) == (not files)


def test_file_digest_is_the_sha256_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"abc")
    assert file_digest(tmp_path / "w.safetensors") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
