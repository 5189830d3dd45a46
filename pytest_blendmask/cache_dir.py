"""Where pytest-blendmask keeps what it computes once and reuses: one root for every cache.

``$BM_CACHE_DIR`` when set, else ``.bm_cache`` in the repository checkout (found from this
file), else in the working directory (an installed wheel has no checkout). Each cache has a
folder of its own under it: ``data`` (synthetic splits), ``onnx`` (exports), ``reference``
(the reference's results), ``kernels`` (the C loops ``precision/c_kernels.py`` builds) and
``session`` (one session's device results, removed at its end).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

CACHE_ENV = "BM_CACHE_DIR"


def cache_root() -> Path:
    """``$BM_CACHE_DIR``, else ``.bm_cache`` in the checkout, else in the working directory."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[1]
    base = repo if (repo / "pyproject.toml").exists() or (repo / ".git").exists() else Path.cwd()
    return base / ".bm_cache"


def reference_dir() -> Path:
    """Where the reference's results are kept across runs (``run_cache.py``)."""
    return cache_root() / "reference"


def session_dir(run: str) -> Path:
    """The folder of session ``run``'s device results (``run_cache.py``), removed at its end."""
    return cache_root() / "session" / run


def remove_session_dir(run: str) -> None:
    """Delete session ``run``'s folder; called once, by the process that ran the session."""
    shutil.rmtree(session_dir(run), ignore_errors=True)
