"""The acceptance suite, shipped in the wheel as ``pytest_blendmask.suite``: ``pytest --pyargs pytest_blendmask.suite``.

In this repository the suite lives in ``tests/precision``, ``tests/perf`` and ``tests/atc``;
``pyproject.toml`` maps ``tests`` to ``pytest_blendmask.suite`` and ships those three
folders (not ``tests/unit``, the project's own tests), so an installed wheel runs the same
files from any folder. Every fixture they use comes from the plugin.
"""
