"""Shared test configuration: strict promotion, so hidden casts fail loudly."""

import os

import jax
import numpy as np
import pytest
from hypothesis import settings

jax.config.update("jax_num_cpu_devices", 8)  # for tests/test_sharded.py
jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")

# Each example may compile; deadlines would only measure XLA's compiler.
settings.register_profile("jxent", deadline=None, max_examples=40)
# CI (`.ci/run` sets CI=true) replays the same examples on every run, so a
# green main stays green, and fewer of them, to fit its time; development
# keeps finding new ones.
settings.register_profile("ci", parent=settings.get_profile("jxent"),
                          derandomize=True, max_examples=25)
settings.load_profile("ci" if os.environ.get("CI") else "jxent")


@pytest.fixture
def rng():
  return np.random.default_rng(0)
