"""A Flax NNX classifier trained with Optax on a jxent loss.

Run it with ``python -m jxent.demo`` (or ``jxent-demo``); ``--help`` lists
the flags. From Python, :func:`train_and_evaluate` takes a :class:`Config`
and returns the metrics.
"""

from jxent.demo.data import DataError as DataError
from jxent.demo.train import Config as Config
from jxent.demo.train import train_and_evaluate as train_and_evaluate

__all__ = ["Config", "DataError", "train_and_evaluate"]
