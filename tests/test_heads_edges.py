"""Edge cases of the vocabulary-scale heads that a red team found (issue 19).

Each test names what it guards and fails on the code before its fix.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jxent
from jxent import sharded

TOKENS, DIM, VOCAB = 4, 3, 10


def _head(rng, dtype=jnp.float32):
  return (jnp.asarray(rng.normal(size=(TOKENS, DIM)), dtype),
          jnp.asarray(rng.normal(size=(DIM, VOCAB)), dtype))


# --- 1. a masked token never poisons the batch's gradient ---------------------


@pytest.mark.parametrize("label", [-100, VOCAB, -7])
def test_masked_token_with_an_illegal_label_gets_no_gradient(rng, label):
  x, w = _head(rng)
  labels = jnp.array([1, label, 3, 4])
  where = jnp.array([True, False, True, True])

  def total(x, w):
    log_q, entropy = jxent.linear_log_probs(x, w, labels, where=where,
                                            return_entropy=True, block_size=4)
    return jnp.sum(log_q) + jnp.sum(entropy)

  value = total(x, w)
  dx, dw = jax.grad(total, (0, 1))(x, w)
  assert np.isfinite(value)
  assert np.isfinite(dw).all() and np.isfinite(dx).all()
  np.testing.assert_array_equal(dx[1], 0.0)
  # The same without the masked token: it contributes nothing at all.
  kept = np.array([0, 2, 3])

  def without(w):
    log_q, entropy = jxent.linear_log_probs(
        x[kept], w, labels[kept], return_entropy=True, block_size=4)
    return jnp.sum(log_q) + jnp.sum(entropy)

  np.testing.assert_allclose(dw, jax.grad(without)(w), rtol=1e-5, atol=1e-6)


def test_sharded_masked_token_with_an_illegal_label_gets_no_gradient(rng):
  x, w = _head(rng)
  labels = jnp.array([1, -100, 3, 4])
  where = jnp.array([True, False, True, True])
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))

  def total(w):
    log_q = jax.shard_map(
        lambda x, w: sharded.linear_log_probs(x, w, labels, "vocab",
                                              where=where, block_size=4),
        mesh=mesh, in_specs=(P(), P(None, "vocab")), out_specs=P())(x, w)
    return jnp.sum(log_q)

  assert np.isfinite(jax.jit(jax.grad(total))(w)).all()


# --- 3. the entropy survives a jump of the running max -------------------------


def test_entropy_survives_a_running_max_jump():
  # The running max jumps from 1e30 to 3e38 between blocks; the rebasing
  # term (old - new) * sumexp overflowed to -inf, and 0 * -inf was NaN.
  x = jnp.ones((1, 1), jnp.float32)
  w = jnp.array([[1e30, 1e30, 3e38, 0.0]], jnp.float32)
  _, entropy = jxent.linear_log_probs(x, w, jnp.array([2]),
                                      return_entropy=True, block_size=2)
  np.testing.assert_array_equal(entropy, jxent.entropy_from_logits(x @ w))
  assert float(entropy[0]) == 0.0


# --- 4. the top-k bin's gradient is the derivative of its value ----------------


def test_top_k_bin_gradient_matches_its_value_when_the_teacher_exceeds_one(
    rng):
  # A sloppy teacher: its top-k probabilities sum to 1.2, so the tail mass
  # is clamped to 0 and the value is sum_i p_i (log p_i - log q_i).
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(TOKENS, DIM)))
    w = jnp.asarray(rng.normal(size=(DIM, VOCAB)))
    indices = jnp.array([[0, 4, 9], [1, 2, 3], [8, 5, 6], [7, 9, 0]])
    p = jnp.array([[0.5, 0.4, 0.3]] * TOKENS)  # sums to 1.2

    def fused(x, w):
      return jnp.sum(jxent.linear_kl_divergence_from_top_k(
          indices, jnp.log(p), x, w, tail="bin", block_size=4))

    def reference(x, w):
      log_q = jax.nn.log_softmax(x @ w)
      log_q_k = jnp.take_along_axis(log_q, indices, axis=1)
      return jnp.sum(p * (jnp.log(p) - log_q_k))

    np.testing.assert_allclose(fused(x, w), reference(x, w), rtol=1e-12)
    for got, want in zip(jax.grad(fused, (0, 1))(x, w),
                         jax.grad(reference, (0, 1))(x, w), strict=True):
      np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# --- 5. empty tokens do not count in the mean ----------------------------------


def _with_an_empty_token(rng):
  """Two heads whose token 0 has every logit -inf."""
  x, w = _head(rng)
  w = jnp.abs(w) + 0.1          # positive, so x[0, 0] = -inf gives -inf
  x = x.at[0].set(jnp.array([-jnp.inf, 0.0, 0.0]))
  return x, w


@pytest.mark.parametrize("head", ["kl", "js", "top_k"])
def test_empty_tokens_do_not_count_in_the_mean(rng, head):
  x, w = _with_an_empty_token(rng)
  qx, qw = _head(rng)
  qx = qx.at[0].set(x[0])
  qw = jnp.abs(qw) + 0.1
  indices = jnp.array([[0, 4, 9], [1, 2, 3], [8, 5, 6], [7, 9, 0]])
  teacher = jnp.log(jnp.array([[0.5, 0.3, 0.1]] * TOKENS))
  live_x, live_w = _head(rng)

  def loss(reduction):
    if head == "kl":
      return jxent.linear_kl_divergence(x, w, qx, qw, reduction=reduction,
                                        block_size=4)
    if head == "js":
      return jxent.linear_js_divergence(x, w, qx, qw, reduction=reduction,
                                        block_size=4)
    # Top-k: the empty token is the teacher's (all -inf, renormalised);
    # an empty student against a live teacher is inf, and counts.
    return jxent.linear_kl_divergence_from_top_k(
        indices, teacher.at[0].set(-jnp.inf), live_x, live_w,
        reduction=reduction, block_size=4)

  per_token = loss("none")
  assert per_token[0] == 0 and np.isfinite(per_token).all()
  np.testing.assert_allclose(loss("mean"), jnp.mean(per_token[1:]),
                             rtol=1e-6)


# --- 6. huge logits: the sum is kept apart from the shift ----------------------


def _huge(rng, bias):
  """Heads whose logits are bias + small exact values (no rounding)."""
  x = jnp.asarray(np.eye(TOKENS, DIM), jnp.float32)
  step = float(np.spacing(np.float32(bias))) * 4
  w = jnp.asarray(rng.integers(-3, 4, size=(DIM, VOCAB)) * step, jnp.float32)
  qw = jnp.asarray(rng.integers(-3, 4, size=(DIM, VOCAB)) * step, jnp.float32)
  b = jnp.full((VOCAB,), bias, jnp.float32)
  return x, w, qw, b, step


@pytest.mark.parametrize("bias", [1e5, 1e8])
def test_divergence_heads_are_exact_under_a_huge_shared_bias(rng, bias):
  x, w, qw, b, step = _huge(rng, bias)
  # The temperature scales the exact steps to order 1.
  t = step
  zp, zq = (x @ w + b[None]) / t, (x @ qw + b[None]) / t
  with jax.enable_x64(True):
    # Without the bias, which changes no probability, in float64.
    lp = jax.nn.log_softmax(jnp.asarray(x @ w / t, jnp.float64))
    lq = jax.nn.log_softmax(jnp.asarray(x @ qw / t, jnp.float64))
    kl = jnp.sum(jnp.exp(lp) * (lp - lq), axis=1)
    m = 0.5 * (jnp.exp(lp) + jnp.exp(lq))
    js = 0.5 * jnp.sum(jnp.exp(lp) * (lp - jnp.log(m)), axis=1) + 0.5 * (
        jnp.sum(jnp.exp(lq) * (lq - jnp.log(m)), axis=1))
    indices = jnp.argsort(-lp, axis=1)[:, :4]
    top = jnp.take_along_axis(lp, indices, axis=1)
    lq_k = jnp.take_along_axis(lq, indices, axis=1)
    renorm = top - jax.nn.logsumexp(top, axis=1, keepdims=True)
    top_k = jnp.sum(jnp.exp(renorm) * (renorm - lq_k), axis=1)
    kl, js, top_k = (np.asarray(v) for v in (kl, js, top_k))
  assert (np.ptp(np.asarray(zp)[:DIM], axis=1) > 0).all()  # nothing rounded
  kw = dict(p_bias=b, q_bias=b, temperature=t, block_size=4)
  np.testing.assert_allclose(
      jxent.linear_kl_divergence(x, w, x, qw, **kw), kl, rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      jxent.linear_js_divergence(x, w, x, qw, **kw), js, rtol=1e-4,
      atol=1e-6)
  np.testing.assert_allclose(
      jxent.linear_kl_divergence_from_top_k(
          jnp.asarray(indices, jnp.int32), jnp.asarray(top, jnp.float32),
          x, qw, bias=b, temperature=t, block_size=4),
      top_k, rtol=1e-4, atol=1e-6)
  # The materialised functions agree (they keep the sum apart already).
  np.testing.assert_allclose(jxent.kl_divergence_from_logits(zp, zq), kl,
                             rtol=1e-4, atol=1e-6)


# --- 2. NumPy int64 labels never wrap before their range is checked -----------

WIDE = np.array([2**32 + 3, 1, 2, 3], np.int64)  # 2**32 + 3 wraps to 3


def _entry_points(rng):
  x, w = _head(rng)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))
  logits = x @ w
  indices = np.stack([WIDE, WIDE + 4, WIDE + 5], axis=1) % (2**32 + 7)
  teacher = jnp.log(jnp.full((TOKENS, 3), 0.3))

  # Under jit: shard_map run eagerly dispatches op by op, several times
  # slower to test; the labels are checked while tracing either way.
  @jax.jit
  def sharded_ce(logits):
    return jax.shard_map(
        lambda z: sharded.softmax_cross_entropy_with_integer_labels(
            z, WIDE, "vocab"),
        mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())(logits)

  @jax.jit
  def sharded_head(w):
    return jax.shard_map(
        lambda w: sharded.linear_log_probs(x, w, WIDE, "vocab"),
        mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())(w)

  return {
      "softmax_cross_entropy_with_integer_labels": (
          lambda z: jxent.softmax_cross_entropy_with_integer_labels(z, WIDE),
          logits),
      "linear_softmax_cross_entropy": (
          lambda w: jxent.linear_softmax_cross_entropy(x, w, WIDE,
                                                       reduction="none"), w),
      "linear_log_probs": (lambda w: jxent.linear_log_probs(x, w, WIDE), w),
      "linear_kl_divergence_from_top_k": (
          lambda w: jxent.linear_kl_divergence_from_top_k(
              indices, teacher, x, w), w),
      "sharded_cross_entropy": (sharded_ce, logits),
      "sharded_log_probs": (sharded_head, w),
  }


@pytest.mark.parametrize("entry", [
    "softmax_cross_entropy_with_integer_labels",
    "linear_softmax_cross_entropy", "linear_log_probs",
    "linear_kl_divergence_from_top_k", "sharded_cross_entropy",
    "sharded_log_probs"])
def test_numpy_int64_labels_do_not_wrap_without_x64(rng, entry):
  assert not jax.config.jax_enable_x64
  fn, arg = _entry_points(rng)[entry]
  out = np.asarray(fn(arg))
  assert np.isnan(out[0]) and np.isfinite(out[1:]).all()
  with pytest.raises(Exception, match=r"must lie in \[0, 10\)"):
    jxent.checked(fn)(arg)


# --- 14. an unhandled -100 padding label is easy to diagnose -------------------


def test_checked_names_ignore_index_for_a_minus_100_label(rng):
  x, w = _head(rng)
  labels = jnp.array([1, -100, 3, 4])
  with pytest.raises(Exception, match=r"needs ignore_index=-100"):
    jxent.checked(lambda w: jxent.linear_log_probs(x, w, labels))(w)
  with pytest.raises(Exception, match=r"needs ignore_index=-100"):
    jxent.checked(jxent.softmax_cross_entropy_with_integer_labels)(
        x @ w, labels)
