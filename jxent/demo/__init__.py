"""A Flax NNX classifier trained with Optax on a jxent loss.

Run it with ``python -m jxent.demo`` (or ``jxent-demo``); ``--help`` lists
the flags. From Python, :func:`train_and_evaluate` takes a :class:`Config`
and returns the metrics. It needs the ``demo`` extra (from the repository
root, ``python -m pip install -e ".[demo]"``), which is imported only when it
is used.
"""

from jxent.demo.config import Config as Config
from jxent.demo.config import ConfigError as ConfigError
from jxent.demo.data import DataError as DataError

__all__ = ["Config", "ConfigError", "DataError", "train_and_evaluate"]


def __getattr__(name: str):
  # Flax and Optax load on first use, so that the command line can say
  # which package is missing instead of tracing back.
  if name == "train_and_evaluate":
    from jxent.demo.train import train_and_evaluate  # pylint: disable=g-import-not-at-top

    return train_and_evaluate
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
