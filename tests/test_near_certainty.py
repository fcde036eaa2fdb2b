"""Accuracy near certainty: losses down to 1e-10 keep their digits.

When the model is nearly sure of the right class, the cross-entropy is
log(1 + sum_{v != y} exp(z_v - z_y)), far below float32's epsilon. A
log-sum-exp that forms 1 + tiny rounds it to 1 and returns 0 (or a value
with a 100% error). jxent counts the terms at the max apart and takes log1p
of the rest (`jxent._numerics.logsumexp.log_sum`): the Triton kernel and
every vocabulary walk do, and so does the dense XLA path on accelerators
(on a CPU it sums whole; see docs/numerics.md, "Near certainty"). Each
value here is compared with float64 arithmetic on the same float32 inputs;
the target is a relative error of at most 1e-3.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jxent
from jxent import sharded
from jxent._cross_entropy import api
from jxent._numerics import softmax_rows

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


@pytest.mark.parametrize("splits", [1, 3])
@pytest.mark.parametrize("implementation", sorted(api.KERNELS))
def test_the_kernels_keep_tiny_losses(rng, implementation, splits):
  # With three splits per row, the top logit sits in one split, and the
  # others' sums join its rest without touching its ties.
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  assert want.min() < 1e-10
  with api.kernels_anywhere(interpret=True, block=8, splits=splits):
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


# --- the dense XLA path ---------------------------------------------------------

# The dense path keeps the digits on accelerators, whose sums split the
# terms at the max apart in the same pass: forced on the CPU here. A CPU
# takes the sum whole (see `logsumexp.sum_and_excess_of`).
_accelerator = softmax_rows.recompute_everywhere


def _entropy64(z):
  log_p = _log_softmax64(z)
  return -np.sum(np.exp(log_p) * log_p, axis=-1)


def _kl64(zp, zq):
  log_p, log_q = _log_softmax64(zp), _log_softmax64(zq)
  return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


@pytest.mark.parametrize("implementation", ["xla", None])
def test_the_dense_cross_entropies_keep_tiny_losses(rng, implementation):
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  assert want.min() < 1e-10
  one_hot = jax.nn.one_hot(labels, CLASSES)
  with _accelerator():
    integer = jax.jit(lambda z: jxent.softmax_cross_entropy_with_integer_labels(
        z, labels, implementation=implementation))(z)
    # The forward pass alone, and the value of a differentiated loss (the
    # JVP rule's), which soft labels compute in another way on a CPU.
    soft_loss = lambda z: jxent.softmax_cross_entropy(
        z, one_hot, implementation=implementation)
    soft = jax.jit(soft_loss)(z)
    soft_differentiated = jax.jit(lambda z: jax.jvp(
        soft_loss, (z,), (jnp.ones_like(z),))[0])(z)
  _assert_relative(integer, want)
  _assert_relative(soft, want)
  _assert_relative(soft_differentiated, want)


def test_the_dense_cross_entropies_keep_tiny_losses_under_vmap(rng):
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  with _accelerator():
    per_row = jax.jit(jax.vmap(
        lambda z, y: jxent.softmax_cross_entropy_with_integer_labels(z, y)))(
            z, labels)
  _assert_relative(per_row, want)


def test_one_confident_row_in_a_batch_gets_its_digits(rng):
  # Only the first row is near certainty (a loss of about 1e-9): it keeps
  # its digits, and every other row's loss is still right.
  z, labels = _confident_logits(rng)
  spread = jnp.asarray(rng.normal(size=(7, CLASSES)), jnp.float32)
  z = jnp.concatenate([z[3:4], spread])
  labels = jnp.concatenate([labels[3:4], jnp.arange(7)])
  want = _ce64(z, labels)
  with _accelerator():
    got = jax.jit(lambda z, y: jxent.softmax_cross_entropy_with_integer_labels(
        z, y))(z, labels)
  np.testing.assert_allclose(got, want, rtol=RTOL)
  assert want[0] < 1e-8 and (want[1:] > 1e-2).all()


def test_logsumexp_and_log_softmax_keep_tiny_values(rng):
  z, labels = _confident_logits(rng)
  z = z - jnp.max(z, axis=-1, keepdims=True)  # the top at 0: LSE is tiny
  want = _ce64(z, labels)
  with _accelerator():
    # Fresh functions: jit's cache does not see the forced path.
    lse = jax.jit(lambda z: jxent.logsumexp(z))(z)
    log_q = jax.jit(lambda z: jxent.log_softmax(z))(z)
    # Over two axes, with keepdims, the split keeps the reduced axes.
    lse_2d = jax.jit(lambda z: jxent.logsumexp(
        z.reshape(-1, 4, CLASSES // 4), axis=(1, 2), keepdims=True))(z)
  _assert_relative(lse, want)
  _assert_relative(-log_q[np.arange(len(GAPS)), labels], want)
  _assert_relative(lse_2d[:, 0, 0], want)


def test_the_information_of_logits_keeps_tiny_values(rng):
  z, _ = _confident_logits(rng)
  # A second confident model of the same top classes, 2 nats surer.
  top = jnp.argmax(z, axis=-1)
  zq = jnp.where(jax.nn.one_hot(top, CLASSES) > 0, z + 2.0, z)
  with _accelerator():
    entropy = jax.jit(lambda z: jxent.entropy_from_logits(z))(z)
    kl = jax.jit(lambda p, q: jxent.kl_divergence_from_logits(p, q))(z, zq)
    cross = jax.jit(lambda p, q: jxent.cross_entropy_from_logits(p, q))(
        z, zq)
  _assert_relative(entropy, _entropy64(z))
  _assert_relative(kl, _kl64(z, zq))
  _assert_relative(cross, _entropy64(z) + _kl64(z, zq))


def test_the_gradient_through_the_split_sum_is_the_softmax(rng):
  # d LSE / d z = softmax(z); the split sum must carry the
  # derivative of the terms at the max too.
  z, _ = _confident_logits(rng)
  with _accelerator():
    grad = jax.jit(jax.grad(lambda z: jnp.sum(jxent.logsumexp(z))))(z)
    hvp = jax.jit(lambda z, v: jax.jvp(jax.grad(
        lambda z: jnp.sum(jxent.logsumexp(z))), (z,), (v,))[1])(
            z, jnp.ones_like(z))
  q = np.exp(_log_softmax64(z))
  np.testing.assert_allclose(grad, q, rtol=1e-5, atol=1e-30)
  # The Hessian of the LSE times ones is diag(q) 1 - q q^T 1 = 0.
  np.testing.assert_allclose(hvp, 0, atol=1e-6)


def test_the_sharded_dense_loss_keeps_tiny_losses(rng):
  z, labels = _confident_logits(rng)
  want = _ce64(z, labels)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))
  with _accelerator():
    loss, entropy = _sharded_loss_and_entropy(mesh, z, labels)
  _assert_relative(loss, want)
  _assert_relative(entropy, _entropy64(z))


def _sharded_loss_and_entropy(mesh, z, labels):
  loss = jax.jit(jax.shard_map(
      lambda z: sharded.softmax_cross_entropy_with_integer_labels(
          z, labels, "vocab"),
      mesh=mesh, in_specs=P(None, "vocab"), out_specs=P()))(z)
  entropy = jax.jit(jax.shard_map(
      lambda z: sharded.entropy_from_logits(z, "vocab"),
      mesh=mesh, in_specs=P(None, "vocab"), out_specs=P()))(z)
  return loss, entropy



def test_the_accelerator_path_agrees_with_the_cpu_path_at_the_edges():
  # +inf, -inf, NaN, huge and tied logits: the split sums give what the
  # whole sum gives (a +inf logit's term is +inf, not inf - inf = NaN).
  z = jnp.array([[jnp.inf, 0.0, 1.0], [-jnp.inf, -jnp.inf, -jnp.inf],
                 [jnp.nan, 0.0, 1.0], [3e38, 3e38, -3e38], [0.0, 0.0, 0.0],
                 [jnp.inf, jnp.inf, 0.0]], jnp.float32)

  def outputs(z):
    return (jxent.logsumexp(z), jxent.log_softmax(z), jxent.softmax(z),
            jxent.entropy_from_logits(z),
            jxent.kl_divergence_from_logits(z, z[::-1]))

  want = jax.jit(lambda z: outputs(z))(z)
  with _accelerator():
    got = jax.jit(lambda z: outputs(z))(z)
  for g, w in zip(got, want, strict=True):
    np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
    np.testing.assert_allclose(g, w, rtol=1e-6)
