"""The C loops of the precision machinery, built at first use with the system C compiler.

Two hot loops have no single torch or numpy operator: a stats dump's four reductions of
each output (``stats_kernel.py``, ``tensor_stats.c``) and the comparison's pass over each
pair of tensors (``compare_kernel.py``, ``tensor_compare.c``). Each is a short C file in
this folder, compiled with ``$CC`` (else ``cc``, ``gcc`` or ``clang``) and called through
ctypes, so nothing needs torch's headers or a build step at install time.

A library is kept in the cache root's ``kernels`` folder (``cache_dir.py``), named by the
digest of its source, the compiler, its flags and the machine, so a change to any of them
builds again. The build writes a private file that is then renamed into place: xdist
workers that build at once never load a half-written library. Where no compiler is found,
the build fails (or hangs past ``BUILD_TIMEOUT_S``) or the library will not load,
``load`` returns no library and says why; each caller then takes its torch or numpy path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from ..cache_dir import cache_root

KERNEL_DIR = "kernels"
_SOURCES = Path(__file__).parent
BUILD_TIMEOUT_S = 120  # a compiler that hangs must not hang the run: each file builds in under a second


class Kernel(NamedTuple):
    """A C function ready to call, or None and why not (``reason``); ``path``: its library's file."""

    function: Callable[..., None] | None
    path: Path | None
    reason: str

    def status(self, fallback: str) -> str:
        """What its caller uses: this library, or ``fallback`` (the caller's own path) and why."""
        return f"one pass in C ({self.path})" if self.function else f"{fallback}: {self.reason}"


def compiler() -> list[str] | None:
    """The C compiler's command: ``$CC`` split as a shell would, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)
    return [found] if found else None


def library_path(source_name: str, command: list[str], flags: tuple[str, ...]) -> Path:
    """Where ``source_name`` built by ``command`` with ``flags`` is kept: named by all three and the machine."""
    source = _SOURCES / source_name
    parts = [source.read_bytes(), " ".join([*command, *flags]).encode(), platform.machine().encode()]
    return cache_root() / KERNEL_DIR / f"{source.stem}-{hashlib.sha256(b'|'.join(parts)).hexdigest()[:16]}.so"


@functools.cache
def load(source_name: str, symbol: str, argtypes: tuple[type, ...], flags: tuple[str, ...],
         libraries: tuple[str, ...] = ()) -> Kernel:
    """The void function ``symbol`` of ``source_name`` (a file beside this module), built if needed.

    ``libraries`` (``-l`` options) follow the source on the command line, where the linker
    looks for what the source needs.
    """
    source = _SOURCES / source_name
    command = compiler()
    if command is None:
        return Kernel(None, None, "no C compiler (set $CC, or install cc/gcc/clang)")
    library = library_path(source_name, command, flags + libraries)
    if not library.exists():
        try:
            _build(command, [*flags, str(source)], libraries, library)
        except (OSError, subprocess.SubprocessError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            return Kernel(None, library, f"building {source.name} with {command[0]} failed: {detail.strip()[:300]}")
    try:
        function = getattr(ctypes.CDLL(str(library)), symbol)
    except (OSError, AttributeError) as error:  # a damaged file: delete it and the next process builds again
        return Kernel(None, library, f"loading {library} failed ({error}); delete it to rebuild")
    function.argtypes = list(argtypes)
    function.restype = None
    return Kernel(function, library, "")


def _build(command: list[str], arguments: list[str], libraries: tuple[str, ...], library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(suffix=".so", dir=library.parent)
    os.close(descriptor)
    try:
        subprocess.run([*command, *arguments, "-o", partial, *libraries], check=True, capture_output=True, text=True,
                       timeout=BUILD_TIMEOUT_S)
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
