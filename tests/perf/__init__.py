"""Perf family of the acceptance suite (``pytest_blendmask.suite.perf`` when installed)."""
