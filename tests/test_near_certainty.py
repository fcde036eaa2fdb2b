"""Accuracy near certainty: losses down to 1e-10 keep their digits.

When the model is nearly sure of the right class, the cross-entropy is
log(1 + sum_{v != y} exp(z_v - z_y)), far below float32's epsilon. A
log-sum-exp that forms 1 + tiny rounds it to 1 and returns 0 (or a value
with a 100% error). jxent counts the terms at the max apart and takes log1p
of the rest (`jxent._numerics.logsumexp.log_sum`): the Triton kernel and
every vocabulary walk do. (The dense XLA path still sums whole; see
docs/numerics.md, "Near certainty".) Each value here is compared with
float64 arithmetic on the same float32 inputs; the target is a relative
error of at most 1e-3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jxent
from jxent import sharded
from jxent._cross_entropy import api

RTOL = 1e-3
CLASSES = 24
# The gaps below the top logit: losses from about 3e-4 down to 1e-11.
GAPS = np.array([10.0, 14.0, 18.0, 22.0, 27.0])


def _confident_logits(rng):
  """[rows, CLASSES] float32 logits, row i sure of class i with tail ~e^-gap.

  The rows' top logits sit at different places (so a blocked walk meets
  the max in a later block), and each row is offset by a different
  constant, which changes no probability.
  """
  rows = len(GAPS)
  z = -GAPS[:, None] - rng.uniform(0, 3, size=(rows, CLASSES))
  top = np.arange(rows) * 5 % CLASSES
  z[np.arange(rows), top] = 0.0
  z = z + rng.uniform(-50, 50, size=(rows, 1))
  return jnp.asarray(z, jnp.float32), jnp.asarray(top)


def _log_softmax64(z):
  z = np.asarray(z, np.float64)
  m = z.max(axis=-1, keepdims=True)
  shifted = z - m
  # float64 is enough: its epsilon is 1e-16, far below the losses here.
  return shifted - np.log1p(np.sum(np.where(shifted == 0, 0,
                                            np.exp(shifted)), -1,
                                   keepdims=True))


def _ce64(z, labels):
  log_q = _log_softmax64(z)
  return -log_q[np.arange(len(labels)), np.asarray(labels)]


def _assert_relative(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert (want > 0).all() and (want < 1e-2).all(), want  # the regime tested
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=0)


@pytest.mark.parametrize("implementation", sorted(api.KERNELS))
def test_the_kernels_keep_tiny_losses(rng, implementation):
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  assert want.min() < 1e-10
  with api.kernels_anywhere(interpret=True, block=8):
    integer = jxent.softmax_cross_entropy_with_integer_labels(
        z, labels, implementation=implementation)
    soft = jxent.softmax_cross_entropy(
        z, jax.nn.one_hot(labels, CLASSES), implementation=implementation)
  _assert_relative(integer, want)
  _assert_relative(soft, want)


@pytest.mark.parametrize("block_size", [5, 8, None])
def test_the_linear_heads_keep_tiny_losses(rng, block_size):
  z, labels = _confident_logits(rng)
  # x = I, w = z: the head's logits are z exactly.
  x = jnp.eye(len(GAPS), dtype=jnp.float32)
  w = z
  want = _ce64(z, labels)
  ce = jxent.linear_softmax_cross_entropy(x, w, labels, reduction="none",
                                          block_size=block_size)
  _assert_relative(ce, want)
  log_probs = jxent.linear_log_probs(x, w, labels, block_size=block_size)
  _assert_relative(-log_probs, want)


def test_the_sharded_linear_loss_keeps_tiny_losses(rng):
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))
  x = jnp.eye(len(GAPS), dtype=jnp.float32)
  linear = jax.shard_map(
      lambda w: sharded.linear_softmax_cross_entropy(
          x, w, labels, "vocab", reduction="none", block_size=4),
      mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())(z)
  _assert_relative(linear, want)


def test_the_gradient_near_certainty_is_the_softmax_minus_the_label(rng):
  z, labels = _confident_logits(rng)
  grad = jax.grad(lambda z: jnp.sum(
      jxent.softmax_cross_entropy_with_integer_labels(z, labels)))(z)
  q = np.exp(_log_softmax64(z))
  want = q - np.eye(CLASSES)[np.asarray(labels)]
  # The other classes' gradients are the tiny probabilities themselves.
  off = np.asarray(jax.nn.one_hot(labels, CLASSES)) == 0
  np.testing.assert_allclose(np.asarray(grad)[off], want[off], rtol=1e-4)


def test_the_divergence_heads_keep_tiny_values(rng):
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  x = jnp.eye(len(GAPS), dtype=jnp.float32)
  # A one-hot teacher: its top logit equal to the student's (so E_p[z_p -
  # z_q] is exact), every other class 200 below it.
  top = jnp.max(z, axis=1, keepdims=True)
  p_w = jnp.where(jax.nn.one_hot(labels, CLASSES) > 0, top, top - 200)
  _assert_relative(jxent.linear_kl_divergence(x, p_w, x, z, block_size=5),
                   want)
  # The same teacher as its top 1: log p = 0 on the label.
  top_1 = jxent.linear_kl_divergence_from_top_k(
      labels[:, None], jnp.zeros((len(GAPS), 1)), x, z, block_size=5)
  _assert_relative(top_1, want)
