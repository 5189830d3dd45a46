"""The session's results on disk: the reference's reused by later runs, each device's shared by one run's workers.

Two scopes of ``result_cache.ResultCache``:

- **reference** (``cache_dir.reference_dir()``): what the CPU reference computes (its runs, its
  detections, its AP) and what is derived from it alone (the noise floors). A later session
  with an equal key loads it; ``--bm-reference-cache recompute`` ignores what earlier runs
  stored and overwrites it. A reference on another device (``--bm-reference cuda:0``) is not
  kept across runs: which GPU computed it is no part of the key, so it gets the session scope.
- **session** (``cache_dir.session_dir(run id)``): what a device under test computes, shared by
  the xdist workers of one session (``placement.run_id``) so that one target runs once, and
  removed when the session ends: a second session must run the device again.

Every key holds what decides the result: the model (config, weights, the source of its code
and of this package, so that an edit invalidates without a version bump), the package,
torch and torchvision versions, the CPU's instruction set and torch's thread count (the
kernels' rounding differs with both), the reference and the deformable convolution chosen,
and the inputs (digests of the tensors, or of the files the images are read from); each
caller adds the rest.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torchvision
from torch import nn

from .cache_dir import reference_dir, session_dir
from .model.fingerprint import code_digest, model_description, weights_digest
from .result_cache import Cached, ResultCache, file_digest, package_version
from .settings import RECOMPUTE_REFERENCE, Settings
from .targets import Target

USAGE_LOG = "reference-entries.jsonl"  # in the session folder: which reference entries were loaded or computed
_PACKAGE_DIR = Path(__file__).resolve().parent

T = TypeVar("T")


def package_code_digest() -> str:
    """SHA-256 over this package's ``.py`` and ``.c`` sources (path and bytes): a development edit changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for pattern in ("*.py", "*.c") for p in _PACKAGE_DIR.rglob(pattern)):
        digest.update(f"{path.relative_to(_PACKAGE_DIR).as_posix()}|".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 over each tensor's dtype, shape and bytes, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over each file's name and content, in order: the identity of images read from disk."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}|{file_digest(path)}|".encode())
    return digest.hexdigest()


def common_key(model: nn.Module, settings: Settings) -> dict[str, Any]:
    """The key parts every entry of the session shares (module docstring)."""
    return {
        "package": package_version(),
        "package_code": package_code_digest(),
        "model": model_description(model),
        "model_code": code_digest(model),
        "weights": weights_digest(model),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # CPU kernels split their sums by thread: 1 and 2 threads differ in the last bits.
        "torch_threads": torch.get_num_threads(),
        "reference": settings.reference.id,
        "deform_conv": settings.deform_conv,
    }


@dataclass(frozen=True)
class RunCache:
    """The two scopes of one session (module docstring) and the key parts their entries share."""

    reference: ResultCache
    session: ResultCache
    common: Mapping[str, Any]
    reference_id: str
    reference_kept: bool  # the reference runs on the CPU: its results outlive the session
    # Other processes (xdist workers) may ask for the same device result; alone, a session keeps its
    # device results in memory (the fixtures do) instead of writing each to disk to read it never.
    workers_share: bool = True

    def result(self, what: str, target: Target, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """``what`` of ``target`` (e.g. ``target_run``): the reference's kept across runs, a device's for this session."""
        key = {**parts, "target": target.id}
        return self._get(target.id == self.reference_id, what, key, compute)

    def reference_result(self, what: str, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        """``what`` computed from the reference alone (a noise floor): kept as the reference's results are."""
        return self._get(True, what, parts, compute)

    def _get(self, of_reference: bool, what: str, parts: Mapping[str, Any], compute: Callable[[], T]) -> T:
        kept = of_reference and self.reference_kept
        if not kept and not self.workers_share:
            return compute()
        store = self.reference if kept else self.session
        cached: Cached[T] = store.get_or_compute({**self.common, **parts, "what": what}, compute)
        if kept:
            line = {"what": f"{what} {parts.get('target', '')}".strip(), "entry": cached.entry.name, "loaded": cached.loaded}
            with (self.session.root / USAGE_LOG).open("a", encoding="utf-8") as log:
                log.write(json.dumps(line) + "\n")
        return cached.value


def open_run_cache(model: nn.Module, settings: Settings, run: str, workers_share: bool = True) -> RunCache:
    """The ``RunCache`` of session ``run`` for ``model`` under ``settings``; ``workers_share``: other
    processes of the session (xdist workers) may need its device results."""
    session = ResultCache(session_dir(run), run)
    session.root.mkdir(parents=True, exist_ok=True)
    recompute = settings.reference_cache == RECOMPUTE_REFERENCE
    reference = ResultCache(reference_dir(), run, accept_only_run=run if recompute else None)
    return RunCache(reference, session, common_key(model, settings), settings.reference.id,
                    reference_kept=settings.reference.device == "cpu", workers_share=workers_share)


def reference_cache_use(run: str, settings: Settings) -> dict[str, Any]:
    """For the report: where the reference's results are kept, the mode, and which entries this
    session loaded and which it computed (``what target: entry`` from the session's log)."""
    loaded: set[str] = set()
    computed: set[str] = set()
    log = session_dir(run) / USAGE_LOG
    lines = log.read_text(encoding="utf-8").splitlines() if log.is_file() else []
    for line in map(json.loads, lines):
        (loaded if line["loaded"] else computed).add(f"{line['what']}: {line['entry'][:16]}")
    return {"dir": str(reference_dir()), "mode": settings.reference_cache,
            "loaded": sorted(loaded - computed), "computed": sorted(computed)}
