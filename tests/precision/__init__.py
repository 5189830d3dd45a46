"""Precision family of the acceptance suite (``pytest_blendmask.suite.precision`` when installed)."""
