"""Tests for the vocabulary-scale heads: log-probabilities, entropy, KL, JS.

Each function is compared, in value and in the gradients for every head
argument, with the materialised computation in float64: the logits built
whole, `cap * tanh((x @ w + b) / cap) / T` (a -inf stays -inf), then
the textbook formula. The problems have an odd vocabulary (37) walked in blocks that do not divide it,
padded columns with a -inf bias, masked and ignored tokens.
"""

import functools

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

import jxent

TOKENS, DIM, Q_DIM, VOCAB, PAD = 9, 5, 3, 37, 3
RTOL, ATOL = 1e-4, 1e-6


def _problem(rng, dtype=jnp.float32):
  """Two heads over one vocabulary; the last PAD columns are padding."""
  def normal(*shape, scale=1.0):
    return jnp.asarray(scale * rng.normal(size=shape), dtype)

  bias = normal(VOCAB).at[-PAD:].set(-jnp.inf)
  labels = jnp.asarray(rng.integers(0, VOCAB - PAD, TOKENS), jnp.int32)
  # The first and last live classes, at the blocks' edges, and an ignored one.
  labels = labels.at[0].set(0).at[1].set(VOCAB - PAD - 1).at[2].set(-100)
  return dict(
      p_x=normal(TOKENS, DIM), p_w=normal(DIM, VOCAB, scale=0.8),
      p_bias=bias, q_x=normal(TOKENS, Q_DIM), q_w=normal(Q_DIM, VOCAB),
      q_bias=normal(VOCAB).at[-PAD:].set(-jnp.inf), labels=labels)


def _logits(x, w, bias, cap, temperature):
  z = x @ w
  if bias is not None:
    z = z + bias[None, :]
  if cap is not None:
    # A -inf column (padding) stays -inf under the cap (the conventions'
    # rule); the double where keeps its gradient finite.
    live = z > -jnp.inf
    z = jnp.where(live, cap * jnp.tanh(jnp.where(live, z, 0) / cap), -jnp.inf)
  return z / temperature


def _xlogy(p, y):
  """p * y, 0 where p is 0 (y may be -inf there); double where for grads."""
  nonzero = p > 0
  return jnp.where(nonzero, p * jnp.where(nonzero, y, 0), 0)


def _float64(fn, args, argnums):
  """fn's value and the gradients of its sum, all in float64."""
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64))
            if a is not None and jnp.issubdtype(jnp.asarray(a).dtype,
                                                jnp.floating) else a
            for a in args]
    value = fn(*args)
    grads = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums)(*args)
    return np.asarray(value), [np.asarray(g) for g in grads]


def _float32(fn, args, argnums):
  value = fn(*args)
  grads = jax.grad(lambda *a: jnp.sum(fn(*a)), argnums)(*args)
  return np.asarray(value), [np.asarray(g) for g in grads]


def _assert_matches(fn, reference, args, argnums, rtol=RTOL, atol=ATOL):
  value, grads = _float32(fn, args, argnums)
  want, want_grads = _float64(reference, args, argnums)
  assert value.dtype == np.float32
  np.testing.assert_allclose(value, want, rtol=rtol, atol=atol)
  for got, expected in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


OPTIONS = [
    dict(),
    dict(temperature=1.7),
    dict(logit_softcap=4.0),
    dict(logit_softcap=4.0, temperature=0.6),
]
BLOCKS = [8, 37, None]  # 8 and 37 + padding do not divide; None: default.
# Every option and every block size, each met at least once (their product
# would only compile more of the same walks).
OPTIONS_AND_BLOCKS = [(OPTIONS[0], 8), (OPTIONS[1], 37), (OPTIONS[2], None),
                      (OPTIONS[3], 8)]


# --- log-probabilities and entropy ------------------------------------------


def _log_probs_reference(labels, keep, cap=None, temperature=1.0):
  def reference(x, w, bias):
    log_q = jax.nn.log_softmax(_logits(x, w, bias, cap, temperature))
    safe = jnp.where(keep, labels, 0)
    picked = jnp.take_along_axis(log_q, safe[:, None], axis=1)[:, 0]
    entropy = -jnp.sum(_xlogy(jnp.exp(log_q), log_q), axis=1)
    return jnp.where(keep, picked, 0), jnp.where(keep, entropy, 0)
  return reference


@pytest.mark.parametrize(("options", "block_size"), OPTIONS_AND_BLOCKS)
@pytest.mark.parametrize("output", [0, 1, "both"])
def test_log_probs_and_entropy_match_float64(rng, options, block_size,
                                             output):
  prob = _problem(rng)
  labels = prob["labels"]
  where = jnp.ones(TOKENS, bool).at[4].set(False)
  keep = (labels != -100) & where
  reference = _log_probs_reference(labels, keep, options.get("logit_softcap"),
                                   options.get("temperature", 1.0))

  def pick(outputs):
    return outputs[0] + outputs[1] if output == "both" else outputs[output]

  def fused(x, w, bias):
    return pick(jxent.linear_log_probs(
        x, w, labels, bias=bias, return_entropy=True, ignore_index=-100,
        where=where, block_size=block_size, **options))

  _assert_matches(fused, lambda *a: pick(reference(*a)),
                  (prob["p_x"], prob["p_w"], prob["p_bias"]), (0, 1, 2))


@pytest.mark.parametrize(("options", "block_size"), OPTIONS_AND_BLOCKS)
def test_log_sum_exp_matches_float64(rng, options, block_size):
  # Issue 21, item 4: each token's log-sum-exp from the same walk, for
  # z-loss monitoring; its gradient is the softmax. Masked and ignored
  # tokens give 0 and no gradient; an illegal label does not matter.
  prob = _problem(rng)
  labels = prob["labels"].at[3].set(VOCAB + 5)
  where = jnp.ones(TOKENS, bool).at[4].set(False)
  counts = (labels != -100) & where
  cap, temperature = (options.get("logit_softcap"),
                      options.get("temperature", 1.0))

  def reference(x, w, bias):
    lse = jax.nn.logsumexp(_logits(x, w, bias, cap, temperature), axis=1)
    return jnp.where(counts, lse, 0)

  def fused(x, w, bias):
    return jxent.linear_log_probs(
        x, w, labels, bias=bias, return_lse=True, ignore_index=-100,
        where=where, block_size=block_size, **options)[1]

  log_q, _ = jxent.linear_log_probs(prob["p_x"], prob["p_w"], labels,
                                    return_lse=True, block_size=block_size)
  assert np.isnan(log_q[3])
  _assert_matches(fused, reference,
                  (prob["p_x"], prob["p_w"], prob["p_bias"]), (0, 1, 2))


def test_log_sum_exp_comes_last_and_of_an_empty_token_is_minus_inf(rng):
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], jnp.zeros(TOKENS, jnp.int32)
  # One live class (0): its log-sum-exp is its logit, the entropy 0, and
  # the outputs come in the order log q, entropy, log-sum-exp.
  one = jnp.full(VOCAB, -jnp.inf).at[0].set(0.0)
  log_q, entropy, lse = jxent.linear_log_probs(
      x, w, labels, bias=one, return_entropy=True, return_lse=True,
      block_size=8)
  np.testing.assert_allclose(lse, x @ w[:, 0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(entropy, 0.0, atol=1e-6)
  np.testing.assert_allclose(log_q, 0.0, atol=1e-6)
  # Every column -inf: empty tokens, log-sum-exp -inf with no gradient.
  empty = jnp.full(VOCAB, -jnp.inf)

  def finite_part(w):
    _, lse = jxent.linear_log_probs(x, w, labels, bias=empty,
                                    return_lse=True, block_size=8)
    return jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0.0)), lse

  grad, lse = jax.grad(finite_part, has_aux=True)(w)
  assert np.all(np.asarray(lse) == -np.inf)
  np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize(("options", "block_size"), OPTIONS_AND_BLOCKS)
def test_argmax_is_the_materialised_argmax(rng, options, block_size):
  # Issue 21, item 4: each token's most likely class from the same walk.
  # Padding columns (-inf) never win; masked and ignored tokens give -1.
  prob = _problem(rng)
  labels = prob["labels"]
  where = jnp.ones(TOKENS, bool).at[4].set(False)
  x, w, bias = prob["p_x"], prob["p_w"], prob["p_bias"]
  log_q, arg = jxent.linear_log_probs(
      x, w, labels, bias=bias, return_argmax=True, ignore_index=-100,
      where=where, block_size=block_size, **options)
  logits = _logits(x, w, bias, options.get("logit_softcap"),
                   options.get("temperature", 1.0))
  want = np.where((labels != -100) & where, np.argmax(logits, axis=1), -1)
  assert arg.dtype == jnp.int32
  np.testing.assert_array_equal(arg, want)
  np.testing.assert_array_equal(
      log_q, jxent.linear_log_probs(x, w, labels, bias=bias,
                                    ignore_index=-100, where=where,
                                    block_size=block_size, **options))


def test_argmax_takes_the_first_of_equal_logits_across_blocks():
  x, w = jnp.zeros((3, 2)), jnp.zeros((2, 37))
  bias = jnp.zeros(37).at[3].set(1.0).at[20].set(1.0)
  # Columns 3 and 20 tie, in different blocks; then empty rows (every
  # column -inf), then a NaN row.
  for block_size in (8, 37):
    _, arg = jxent.linear_log_probs(x, w, jnp.zeros(3, jnp.int32), bias=bias,
                                    return_argmax=True, block_size=block_size)
    np.testing.assert_array_equal(arg, [3, 3, 3])
  empty = jnp.full(37, -jnp.inf)
  _, arg = jxent.linear_log_probs(x, w, jnp.zeros(3, jnp.int32), bias=empty,
                                  return_argmax=True, block_size=8)
  np.testing.assert_array_equal(arg, -1)
  nan_x = x.at[2, 0].set(jnp.nan).at[1, 0].set(1.0)
  _, arg = jxent.linear_log_probs(nan_x, w.at[0, 30].set(5.0),
                                  jnp.zeros(3, jnp.int32), bias=bias,
                                  return_argmax=True, block_size=8)
  np.testing.assert_array_equal(arg, [3, 30, -1])


def test_argmax_refuses_a_vocabulary_float32_cannot_count():
  w = jnp.zeros((1, 2**24 + 1), jnp.float32)
  with pytest.raises(ValueError, match="return_argmax"):
    jxent.linear_log_probs(jnp.ones((1, 1)), w, jnp.zeros(1, jnp.int32),
                           return_argmax=True)


def test_log_probs_alone_equal_those_with_entropy(rng):
  prob = _problem(rng)
  labels = _legal(prob["labels"])
  args = (prob["p_x"], prob["p_w"], labels)
  alone = jxent.linear_log_probs(*args, block_size=8)
  with_entropy, _ = jxent.linear_log_probs(*args, block_size=8,
                                           return_entropy=True)
  np.testing.assert_array_equal(alone, with_entropy)
  assert not isinstance(alone, tuple)


def _count_equations(jaxpr) -> int:
  """Equations in a jaxpr and every jaxpr nested in it."""
  total = 0
  for eqn in jaxpr.eqns:
    total += 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _count_equations(sub)
  return total


def test_differentiating_one_output_does_no_work_for_the_other(rng):
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], _legal(prob["labels"])

  def size(combine):
    def loss(x, w):
      log_q, entropy = jxent.linear_log_probs(x, w, labels,
                                              return_entropy=True,
                                              block_size=8)
      return combine(log_q, entropy)
    return _count_equations(jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, w).jaxpr)

  both = size(lambda a, b: jnp.sum(a) + jnp.sum(b))
  log_q_only = size(lambda a, b: jnp.sum(a) + 0 * jnp.sum(jax.lax.stop_gradient(b)))
  entropy_only = size(lambda a, b: jnp.sum(b) + 0 * jnp.sum(jax.lax.stop_gradient(a)))
  assert log_q_only < both and entropy_only < both, (log_q_only,
                                                     entropy_only, both)


def test_illegal_label_gives_nan_and_its_entropy_stays(rng):
  prob = _problem(rng)
  labels = _legal(prob["labels"]).at[3].set(VOCAB).at[5].set(-7)
  log_q, entropy = jxent.linear_log_probs(prob["p_x"], prob["p_w"], labels,
                                          return_entropy=True, block_size=8)
  assert np.isnan(log_q[3]) and np.isnan(log_q[5])
  assert np.isfinite(np.delete(np.asarray(log_q), [3, 5])).all()
  assert np.isfinite(entropy).all()
  dx = jax.grad(lambda x: jnp.sum(jxent.linear_log_probs(
      x, prob["p_w"], labels, block_size=8)))(prob["p_x"])
  assert np.isnan(dx[3]).all() and np.isfinite(dx[0]).all()
  with pytest.raises(Exception, match=r"labels must lie in \[0, 37\)"):
    jxent.checked(lambda x: jxent.linear_log_probs(x, prob["p_w"],
                                                   labels))(prob["p_x"])


# --- KL and JS divergences between two heads ---------------------------------


def _kl_reference(keep, cap=None, temperature=1.0):
  def reference(p_x, p_w, p_bias, q_x, q_w, q_bias):
    log_p = jax.nn.log_softmax(_logits(p_x, p_w, p_bias, cap, temperature))
    log_q = jax.nn.log_softmax(_logits(q_x, q_w, q_bias, cap, temperature))
    kl = jnp.sum(_xlogy(jnp.exp(log_p), log_p - log_q), axis=1)
    return jnp.where(keep, kl, 0)
  return reference


def _js_reference(beta, keep, cap=None, temperature=1.0):
  def reference(p_x, p_w, p_bias, q_x, q_w, q_bias):
    log_p = jax.nn.log_softmax(_logits(p_x, p_w, p_bias, cap, temperature))
    log_q = jax.nn.log_softmax(_logits(q_x, q_w, q_bias, cap, temperature))
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    m = beta * p + (1 - beta) * q
    log_m = jnp.log(jnp.where(m > 0, m, 1))
    js = beta * jnp.sum(_xlogy(p, log_p - log_m), axis=1) + (
        1 - beta) * jnp.sum(_xlogy(q, log_q - log_m), axis=1)
    return jnp.where(keep, js, 0)
  return reference


def _heads(prob):
  return tuple(prob[k] for k in ("p_x", "p_w", "p_bias", "q_x", "q_w",
                                 "q_bias"))


def _call_pair(fn, **kwargs):
  def call(p_x, p_w, p_bias, q_x, q_w, q_bias):
    return fn(p_x, p_w, q_x, q_w, p_bias=p_bias, q_bias=q_bias, **kwargs)
  return call


@pytest.mark.parametrize(("options", "block_size"), OPTIONS_AND_BLOCKS)
def test_kl_matches_float64(rng, options, block_size):
  prob = _problem(rng)
  where = jnp.ones(TOKENS, bool).at[4].set(False)
  fused = _call_pair(jxent.linear_kl_divergence, where=where,
                     block_size=block_size, **options)
  reference = _kl_reference(where, options.get("logit_softcap"),
                            options.get("temperature", 1.0))
  _assert_matches(fused, reference, _heads(prob), tuple(range(6)))


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("block_size", [8, None])
@pytest.mark.parametrize("options", [OPTIONS[0], OPTIONS[-1]])
def test_js_matches_float64(rng, beta, block_size, options):
  prob = _problem(rng)
  where = jnp.ones(TOKENS, bool).at[4].set(False)
  fused = _call_pair(jxent.linear_js_divergence, beta=beta, where=where,
                     block_size=block_size, **options)
  cap, temperature = options.get("logit_softcap"), options.get(
      "temperature", 1.0)
  if beta == 0.0:  # The limits: forward KL at 0, reverse KL at 1.
    reference = _kl_reference(where, cap, temperature)
  elif beta == 1.0:
    forward = _kl_reference(where, cap, temperature)
    reference = lambda *a: forward(*a[3:], *a[:3])  # noqa: E731
  else:
    reference = _js_reference(beta, where, cap, temperature)
  _assert_matches(fused, reference, _heads(prob), tuple(range(6)))


def test_js_endpoints_equal_kl_exactly(rng):
  prob = _problem(rng)
  args = (prob["p_x"], prob["p_w"], prob["q_x"], prob["q_w"])
  swapped = args[2:] + args[:2]
  np.testing.assert_array_equal(
      jxent.linear_js_divergence(*args, beta=0.0, block_size=8),
      jxent.linear_kl_divergence(*args, block_size=8))
  np.testing.assert_array_equal(
      jxent.linear_js_divergence(*args, beta=1.0, block_size=8),
      jxent.linear_kl_divergence(*swapped, block_size=8))
  # Just inside the endpoints it is finite and near 0 (it vanishes there).
  for beta in (1e-6, 1 - 1e-6):
    value = jxent.linear_js_divergence(*args, beta=beta, block_size=8)
    assert np.isfinite(value).all() and float(jnp.max(value)) < 1e-4


def test_js_at_one_half_is_the_symmetric_bounded_js(rng):
  prob = _problem(rng)
  args = (prob["p_x"], prob["p_w"], prob["q_x"], prob["q_w"])
  swapped = args[2:] + args[:2]
  forward = jxent.linear_js_divergence(*args, block_size=8)
  np.testing.assert_allclose(
      forward, jxent.linear_js_divergence(*swapped, block_size=8), rtol=1e-5)
  assert float(jnp.max(forward)) <= np.log(2)
  p = jax.nn.softmax(args[0] @ args[1])
  q = jax.nn.softmax(args[2] @ args[3])
  np.testing.assert_allclose(forward, jxent.js_divergence(p, q), rtol=1e-4,
                             atol=1e-6)


def test_kl_is_asymmetric_in_its_arguments(rng):
  prob = _problem(rng)
  args = (prob["p_x"], prob["p_w"], prob["q_x"], prob["q_w"])
  forward = jxent.linear_kl_divergence(*args)
  reverse = jxent.linear_kl_divergence(*args[2:], *args[:2])
  assert not np.allclose(forward, reverse, rtol=1e-2)
  assert (np.asarray(forward) >= 0).all() and (np.asarray(reverse) >= 0).all()


def _count_dots(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == "dot_general"
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += _count_dots(sub)
  return total


@pytest.mark.parametrize("fn", [jxent.linear_kl_divergence,
                                jxent.linear_js_divergence])
def test_a_frozen_teacher_costs_no_gradient_matmuls(rng, fn):
  prob = _problem(rng)
  p_x, p_w, q_x, q_w = (prob[k] for k in ("p_x", "p_w", "q_x", "q_w"))

  def loss(p_x, p_w, q_x, q_w):
    return jnp.sum(fn(p_x, p_w, q_x, q_w, block_size=8))

  def dots(f, argnums):
    return _count_dots(jax.make_jaxpr(jax.grad(f, argnums))(
        p_x, p_w, q_x, q_w).jaxpr)

  both = dots(loss, (0, 1, 2, 3))
  student = dots(loss, (2, 3))
  stopped = dots(lambda a, b, c, d: loss(jax.lax.stop_gradient(a),
                                         jax.lax.stop_gradient(b), c, d),
                 (0, 1, 2, 3))
  # The teacher's dx and dw are two matmuls per block that a frozen teacher
  # skips; its logits are still remade.
  assert student == stopped < both, (student, stopped, both)
  grads = jax.grad(loss, (0, 1, 2, 3))(p_x, p_w, q_x, q_w)
  np.testing.assert_allclose(jax.grad(loss, (2, 3))(p_x, p_w, q_x, q_w)[1],
                             grads[3], rtol=1e-6)


# --- a sparse teacher -----------------------------------------------------------


def _top_k(rng, k=5):
  indices = np.stack([rng.choice(VOCAB - PAD, k, replace=False)
                      for _ in range(TOKENS)])
  teacher = jax.nn.log_softmax(2 * rng.normal(size=(TOKENS, VOCAB)))
  log_probs = np.take_along_axis(np.asarray(teacher), indices, axis=1)
  return jnp.asarray(indices, jnp.int32), jnp.asarray(log_probs, jnp.float32)


def _top_k_reference(indices, teacher, tail, keep, cap=None, temperature=1.0):
  def reference(x, w, bias):
    log_q = jax.nn.log_softmax(_logits(x, w, bias, cap, temperature))
    log_q_k = jnp.take_along_axis(log_q, indices, axis=1)
    t = teacher.astype(log_q.dtype)
    if tail == "renormalize":
      log_p = t - jax.nn.logsumexp(t, axis=1, keepdims=True)
      kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q_k), axis=1)
    else:
      in_top = jnp.zeros(log_q.shape, bool).at[
          jnp.arange(TOKENS)[:, None], indices].set(True)
      q_tail = jnp.sum(jnp.where(in_top, 0, jnp.exp(log_q)), axis=1)
      r = 1 - jnp.sum(jnp.exp(t), axis=1)
      kl = jnp.sum(jnp.exp(t) * (t - log_q_k), axis=1) + r * (
          jnp.log(r) - jnp.log(q_tail))
    return jnp.where(keep, kl, 0)
  return reference


@pytest.mark.parametrize("tail", ["renormalize", "bin"])
@pytest.mark.parametrize(("options", "block_size"), OPTIONS_AND_BLOCKS)
def test_top_k_matches_float64(rng, tail, options, block_size):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  where = jnp.ones(TOKENS, bool).at[4].set(False)

  def fused(x, w, bias):
    return jxent.linear_kl_divergence_from_top_k(
        indices, teacher, x, w, tail=tail, bias=bias, where=where,
        block_size=block_size, **options)

  reference = _top_k_reference(indices, teacher, tail, where,
                               options.get("logit_softcap"),
                               options.get("temperature", 1.0))
  _assert_matches(fused, reference,
                  (prob["p_x"], prob["p_w"], prob["p_bias"]), (0, 1, 2))


def test_top_k_of_the_whole_vocabulary_is_the_dense_kl(rng):
  # With k = V the tails agree and both equal the KL to the full softmax.
  prob = _problem(rng)
  teacher_logits = jnp.asarray(rng.normal(size=(TOKENS, VOCAB)), jnp.float32)
  log_p = jax.nn.log_softmax(teacher_logits)
  indices = jnp.broadcast_to(jnp.arange(VOCAB, dtype=jnp.int32),
                             (TOKENS, VOCAB))
  x, w = prob["p_x"], prob["p_w"]
  dense = jxent.kl_divergence_from_logits(teacher_logits, x @ w)
  for tail in ("renormalize", "bin"):
    np.testing.assert_allclose(
        jxent.linear_kl_divergence_from_top_k(indices, log_p, x, w, tail=tail,
                                              block_size=8),
        dense, rtol=1e-4, atol=1e-6)


def test_top_k_index_out_of_range_gives_nan(rng):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  bad = indices.at[3, 1].set(VOCAB)
  out = jxent.linear_kl_divergence_from_top_k(bad, teacher, prob["p_x"],
                                              prob["p_w"], block_size=8)
  assert np.isnan(out[3]) and np.isfinite(np.delete(np.asarray(out), 3)).all()
  assert np.isnan(jxent.linear_kl_divergence_from_top_k(
      bad, teacher, prob["p_x"], prob["p_w"], reduction="mean"))


def test_top_k_teacher_gets_no_gradient(rng):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  grad = jax.grad(lambda t: jnp.sum(jxent.linear_kl_divergence_from_top_k(
      indices, t, prob["p_x"], prob["p_w"])))(teacher)
  np.testing.assert_array_equal(grad, 0.0)


def test_top_k_bad_arguments_are_refused(rng):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  x, w = prob["p_x"], prob["p_w"]
  f = jxent.linear_kl_divergence_from_top_k
  with pytest.raises(ValueError, match="tail"):
    f(indices, teacher, x, w, tail="drop")
  with pytest.raises(ValueError, match="top_k_indices"):
    f(indices[:-1], teacher[:-1], x, w)
  with pytest.raises(ValueError, match="same shape"):
    f(indices, teacher[:, :-1], x, w)
  with pytest.raises(TypeError, match="integer"):
    f(teacher, teacher, x, w)
  with pytest.raises(ValueError, match="k ="):
    f(jnp.zeros((TOKENS, VOCAB + 1), jnp.int32),
      jnp.zeros((TOKENS, VOCAB + 1)), x, w)


def _legal(labels):
  """The labels with ignore_index (-100) replaced by class 0."""
  return jnp.where(labels < 0, 0, labels)


# --- what every head shares --------------------------------------------------


def _all_four(prob, indices, teacher, **kwargs):
  """The four functions on one problem, as functions of the student head."""
  p_x, p_w, labels = prob["p_x"], prob["p_w"], _legal(prob["labels"])
  q_x, q_w = prob["q_x"], prob["q_w"]
  return {
      "log_probs": lambda x, w: jxent.linear_log_probs(
          x, w, labels, return_entropy=True, **kwargs),
      "kl": lambda x, w: jxent.linear_kl_divergence(p_x, p_w, x, w, **kwargs),
      "js": lambda x, w: jxent.linear_js_divergence(p_x, p_w, x, w, **kwargs),
      "top_k": lambda x, w: jxent.linear_kl_divergence_from_top_k(
          indices, teacher, x, w, tail="bin", **kwargs),
  }, (q_x, q_w)


def _total(fn):
  return lambda *a: sum(jnp.sum(o) for o in jax.tree.leaves(fn(*a)))


@pytest.mark.parametrize("name", ["log_probs", "kl", "js", "top_k"])
def test_masked_tokens_give_zero_and_no_gradient(rng, name):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  where = jnp.ones(TOKENS, bool).at[jnp.array([1, 6])].set(False)
  fns, (x, w) = _all_four(prob, indices, teacher, where=where, block_size=8)
  fn = fns[name]
  for out in jax.tree.leaves(fn(x, w)):
    assert out[1] == 0 and out[6] == 0
  dx = jax.grad(_total(fn))(x, w)
  np.testing.assert_array_equal(dx[1], 0.0)
  np.testing.assert_array_equal(dx[6], 0.0)
  assert np.abs(dx[0]).sum() > 0


@pytest.mark.parametrize("name", ["log_probs", "kl", "js"])
def test_a_token_whose_logits_are_all_minus_inf_gives_zero(rng, name):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  # With every weight positive, an x row of -inf makes every logit -inf.
  prob = dict(prob, p_w=jnp.abs(prob["p_w"]) + 0.1,
              p_x=prob["p_x"].at[2].set(-jnp.inf))
  fns, (x, w) = _all_four(prob, indices, teacher, block_size=8)
  w = jnp.abs(w) + 0.1
  x = x.at[2].set(-jnp.inf)  # And the student's; for KL and JS both empty.
  fn = fns[name]
  for out in jax.tree.leaves(fn(x, w)):
    assert out[2] == 0, out
    assert np.isfinite(np.delete(np.asarray(out), 2)).all()
  # Only dx: dw = x^T dlogits meets -inf * 0 = NaN, as the materialised
  # product would.
  dx = jax.grad(_total(fn))(x, w)
  np.testing.assert_array_equal(dx[2], 0.0)
  assert np.isfinite(dx).all()


def test_an_empty_student_against_a_live_teacher_is_infinite(rng):
  prob = _problem(rng)
  q_w = jnp.abs(prob["q_w"]) + 0.1
  q_x = prob["q_x"].at[2].set(-jnp.inf)
  kl = jxent.linear_kl_divergence(prob["p_x"], prob["p_w"], q_x, q_w,
                                  block_size=8)
  assert kl[2] == jnp.inf
  assert np.isfinite(np.delete(np.asarray(kl), 2)).all()
  dense = jxent.kl_divergence_from_logits(
      (prob["p_x"] @ prob["p_w"])[2], (q_x @ q_w)[2])
  assert dense == jnp.inf


@pytest.mark.parametrize("name", ["log_probs", "kl", "js", "top_k"])
def test_nan_in_x_makes_its_token_nan(rng, name):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  fns, (x, w) = _all_four(prob, indices, teacher, block_size=8)
  x = x.at[3, 0].set(jnp.nan)
  for out in jax.tree.leaves(fns[name](x, w)):
    assert np.isnan(out[3])
    assert np.isfinite(np.delete(np.asarray(out), 3)).all()


@pytest.mark.parametrize("name", ["log_probs", "kl", "js", "top_k"])
def test_bfloat16_heads_accumulate_in_float32(rng, name):
  prob = _problem(rng, dtype=jnp.bfloat16)
  indices, teacher = _top_k(rng)
  fns, (x, w) = _all_four(prob, indices, teacher, block_size=8)
  fn = fns[name]
  for out in jax.tree.leaves(fn(x, w)):
    assert out.dtype == jnp.float32
  dx, dw = jax.grad(_total(fn), (0, 1))(x, w)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  # Against the same function on the bfloat16 values held in float32.
  up = {k: (v.astype(jnp.float32) if jnp.issubdtype(v.dtype, jnp.floating)
            else v) for k, v in prob.items()}
  fns32, (x32, w32) = _all_four(up, indices, teacher, block_size=8)
  for got, want in zip(jax.tree.leaves(fn(x, w)),
                       jax.tree.leaves(fns32[name](x32, w32)), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  want_dx, want_dw = jax.grad(_total(fns32[name]), (0, 1))(x32, w32)
  np.testing.assert_allclose(np.asarray(dx, np.float32), want_dx, rtol=2e-2,
                             atol=1e-3)
  np.testing.assert_allclose(np.asarray(dw, np.float32), want_dw, rtol=2e-2,
                             atol=1e-3)


@pytest.mark.parametrize("name", ["log_probs", "kl", "js", "top_k"])
def test_jit_vmap_and_leading_axes(rng, name):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  fns, (x, w) = _all_four(prob, indices, teacher, block_size=8)
  fn = fns[name]
  eager = jax.tree.leaves(fn(x, w))
  for got, want in zip(jax.tree.leaves(jax.jit(fn)(x, w)), eager,
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  # vmap over a batch of student projections.
  ws = jnp.stack([w, 2 * w])
  mapped = jax.tree.leaves(jax.vmap(fn, in_axes=(None, 0))(x, ws))
  for got, want in zip(mapped, eager, strict=True):
    np.testing.assert_allclose(got[0], want, rtol=2e-5, atol=1e-6)


def test_leading_token_axes_keep_their_shape(rng):
  prob = _problem(rng)
  x = prob["p_x"][:8].reshape(2, 4, DIM)
  labels = _legal(prob["labels"][:8]).reshape(2, 4)
  log_q, entropy = jxent.linear_log_probs(x, prob["p_w"], labels,
                                          return_entropy=True)
  assert log_q.shape == entropy.shape == (2, 4)
  q_x = prob["q_x"][:8].reshape(2, 4, Q_DIM)
  kl = jxent.linear_kl_divergence(x, prob["p_w"], q_x, prob["q_w"])
  assert kl.shape == (2, 4)
  np.testing.assert_allclose(
      kl.reshape(-1), jxent.linear_kl_divergence(
          prob["p_x"][:8], prob["p_w"], prob["q_x"][:8], prob["q_w"]),
      rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions_count_the_kept_tokens(rng, reduction):
  prob = _problem(rng)
  where = jnp.ones(TOKENS, bool).at[jnp.array([0, 5])].set(False)
  args = (prob["p_x"], prob["p_w"], prob["q_x"], prob["q_w"])
  per_token = jxent.linear_kl_divergence(*args, where=where)
  reduced = jxent.linear_kl_divergence(*args, where=where,
                                       reduction=reduction)
  expected = jnp.sum(per_token) / (TOKENS - 2 if reduction == "mean" else 1)
  np.testing.assert_allclose(reduced, expected, rtol=1e-6)


def test_bad_heads_are_refused_with_clear_errors(rng):
  prob = _problem(rng)
  p_x, p_w, q_x, q_w = (prob[k] for k in ("p_x", "p_w", "q_x", "q_w"))
  with pytest.raises(ValueError, match="vocabularies must match"):
    jxent.linear_kl_divergence(p_x, p_w, q_x, q_w[:, :-1])
  with pytest.raises(ValueError, match="same tokens"):
    jxent.linear_kl_divergence(p_x, p_w, q_x[:-1], q_w)
  with pytest.raises(ValueError, match="q_x"):
    jxent.linear_js_divergence(p_x, p_w, q_x, p_w)
  with pytest.raises(ValueError, match="beta"):
    jxent.linear_js_divergence(p_x, p_w, q_x, q_w, beta=1.5)
  with pytest.raises(ValueError, match="beta"):
    jxent.linear_js_divergence(p_x, p_w, q_x, q_w, beta=float("nan"))
  for temperature in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="temperature"):
      jxent.linear_log_probs(p_x, p_w, prob["labels"],
                             temperature=temperature)
  with pytest.raises(ValueError, match="labels"):
    jxent.linear_log_probs(p_x, p_w, prob["labels"][:-1])
  with pytest.raises(TypeError, match="where"):
    jxent.linear_kl_divergence(p_x, p_w, q_x, q_w,
                               where=jnp.ones(TOKENS, jnp.int32))


@pytest.mark.parametrize("head", ["cross_entropy", "log_probs", "top_k"])
def test_a_frozen_output_layer_costs_no_weight_gradient_matmuls(rng, head):
  # LoRA-style fine-tuning freezes w: its gradient's matmuls are skipped,
  # and so are x's when only w is trained.
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], _legal(prob["labels"])
  indices, teacher = _top_k(rng)

  def loss(x, w):
    if head == "cross_entropy":
      return jxent.linear_softmax_cross_entropy(x, w, labels, block_size=8)
    if head == "log_probs":
      return jnp.sum(jxent.linear_log_probs(x, w, labels, block_size=8))
    return jnp.sum(jxent.linear_kl_divergence_from_top_k(
        indices, teacher, x, w, block_size=8))

  def dots(argnums):
    return _count_dots(jax.make_jaxpr(jax.grad(loss, argnums))(x, w).jaxpr)

  both, x_only, w_only = dots((0, 1)), dots(0), dots(1)
  assert x_only < both and w_only < both, (x_only, w_only, both)
  grads = jax.grad(loss, (0, 1))(x, w)
  np.testing.assert_allclose(jax.grad(loss, 0)(x, w), grads[0], rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss, 1)(x, w), grads[1], rtol=1e-6)


def test_a_traced_temperature_or_beta_is_refused_with_the_rewrite(rng):
  prob = _problem(rng)
  p_x, p_w, q_x, q_w = (prob[k] for k in ("p_x", "p_w", "q_x", "q_w"))
  labels = _legal(prob["labels"])
  with pytest.raises(TypeError, match="x / T"):
    jax.jit(lambda t: jxent.linear_log_probs(p_x, p_w, labels,
                                             temperature=t))(2.0)
  with pytest.raises(TypeError, match="known at trace time"):
    jax.jit(lambda b: jxent.linear_js_divergence(p_x, p_w, q_x, q_w,
                                                 beta=b))(0.3)
  # The documented rewrite: without a soft cap, temperature T is the head
  # x / T, bias / T at temperature 1, and T may then be traced.
  bias = prob["p_bias"]
  want = jxent.linear_log_probs(p_x, p_w, labels, bias=bias,
                                temperature=2.0)
  got = jax.jit(lambda t: jxent.linear_log_probs(
      p_x / t, p_w, labels, bias=bias / t))(2.0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_log_sum_exp_nan_and_every_derivative_over_several_blocks(rng):
  # NaN in gives NaN out; grad, hessian and jvp-of-grad of the log-sum-exp
  # match float64 autodiff over three blocks; forward mode alone is a clear
  # error (the rule is a custom VJP).
  prob = _problem(rng)
  labels = _legal(prob["labels"])
  w, bias = prob["p_w"], prob["p_bias"]
  nan_x = prob["p_x"].at[2, 0].set(jnp.nan)
  _, lse = jxent.linear_log_probs(nan_x, w, labels, bias=bias,
                                  return_lse=True, block_size=16)
  assert np.isnan(lse[2]) and np.isfinite(np.delete(np.asarray(lse), 2)).all()
  x = prob["p_x"][:3]

  def fused(x):
    return jnp.sum(jxent.linear_log_probs(
        x, w, labels[:3], bias=bias, return_lse=True, block_size=16)[1])

  def reference(x):
    return jnp.sum(jax.nn.logsumexp(_logits(x, w.astype(x.dtype),
                                            bias.astype(x.dtype), None, 1.0),
                                    axis=1))

  v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  def derivatives(loss, x, v):
    return (jax.grad(loss)(x), jax.hessian(loss)(x),
            jax.jvp(jax.grad(loss), (x,), (v,))[1])

  # Under jit: compiled once, several times faster to test than op by op.
  got = jax.jit(functools.partial(derivatives, fused))(x, v)
  with jax.enable_x64(True):
    x64, v64 = (jnp.asarray(np.asarray(a, np.float64)) for a in (x, v))
    want = jax.jit(functools.partial(derivatives, reference))(x64, v64)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(fused, (x,), (v,))
