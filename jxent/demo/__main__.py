"""Command line: ``python -m jxent.demo`` or ``jxent-demo``.

The flags are built from the fields of :class:`jxent.demo.config.Config`.
Every refusal is one line on stderr and exit status 2, given before
anything is trained or written; a run whose training diverges ends with
one line and exit status 1.
"""

import argparse
import dataclasses
import importlib.util
import sys
from collections.abc import Sequence

from jxent.demo import config as config_lib
from jxent.demo import data as data_lib

PROG = "jxent-demo"
# The import names of the `demo` extra's packages (pyproject.toml).
DEMO_MODULES = ("flax", "optax", "sklearn", "matplotlib", "tqdm")
# jxent is installed from a clone, not from a package index.
INSTALL_DEMO = 'from the repository root, python -m pip install -e ".[demo]"'


class _Parser(argparse.ArgumentParser):
  """An argument parser whose errors are one line (no usage block)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
  """One flag per field of the config marked as a flag."""
  p = _Parser(
      prog=PROG,
      description=(
          "Train a Flax NNX classifier with Optax on a jxent loss, then report"
          " accuracy, cross-entropy in nats and bits, H(P,Q) = H(P) +"
          " KL(P||Q) and calibration. Defaults: scikit-learn's digits."
      ),
  )
  for field in dataclasses.fields(config_lib.Config):
    meta = field.metadata
    if not meta["flag"]:
      continue
    flag = "--" + field.name.replace("_", "-")
    if field.type is bool:  # Only a default of True is worth a flag.
      p.add_argument(f"--no-{flag[2:]}", dest=field.name,
                     action="store_false", help=f"do not {meta['help']}")
      continue
    default = "" if field.default is None else " (default: %(default)s)"
    p.add_argument(
        flag, default=field.default, help=meta["help"] + default,
        type=field.type if field.type in (int, float) else str,
        **meta["argparse"],
    )
  return p


def _missing_module() -> str | None:
  """The first module of the `demo` extra that cannot be imported, if any."""
  for name in DEMO_MODULES:
    try:
      if importlib.util.find_spec(name) is None:
        return name
    except (ImportError, ValueError):
      return name
  return None


def main(argv: Sequence[str] | None = None) -> int:
  """Parses the flags and runs :func:`jxent.demo.train.train_and_evaluate`.

  Args:
    argv: The arguments after the program name; None reads `sys.argv`.

  Returns:
    The exit status: 0 on success; 2 when a flag, the data or a dependency
    is bad, and 1 when training diverges, each after one line on stderr.
  """
  config = config_lib.Config(**vars(_parser().parse_args(argv)))
  try:  # Settings first: that needs neither the data nor the demo extra.
    config_lib.check(config)
  except config_lib.ConfigError as e:
    return _refuse(e)
  missing = _missing_module()
  if missing:
    return _refuse(f"the demo needs {missing}, which is not installed;"
                   f" install the demo extra: {INSTALL_DEMO}")
  from jxent.demo import train  # pylint: disable=g-import-not-at-top

  try:
    train.train_and_evaluate(config)
  except (config_lib.ConfigError, data_lib.DataError,
          train.DivergenceError) as e:
    return _refuse(e, status=1 if isinstance(e, train.DivergenceError) else 2)
  return 0


def _refuse(problem: object, status: int = 2) -> int:
  print(f"{PROG}: error: {problem}", file=sys.stderr)
  return status


if __name__ == "__main__":
  sys.exit(main())
