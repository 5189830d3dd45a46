"""The dependency rule: no module imports a layer above its own (ARCHITECTURE.md), and the report reads only results.

Every import of the package is checked, read with ``ast`` rather than by importing: the
function-local ones (torch-free plugin loading puts many there), the relative ones and the
``TYPE_CHECKING`` ones, which pass at run time but still tie the modules together.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "pytest_blendmask"
REPO = Path(__file__).resolve().parents[2]
ARCHITECTURE = REPO / "ARCHITECTURE.md"
# What the report may import besides itself: it reads results and writes the perf ladder.
REPORT_MAY_IMPORT = ("results", "perf.ladder")
_ROW_RE = re.compile(r"^\|\s*(\d+)\s[^|]*\|(.*)\|\s*$")
_NAME_RE = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Module:
    """A module of the package: its name relative to the package ("" for the package's own __init__)."""

    name: str
    path: str  # as shown in a failure
    source: str
    is_package: bool  # an __init__.py: its relative imports start from itself


@dataclass(frozen=True)
class Import:
    importer: Module
    line: int
    imported: str  # a module name relative to the package

    def where(self) -> str:
        return f"{self.importer.path}:{self.line}: {self.importer.name or PACKAGE} imports {self.imported or PACKAGE}"


def parse_layers(markdown: str) -> dict[str, int]:
    """Module name -> layer number, from the table under ``## Layers``."""
    section = markdown.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers = {}
    for line in section.splitlines():
        if row := _ROW_RE.match(line):
            for name in _NAME_RE.findall(row[2]):
                layers["" if name == PACKAGE else name] = int(row[1])
    return layers


def layer_of(name: str, layers: dict[str, int]) -> int | None:
    """The layer of the longest listed name that is ``name`` or one of its packages; the root only matches itself."""
    matches = [listed for listed in layers if listed and (name == listed or name.startswith(f"{listed}."))]
    if name in layers:
        matches.append(name)
    return layers[max(matches, key=len)] if matches else None


def package_modules(package_dir: Path) -> list[Module]:
    modules = []
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules.append(Module(name, str(path.relative_to(REPO)), path.read_text(encoding="utf-8"), is_package))
    return modules


def _from_base(module: Module, node: ast.ImportFrom) -> str | None:
    """The package-relative module a ``from ... import`` reads from; None when it is outside the package."""
    if node.level == 0:
        name = node.module or ""
        if name != PACKAGE and not name.startswith(f"{PACKAGE}."):
            return None
        return name[len(PACKAGE) + 1:]
    parts = module.name.split(".") if module.name else []
    if not module.is_package:
        parts = parts[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + (node.module.split(".") if node.module else []))


def imports_of(module: Module, known: set[str]) -> list[Import]:
    """Every import of a package module in ``module``, wherever it stands; ``known`` tells a submodule from a name."""
    found = []
    for node in ast.walk(ast.parse(module.source, module.path)):
        if isinstance(node, ast.Import):
            found += [
                Import(module, node.lineno, alias.name[len(PACKAGE) + 1:])
                for alias in node.names
                if alias.name == PACKAGE or alias.name.startswith(f"{PACKAGE}.")
            ]
        elif isinstance(node, ast.ImportFrom) and (base := _from_base(module, node)) is not None:
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                found.append(Import(module, node.lineno, submodule if submodule in known else base))
    # ast.walk goes breadth first; `from x import a, b` is one import of x.
    return sorted(dict.fromkeys(found), key=lambda i: i.line)


def report_violations(imports: list[Import]) -> list[str]:
    """Imports by the report of anything but itself, results and the perf ladder."""
    def in_report(name: str) -> bool:
        return name == "report" or name.startswith("report.")

    return [
        f"{i.where()} (the report may import only {', '.join(REPORT_MAY_IMPORT)} and itself)"
        for i in imports
        if in_report(i.importer.name) and not in_report(i.imported) and i.imported not in REPORT_MAY_IMPORT
    ]


def upward_violations(imports: list[Import], layers: dict[str, int]) -> list[str]:
    """Imports of a module in a higher layer (modules missing from the table are ``unlisted``'s)."""
    found = []
    for i in imports:
        own, other = layer_of(i.importer.name, layers), layer_of(i.imported, layers)
        if own is not None and other is not None and other > own:
            found.append(f"{i.where()} (layer {own} imports layer {other})")
    return found


def unlisted(modules: list[Module], layers: dict[str, int]) -> list[str]:
    return [f"{m.path}: {m.name or PACKAGE} is in no layer of ARCHITECTURE.md" for m in modules
            if layer_of(m.name, layers) is None]


@pytest.fixture(scope="module")
def layers() -> dict[str, int]:
    return parse_layers(ARCHITECTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def modules() -> list[Module]:
    return package_modules(REPO / PACKAGE)


@pytest.fixture(scope="module")
def imports(modules: list[Module]) -> list[Import]:
    known = {m.name for m in modules}
    return [i for m in modules for i in imports_of(m, known)]


def test_the_layer_table_puts_results_at_the_bottom(layers: dict[str, int]) -> None:
    assert layers["results"] == 0 and layers["report"] == 1
    assert sorted(set(layers.values())) == [0, 1, 2, 3, 4]


def test_every_module_is_in_a_layer(modules: list[Module], layers: dict[str, int]) -> None:
    assert not (found := unlisted(modules, layers)), "\n" + "\n".join(found)


def test_the_report_imports_only_results_itself_and_the_ladder(imports: list[Import]) -> None:
    assert not (found := report_violations(imports)), "\n" + "\n".join(found)


def test_no_module_imports_a_higher_layer(imports: list[Import], layers: dict[str, int]) -> None:
    assert not (found := upward_violations(imports, layers)), "\n" + "\n".join(found)


# The checker itself, on made-up modules: each kind of import it must see.
SYNTHETIC_LAYERS = {"": 0, "results": 0, "perf": 1, "perf.ladder": 1, "report": 1, "settings": 3, "fixtures": 4}
SYNTHETIC = {
    ("results", False): "import json\n",
    ("perf.ladder", False): "def later():\n    from pytest_blendmask import fixtures\n",
    ("report", True): "from .collect import TestOutcome\nfrom ..results import Record\n",
    ("report.collect", False): (
        "from typing import TYPE_CHECKING\n"
        "from pytest_blendmask.perf.ladder import PerfPoint\n"
        "if TYPE_CHECKING:\n    from .. import settings\n"
    ),
    ("report.final", False): "import pytest_blendmask.results, pytest_blendmask.report.collect\n",
}


def _synthetic() -> list[Import]:
    modules = [Module(name, f"{name.replace('.', '/')}{'/__init__' if pkg else ''}.py", source, pkg)
               for (name, pkg), source in SYNTHETIC.items()]
    known = {m.name for m in modules} | set(SYNTHETIC_LAYERS)
    return [i for m in modules for i in imports_of(m, known)]


def test_the_checker_resolves_relative_local_and_type_checking_imports() -> None:
    assert [(i.importer.name, i.line, i.imported) for i in _synthetic()] == [
        ("perf.ladder", 2, "fixtures"),
        ("report", 1, "report.collect"), ("report", 2, "results"),
        ("report.collect", 2, "perf.ladder"), ("report.collect", 4, "settings"),
        ("report.final", 1, "results"), ("report.final", 1, "report.collect"),
    ]


def test_the_checker_fails_an_upward_import_naming_file_line_and_module() -> None:
    assert upward_violations(_synthetic(), SYNTHETIC_LAYERS) == [
        "perf/ladder.py:2: perf.ladder imports fixtures (layer 1 imports layer 4)",
        "report/collect.py:4: report.collect imports settings (layer 1 imports layer 3)",
    ]
    assert report_violations(_synthetic()) == [
        "report/collect.py:4: report.collect imports settings (the report may import only results, perf.ladder and itself)",
    ]


def test_layers_go_to_the_longest_listed_prefix_and_unlisted_modules_fail() -> None:
    assert [layer_of(name, SYNTHETIC_LAYERS) for name in ("perf.ladder", "perf.grid", "report.html", "")] == [1, 1, 1, 0]
    assert layer_of("targets", SYNTHETIC_LAYERS) is None  # the root package is no prefix
    assert unlisted([Module("targets", "targets.py", "", False)], SYNTHETIC_LAYERS) == [
        "targets.py: targets is in no layer of ARCHITECTURE.md",
    ]
