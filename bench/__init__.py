"""Benchmarks: jxent against its peers and against the device's bandwidth.

Run ``python -m bench --help`` from the repository root. The modules are:

* ``bench.registry``: what a suite and an implementation are, the registry
  and jxent's own implementations (`registry.JXENT`).
* ``bench.logits``, ``bench.linear``, ``bench.sharded``: the suites, one
  registry entry each: their inputs, byte model, implementations and shapes.
* ``bench.runner``: the runner, written once for every suite; ``bench.case``
  compiles, runs and checks one case.
* ``bench.timing``: timing, measured read bandwidth, spec-sheet peaks and
  memory figures.
* ``bench.report``: results.json and the markdown table; ``bench.plot``:
  bench.png.
* ``bench.__main__``: the command line; ``python -m bench.linear`` and
  ``python -m bench.sharded`` are the same with their suite chosen.
"""
