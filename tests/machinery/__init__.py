"""Benchmarks of the gate's own machinery (capture, compare, noise floor) on BlendMask: the
project's own tests, run with tests/unit. They are not part of the shipped acceptance suite:
they time this plugin, not the model under test, and have no say in a port's verdict."""
