"""Performance measurement: synchronised timing, the benchmark grid, the optimisation ladder, profiles.

``timing`` times callables with device synchronisation (on pytest-benchmark or its own loop),
``grid`` says which points the ``quick`` and ``full`` grids measure, ``ladder`` rebuilds seed
000's optimisation ladder and serial-vs-streams table from measured points, and ``profile``
turns a profiler run into a top-operators table and a list of host/AI CPU fallbacks.
Nothing here imports pytest: the test modules and fixtures drive these functions.
"""
