"""The wheel's package list: every package of the source tree ships, and the suite ships without the unit tests."""
from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the project runs 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
SUITE = "pytest_blendmask.suite"
SUITE_FAMILIES = ("atc", "perf", "precision")


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]


def test_every_package_of_the_source_tree_is_listed() -> None:
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "pytest_blendmask").rglob("__init__.py")
    }
    listed = {name for name in _setuptools()["packages"] if not name.startswith(SUITE)}
    assert listed == on_disk


def test_the_suite_is_the_three_families_of_tests_and_not_the_unit_tests() -> None:
    config = _setuptools()
    assert config["package-dir"] == {SUITE: "tests"}
    assert sorted(name for name in config["packages"] if name.startswith(SUITE)) == [
        SUITE, *(f"{SUITE}.{family}" for family in SUITE_FAMILIES)
    ]
    for family in SUITE_FAMILIES:
        assert (ROOT / "tests" / family / "__init__.py").is_file(), f"tests/{family} must be a package to ship"
