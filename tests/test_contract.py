"""One contract for the edges, as docs/conventions.md states it (issue 22).

Each test checks one rule of the conventions page ("Masked and empty rows
and tokens", "Reductions", "Derivatives"), on every function the rule
covers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import jxent
from jxent import sharded

TOKENS, DIM, VOCAB = 4, 3, 10
INDICES = jnp.array([[0, 4, 9], [1, 2, 3], [8, 5, 6], [7, 9, 0]])
TEACHER = jnp.log(jnp.array([[0.5, 0.3, 0.1]] * TOKENS))


def _head(rng):
  return (jnp.asarray(rng.normal(size=(TOKENS, DIM)), jnp.float32),
          jnp.asarray(rng.normal(size=(DIM, VOCAB)), jnp.float32))


def _empty_first_token(x, w):
  """Token 0's logits all -inf: a finite x[0] = -3e38 against w >= 1
  overflows every dot product to -inf."""
  return x.at[0].set(-3e38), jnp.abs(w) + 1.0


def _finite_grads(fn, *args):
  grads = jax.grad(lambda *a: jnp.sum(jnp.where(
      jnp.isinf(fn(*a)), 0, fn(*a))), range(len(args)))(*args)
  return all(np.isfinite(g).all() for g in grads), grads


# --- 1. default reductions ------------------------------------------------------


def test_default_reductions_are_the_documented_ones(rng):
  x, w = _head(rng)
  labels = jnp.array([1, 2, 3, 4])
  assert jxent.linear_softmax_cross_entropy(x, w, labels).shape == ()
  assert jxent.linear_kl_divergence(x, w, x, w).shape == (TOKENS,)
  assert jxent.linear_js_divergence(x, w, x, w).shape == (TOKENS,)
  assert jxent.linear_kl_divergence_from_top_k(
      INDICES, TEACHER, x, w).shape == (TOKENS,)
  assert jxent.softmax_cross_entropy_with_integer_labels(
      x @ w, labels).shape == (TOKENS,)


# --- 2. JS with an empty side, at every beta -------------------------------------


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("empty", ["p", "q"])
def test_js_with_an_empty_side(rng, beta, empty):
  x, w = _head(rng)
  ex, ew = _empty_first_token(x, w)
  p, q = ((ex, ew), (x, w)) if empty == "p" else ((x, w), (ex, ew))
  value = jxent.linear_js_divergence(*p, *q, beta=beta, block_size=4)
  # At beta 0 it is KL(P || Q), at 1 KL(Q || P): an empty second argument
  # against a live first is inf; otherwise an empty side gives 0.
  second_is_empty = (empty == "q") == (beta == 0.0)
  if beta in (0.0, 1.0) and second_is_empty:
    assert value[0] == np.inf
  else:
    assert value[0] == 0
  assert np.isfinite(value[1:]).all()
  ok, grads = _finite_grads(
      lambda a, b, c, d: jxent.linear_js_divergence(a, b, c, d, beta=beta,
                                                    block_size=4), *p, *q)
  assert ok
  np.testing.assert_array_equal(grads[0][0], 0.0)
  np.testing.assert_array_equal(grads[2][0], 0.0)


# --- 3. an empty student against a live teacher: inf, no gradient ---------------


@pytest.mark.parametrize("tail", ["renormalize", "bin"])
def test_top_k_empty_student_is_inf_with_no_gradient(rng, tail):
  x, w = _empty_first_token(*_head(rng))
  fn = lambda x, w: jxent.linear_kl_divergence_from_top_k(  # noqa: E731
      INDICES, TEACHER, x, w, tail=tail, block_size=4)
  value = fn(x, w)
  assert value[0] == np.inf and np.isfinite(value[1:]).all()
  assert jxent.linear_kl_divergence_from_top_k(
      INDICES, TEACHER, x, w, tail=tail, reduction="mean") == np.inf
  ok, (dx, _) = _finite_grads(fn, x, w)
  assert ok
  np.testing.assert_array_equal(dx[0], 0.0)
  # The dense KL agrees: a live P against an empty Q is inf.
  assert jxent.kl_divergence_from_logits(
      jnp.zeros((1, 4)), jnp.full((1, 4), -jnp.inf))[0] == np.inf


# --- 4. a teacher without mass, renormalised ------------------------------------


def test_renormalize_of_an_empty_teacher_is_an_empty_token(rng):
  x, w = _head(rng)
  teacher = TEACHER.at[1].set(-jnp.inf)
  fn = lambda x, w, r="none": jxent.linear_kl_divergence_from_top_k(  # noqa
      INDICES, teacher, x, w, tail="renormalize", reduction=r, block_size=4)
  value = fn(x, w)
  assert value[1] == 0 and np.isfinite(value).all()
  np.testing.assert_allclose(fn(x, w, "mean"), jnp.mean(value[jnp.array([0, 2, 3])]),
                             rtol=1e-6)
  ok, (dx, _) = _finite_grads(fn, x, w)
  assert ok
  np.testing.assert_array_equal(dx[1], 0.0)


# --- 5. a masked token's label is never looked at -------------------------------


def test_a_masked_row_or_token_ignores_its_label(rng):
  x, w = _head(rng)
  where = jnp.array([True, False, True, True])
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))
  # Each function takes the labels (or top-k indices) as an argument, so
  # one compilation serves every bad label.
  calls = {
      "softmax_cross_entropy_with_integer_labels": (
          lambda z, labels: jxent.softmax_cross_entropy_with_integer_labels(
              z, labels, where=where), x @ w),
      "linear_log_probs": (
          lambda w, labels: jxent.linear_log_probs(x, w, labels,
                                                   where=where), w),
      "linear_kl_divergence_from_top_k": (
          lambda w, labels: jxent.linear_kl_divergence_from_top_k(
              INDICES.at[1, 0].set(labels[1]), TEACHER, x, w, where=where),
          w),
      "sharded.softmax_cross_entropy_with_integer_labels": (
          lambda z, labels: jax.shard_map(
              lambda z: sharded.softmax_cross_entropy_with_integer_labels(
                  z, labels, "vocab", where=where[:, None]),
              mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())(z),
          x @ w),
  }
  for name, (fn, arg) in calls.items():
    value_fn = jax.jit(fn)
    grad_fn = jax.jit(jax.grad(lambda a, labels: jnp.sum(fn(a, labels))))
    checked_fn = jax.jit(jxent.checked(fn))
    for label in (-100, VOCAB, 2**31 - 1):
      labels = jnp.array([1, label, 3, 4])
      value = value_fn(arg, labels)
      assert value[1] == 0 and np.isfinite(value).all(), (name, label)
      assert np.isfinite(grad_fn(arg, labels)).all(), (name, label)
      checked_fn(arg, labels)  # raises nothing
  # Not masked, such a label is NaN, as ever.
  assert np.isnan(jxent.softmax_cross_entropy_with_integer_labels(
      x @ w, jnp.array([1, VOCAB, 3, 4]))[1])


# --- 6. a masked token's inputs are ignored, NaN included -----------------------


def test_nan_in_a_masked_tokens_inputs_reaches_no_gradient(rng):
  x, w = _head(rng)
  x = x.at[1].set(jnp.nan)
  labels = jnp.array([1, 2, 3, 4])
  where = jnp.array([True, False, True, True])
  fns = {
      "linear_log_probs": lambda x, w: jxent.linear_log_probs(
          x, w, labels, where=where, return_entropy=True, block_size=4)[1],
      "linear_kl_divergence": lambda x, w: jxent.linear_kl_divergence(
          x, w, x, w + 1, where=where, block_size=4),
      "linear_js_divergence": lambda x, w: jxent.linear_js_divergence(
          x, w, x, w + 1, where=where, block_size=4),
      "linear_kl_divergence_from_top_k":
          lambda x, w: jxent.linear_kl_divergence_from_top_k(
              INDICES, TEACHER, x, w, where=where, block_size=4),
      "linear_softmax_cross_entropy (ignore_index)":
          lambda x, w: jxent.linear_softmax_cross_entropy(
              x, w, labels.at[1].set(-100), ignore_index=-100,
              reduction="none", block_size=4),
  }
  for name, fn in fns.items():
    value = fn(x, w)
    assert value[1] == 0 and np.isfinite(value).all(), name
    dx, dw = jax.grad(lambda x, w: jnp.sum(fn(x, w)), (0, 1))(x, w)
    assert np.isfinite(dw).all(), name
    np.testing.assert_array_equal(dx[1], 0.0)


# --- 7. a -inf bias survives the soft cap --------------------------------------


def test_a_minus_inf_bias_stays_masked_under_the_soft_cap(rng):
  x, w = _head(rng)
  bias = jnp.zeros(VOCAB).at[-3:].set(-jnp.inf)   # three padded columns
  labels = jnp.array([1, 2, 3, 4])
  kw = dict(label_smoothing=0.2, logit_softcap=2.0, reduction="none")
  fused = jxent.linear_softmax_cross_entropy(x, w, labels, bias=bias,
                                             block_size=4, **kw)
  # The same loss over the live columns only: the padding takes no part.
  live = jxent.linear_softmax_cross_entropy(x, w[:, :-3], labels,
                                            block_size=4, **kw)
  np.testing.assert_allclose(fused, live, rtol=1e-6)
  log_q = jxent.linear_log_probs(x, w, jnp.full((TOKENS,), VOCAB - 1),
                                 bias=bias, logit_softcap=2.0, block_size=4)
  assert (log_q == -np.inf).all()


# --- 8. duplicate top-k indices ------------------------------------------------


def test_duplicate_top_k_indices_are_refused(rng):
  x, w = _head(rng)
  indices = INDICES.at[2, 1].set(INDICES[2, 0])
  fn = lambda x: jxent.linear_kl_divergence_from_top_k(  # noqa: E731
      indices, TEACHER, x, w, block_size=4)
  value = fn(x)
  assert np.isnan(value[2]) and np.isfinite(np.delete(np.asarray(value), 2)).all()
  with pytest.raises(Exception, match="must be distinct within a token"):
    jxent.checked(fn)(x)


# --- 9. mixed second derivatives agree ------------------------------------------


def test_mixed_second_derivatives_agree_at_an_impossible_class():
  with jax.enable_x64(True):
    z = jnp.array([0.5, -jnp.inf, 1.0, 0.2])
    t = jnp.array([0.3, 0.0, 0.5, 0.2])
    f = lambda z, t: jxent.softmax_cross_entropy(z, t)  # noqa: E731
    d_t_of_dz = jax.jacfwd(jax.grad(f, 0), 1)(z, t)
    d_z_of_dt = jax.jacfwd(jax.grad(f, 1), 0)(z, t)
    np.testing.assert_allclose(d_t_of_dz, d_z_of_dt.T, atol=1e-15)
    assert d_t_of_dz[1, 1] == 0 and (d_t_of_dz[:, 1] == 0).all()
    # Away from -inf they agree too, and are not all 0.
    z = z.at[1].set(-3.0)
    np.testing.assert_allclose(jax.jacfwd(jax.grad(f, 0), 1)(z, t),
                               jax.jacfwd(jax.grad(f, 1), 0)(z, t).T,
                               atol=1e-15)


# --- 10. the sharded losses have no implementation ------------------------------


def test_the_sharded_losses_take_no_implementation():
  with pytest.raises(TypeError, match="implementation"):
    sharded.softmax_cross_entropy_with_integer_labels(
        jnp.zeros((2, 4)), jnp.zeros((2,), jnp.int32), "vocab",
        implementation="triton")
