"""The environment block of the final report: what ran, where, with which software and model.

Captured once at session start (``plugin.py``) and handed to the report controller as a
plain dict, so that the report imports none of settings, targets or the model. Versions
come from the installed distributions' metadata, so that capturing them does not import
torch_npu or CANN libraries that the run itself never needed. The torch_npu probe (the
same one the targets use) is the exception: its reason is the point.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from pytest_blendmask.result_cache import file_digest
from pytest_blendmask.settings import MODEL_NAMES, SEED, Settings, describe_dataset, thresholds_path, weights_path
from pytest_blendmask.targets import Target, npu_environment, probe_torch_npu

NOT_FOUND = "not found"
DEFAULT_TOOLKIT_HOME = Path("/usr/local/Ascend/ascend-toolkit/latest")
# Where CANN writes its version, most specific first; set_env.sh exports ASCEND_TOOLKIT_HOME.
CANN_VERSION_FILES = ("version.info", "compiler/version.info", "runtime/version.info", "version.cfg")
_VERSION_RE = re.compile(r"^\s*(?:version|toolkit_installed_version)\s*=\s*\[?([^\]:\s]+)", re.IGNORECASE | re.MULTILINE)


def distribution_version(name: str) -> str | None:
    """The installed version of a distribution, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cann_version(environ: Mapping[str, str] = os.environ) -> dict[str, str | None]:
    """CANN's version from ``$ASCEND_TOOLKIT_HOME``'s version files: {"version", "source"}."""
    home = Path(environ.get("ASCEND_TOOLKIT_HOME") or DEFAULT_TOOLKIT_HOME)
    for name in CANN_VERSION_FILES:
        path = home / name
        try:
            match = _VERSION_RE.search(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if match:
            return {"version": match[1], "source": str(path)}
    return {"version": NOT_FOUND, "source": None}


def onnxruntime_info() -> dict[str, Any]:
    """ONNX Runtime's version and the execution providers this build can run."""
    try:
        import onnxruntime
    except ImportError as exc:
        return {"version": None, "providers": [], "reason": f"onnxruntime not importable: {exc}"}
    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers(), "reason": None}


def torch_npu_info() -> dict[str, Any]:
    """torch_npu's version and, when it cannot run, the probe's reason."""
    reason = probe_torch_npu()
    return {"version": distribution_version("torch-npu"), "available": reason is None, "reason": reason}


def model_info(settings: Settings) -> dict[str, Any]:
    """The model's name, input size, layout and the weights' path and hash."""
    weights = weights_path(settings)
    config = None
    if settings.model in MODEL_NAMES:
        from pytest_blendmask.model import get_config  # imports torch: only when a session starts

        config = asdict(get_config(settings.model))
    return {
        "name": settings.model,
        "input_size": list(settings.input_size) if settings.input_size else None,
        "config": config,
        "weights": str(weights) if weights else f"random init (seed {SEED})",
        "weights_sha256": file_digest(weights) if weights and weights.is_file() else None,
    }


def environment_at_end(run: str, settings: Settings) -> dict[str, Any]:
    """The environment known only when session ``run`` ends: which of the reference's results
    came from the cache (``run_cache.reference_cache_use``)."""
    from pytest_blendmask.run_cache import reference_cache_use  # imports torch, loaded by then

    return {"reference_cache": reference_cache_use(run, settings)}


def collect_environment(config: pytest.Config, settings: Settings, targets: list[Target]) -> dict[str, Any]:
    """The report's environment block."""
    thresholds = thresholds_path(settings)
    workers = getattr(config.option, "numprocesses", None)
    return {
        "host": {
            "name": platform.node(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
        "python": platform.python_version(),
        "pytest": pytest.__version__,
        "torch": distribution_version("torch"),
        "torch_npu": torch_npu_info(),
        "cann": cann_version(),
        "onnxruntime": onnxruntime_info(),
        "npu_env": npu_environment(),
        "targets": [t.id for t in targets],
        "targets_auto": not settings.targets,
        "reference": settings.reference.id,
        "devices": list(settings.devices),
        "xdist_workers": workers if isinstance(workers, int) else None,
        "thresholds": str(thresholds) if thresholds else None,
        "data": describe_dataset(settings),
        "model": model_info(settings),
    }
