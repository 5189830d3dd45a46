"""Running the real ``msprobe`` (PyPI ``mindstudio-probe``, the optional ``msprobe`` extra) from tests."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSTALL_HINT = "pip install -c constraints.txt -e '.[dev,msprobe]'"


def msprobe_command() -> str | None:
    """The ``msprobe`` of this interpreter's environment (CI runs the venv's pytest without
    activating it), else the one on PATH."""
    beside = Path(sys.executable).with_name("msprobe")
    return str(beside) if beside.is_file() else shutil.which("msprobe")


def require_msprobe() -> str:
    """``msprobe_command()``; skips the test, saying how to install it, where there is none."""
    msprobe = msprobe_command()
    if msprobe is None:
        pytest.skip(f"mindstudio-probe not installed (no msprobe beside {sys.executable} or on PATH): {INSTALL_HINT}")
    return msprobe


def run_msprobe_compare(target: Path, golden: Path, out: Path, timeout: float = 120) -> Path:
    """``msprobe compare -tp <target dump.json> -gp <golden dump.json> -o out``; returns its
    compare_result_<time>.csv. Skips where mindstudio-probe is not installed."""
    command = [require_msprobe(), "compare", "-tp", str(target), "-gp", str(golden), "-o", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    (path,) = out.glob("compare_result_*.csv")
    return path
