"""Benchmarks: jxent against its peers and against the device's bandwidth.

Run ``python -m bench --help`` from the repository root. The modules are:

* ``bench.cases``: the suites, their inputs, the implementations compared,
  the byte model and the default shape grids.
* ``bench.timing``: timing, measured read bandwidth, spec-sheet peaks and
  memory figures.
* ``bench.report``: results.json, the markdown table and the plot.
* ``bench.__main__``: the command line, which runs the grid.
"""
