"""ATC family of the acceptance suite (``pytest_blendmask.suite.atc`` when installed)."""
