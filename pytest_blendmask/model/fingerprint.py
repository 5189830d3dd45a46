"""What identifies a model's results: its weights, its config and its code, each as a digest.

The ONNX export cache (``atc/export.py``) and the reference's result cache (``run_cache.py``)
key on these, so that new weights, another config or an edited model source file never
reuse what an older model produced.

The code is the model's classes (every class in the MRO of every module of ``model.modules()``,
with the functions each defines, by qualified name) and their source closure: the file of each
class and of each of those functions, then every module those files import (function-local
and relative imports included, read with ``ast``) within the same top-level package,
transitively. A helper function in another file of the package (a deformable convolution in
``ops/``) thus counts as much as the ``nn.Module`` that calls it. The standard library, torch
and torchvision are left out: their versions are part of each key instead.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from torch import nn

# Libraries keyed by their version, not their sources.
VERSIONED_LIBRARIES = ("torch", "torchvision")


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over every state_dict tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def model_description(model: nn.Module) -> str:
    """A BlendMask's config (it fixes the layout), else the model's class, as text."""
    return repr(getattr(model, "cfg", f"{type(model).__module__}.{type(model).__qualname__}"))


def _skipped(module_name: str) -> bool:
    top = module_name.partition(".")[0]
    return top in VERSIONED_LIBRARIES or top in sys.stdlib_module_names or module_name == "builtins"


def _module_file(name: str) -> Path | None:
    """The ``.py`` file of module ``name``; None for a name that is no module (an imported
    function's) or a module without Python source (a C extension, a namespace package)."""
    module = sys.modules.get(name)
    origin = getattr(module, "__file__", None)
    if origin is None:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError, AttributeError):  # a function's name, a parent that is no package
            return None
        origin = spec.origin if spec is not None else None
    return Path(origin) if origin and origin.endswith(".py") else None


def _imported(path: Path, name: str) -> set[str]:
    """The module names ``path`` (module ``name``) imports anywhere in it; ``from m import x`` gives
    ``m`` and ``m.x`` (x may be a submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _model_classes(model: nn.Module) -> list[type]:
    """Every class in the MRO of every module of ``model``, outside the skipped libraries."""
    classes = {cls for m in model.modules() for cls in type(m).__mro__}
    return sorted((c for c in classes if not _skipped(c.__module__)), key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _methods(cls: type) -> dict[str, object]:
    """The functions a class defines, static and class methods unwrapped: a method patched in from
    elsewhere is a function of another module or name."""
    found = {}
    for name, value in vars(cls).items():
        function = getattr(value, "__func__", value)
        if inspect.isfunction(function):
            found[name] = function
    return found


def model_source_files(model: nn.Module) -> dict[str, Path]:
    """Module name -> source file of the model's code (module docstring), in name order."""
    classes = _model_classes(model)
    pending = {c.__module__ for c in classes} | {f.__module__ for c in classes for f in _methods(c).values()}
    files: dict[str, Path] = {}
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or _skipped(name):
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:
            continue
        files[name] = path
        top = name.partition(".")[0]
        pending |= {m for m in _imported(path, name) if m.partition(".")[0] == top}
    return dict(sorted(files.items()))


def code_digest(model: nn.Module) -> str:
    """SHA-256 over the model's classes and the functions each defines (by qualified name: another
    class or a method patched in from the same file count too) and its source closure
    (``model_source_files``: each module's name and bytes)."""
    digest = hashlib.sha256()
    for cls in _model_classes(model):
        methods = {name: f"{f.__module__}.{f.__qualname__}" for name, f in _methods(cls).items()}
        digest.update(f"{cls.__module__}.{cls.__qualname__}|{sorted(methods.items())}|".encode())
    for name, path in model_source_files(model).items():
        digest.update(f"{name}|".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
