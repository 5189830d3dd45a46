"""Compute once, load after: results stored on disk under a key, shared by processes.

``ResultCache(root).get_or_compute(key, compute)`` returns what ``compute()`` returned for an
equal ``key``, from disk when an earlier call (this process, an xdist worker beside it, an
earlier session) stored it, else it computes and stores it. The key is a dict of JSON values;
its SHA-256 names the entry's folder, and the whole key is kept in the entry's manifest and
compared on load, so a hash collision or a hand-edited entry is never taken for another key.

An entry is a folder ``<root>/<sha256 of the key>/`` holding

- ``payload.pt``: the value, written by ``torch.save`` (a tensor two objects share stays one
  tensor) to a temporary sibling and renamed into place;
- ``manifest.json``: the key, the payload's SHA-256 and size, the package version and the
  run that wrote it; written last, atomically, so an entry without one was never finished.

Nothing on disk is trusted: a missing or unreadable manifest, another key, a payload whose
size or checksum differs (truncated, corrupt) or that does not unpickle makes the entry stale:
one warning names the folder, the entry is deleted, and the value is computed again.

One process computes a key while the others wait on an ``fcntl.flock`` lock file beside the
entry (``<root>/<hash>.lock``), then load what it wrote. Where ``fcntl`` is missing (Windows)
each process computes for itself and the last rename wins: slower, never wrong.

Payloads are pickles (``torch.load(weights_only=False)``): the store loads only what this
package wrote, after the checksum in the manifest written with it.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

PAYLOAD = "payload.pt"
MANIFEST = "manifest.json"
DISTRIBUTION = "pytest-blendmask"
_CHUNK = 1 << 20

T = TypeVar("T")


class StaleCacheWarning(UserWarning):
    """A cache entry that could not be trusted and was computed again."""


@dataclass(frozen=True)
class Cached(Generic[T]):
    """A value and where it is stored; ``loaded`` is True when an earlier computation was read back."""

    value: T
    entry: Path
    loaded: bool


def package_version() -> str:
    """The installed pytest-blendmask's version; a checkout that is not installed says so."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def canonical_key(key: Mapping[str, Any]) -> str:
    """The key as JSON with sorted keys: what is hashed and what the manifest holds.

    Raises:
        TypeError: a part of the key is not JSON (a tensor, a path object): give its digest or text.
    """
    return json.dumps(key, sort_keys=True, separators=(",", ":"), allow_nan=False)


def file_digest(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (R_101 weights are ~200 MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; every process computes for itself
        yield
        return
    with path.open("a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Stale(Exception):
    """Why an entry on disk cannot be used."""


class _Superseded(Exception):
    """An entry written by an earlier run while this one recomputes (``accept_only_run``)."""


class ResultCache:
    """Entries under ``root`` (module docstring).

    Args:
        root: the folder holding the entries; created on first store.
        run: the id of the session using it, written into each manifest.
        accept_only_run: when given, entries written by another run are ignored and overwritten
            (``--bm-reference-cache recompute``: a session recomputes once, and its xdist workers
            still share that one computation).
    """

    def __init__(self, root: Path, run: str, accept_only_run: str | None = None) -> None:
        self.root = root
        self.run = run
        self.accept_only_run = accept_only_run

    def get_or_compute(self, key: Mapping[str, Any], compute: Callable[[], T]) -> Cached[T]:
        """The value stored under ``key``, else ``compute()``'s, stored first (module docstring)."""
        text = canonical_key(key)
        name = hashlib.sha256(text.encode()).hexdigest()  # the entry's folder name
        entry = self.root / name
        self.root.mkdir(parents=True, exist_ok=True)
        with _locked(self.root / f"{name}.lock"):
            if entry.exists():
                try:
                    return Cached(self._load(entry, text), entry, loaded=True)
                except _Stale as why:
                    warnings.warn(StaleCacheWarning(f"cache entry {entry}: {why}; deleted, computing it again"), stacklevel=2)
                    shutil.rmtree(entry, ignore_errors=True)
                except _Superseded:
                    shutil.rmtree(entry, ignore_errors=True)
            value = compute()
            self._store(entry, text, value)
            return Cached(value, entry, loaded=False)

    def _load(self, entry: Path, text: str) -> Any:
        try:
            manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
            stored_key, checksum, size = manifest["key"], manifest["sha256"], manifest["bytes"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise _Stale(f"no readable {MANIFEST} ({type(exc).__name__}: {exc}): an interrupted or damaged write") from None
        if canonical_key(stored_key) != text:
            raise _Stale(f"its {MANIFEST} holds another key (a hash collision or an edited entry)")
        if self.accept_only_run is not None and manifest.get("run") != self.accept_only_run:
            raise _Superseded
        payload = entry / PAYLOAD
        actual_size = payload.stat().st_size if payload.is_file() else None
        if actual_size != size or file_digest(payload) != checksum:
            raise _Stale(f"{PAYLOAD} is not what was written ({actual_size} bytes, {size} expected, or another "
                         "checksum): truncated or corrupt")
        import torch  # here, not at module level: environment.py (loaded for `pytest --help`) uses file_digest

        try:
            return torch.load(payload, weights_only=False)  # our own pickle, checksum verified
        except Exception as exc:  # unpickling raises anything its classes raise (a class renamed since)
            raise _Stale(f"{PAYLOAD} does not load ({type(exc).__name__}: {exc})") from None

    def _store(self, entry: Path, text: str, value: Any) -> None:
        import torch

        entry.mkdir(parents=True, exist_ok=True)
        (entry / MANIFEST).unlink(missing_ok=True)  # the entry is unfinished until the new manifest lands
        payload = entry / PAYLOAD
        tmp = entry / f"{PAYLOAD}.{os.getpid()}.tmp"
        try:
            torch.save(value, tmp)
            manifest = {"key": json.loads(text), "sha256": file_digest(tmp), "bytes": tmp.stat().st_size,
                        "version": package_version(), "run": self.run}
            os.replace(tmp, payload)
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, entry / MANIFEST)
        finally:
            tmp.unlink(missing_ok=True)
