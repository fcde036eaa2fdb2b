"""Tests for information, entropy, cross-entropy and the divergences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jxent

# Float32 results against float64 references (relative, absolute).
TOL32 = dict(rtol=2e-5, atol=2e-6)


def _simplex(rng, shape, zeros=False):
  p = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
  if zeros:
    p[..., ::3] = 0.0
    p /= p.sum(-1, keepdims=True)
  return p


# --- worked examples ----------------------------------------------------


def test_fair_coin_heads_carries_one_bit():
  np.testing.assert_allclose(jxent.information(jnp.array(0.5), base=2), 1.0)
  np.testing.assert_allclose(
      jxent.entropy(jnp.array([0.5, 0.5]), base=2), 1.0)


def test_die_landing_six_carries_log2_6_bits():
  bits = jxent.information(jnp.array(1 / 6), base=2)
  np.testing.assert_allclose(bits, np.log2(6), rtol=1e-6)
  np.testing.assert_allclose(bits, 2.585, atol=5e-4)


def test_cross_entropy_of_the_classifier_example():
  p = jnp.array([1.0, 0.0, 0.0, 0.0])
  q = jnp.array([0.7, 0.1, 0.05, 0.15])
  np.testing.assert_allclose(jxent.cross_entropy(p, q), -np.log(0.7),
                             rtol=1e-6)
  np.testing.assert_allclose(jxent.cross_entropy(p, q), 0.3567, atol=5e-5)


def test_kl_divergence_is_not_symmetric():
  p, q = jnp.array([0.9, 0.1]), jnp.array([0.5, 0.5])
  forward, backward = jxent.kl_divergence(p, q), jxent.kl_divergence(q, p)
  np.testing.assert_allclose(forward, scipy.special.rel_entr(
      [0.9, 0.1], [0.5, 0.5]).sum(), rtol=1e-6)
  np.testing.assert_allclose(backward, scipy.special.rel_entr(
      [0.5, 0.5], [0.9, 0.1]).sum(), rtol=1e-6)
  assert abs(float(forward) - float(backward)) > 0.1


# --- float64 references ---------------------------------------------------


@pytest.mark.parametrize("base", [None, 2, 10, 0.5])
@pytest.mark.parametrize("zeros", [False, True])
def test_entropy_matches_scipy(rng, base, zeros):
  p = _simplex(rng, (5, 7), zeros)
  expected = scipy.stats.entropy(p, base=base, axis=-1)
  np.testing.assert_allclose(
      jxent.entropy(jnp.asarray(p, jnp.float32), base=base), expected, **TOL32)


@pytest.mark.parametrize("zeros", [False, True])
def test_cross_entropy_and_kl_match_scipy(rng, zeros):
  p, q = _simplex(rng, (5, 7), zeros), _simplex(rng, (5, 7))
  p32, q32 = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
  np.testing.assert_allclose(
      jxent.kl_divergence(p32, q32), scipy.special.rel_entr(p, q).sum(-1),
      **TOL32)
  np.testing.assert_allclose(
      jxent.kl_divergence(p32, q32, base=2),
      scipy.stats.entropy(p, q, base=2, axis=-1), **TOL32)
  np.testing.assert_allclose(
      jxent.cross_entropy(p32, q32), -(scipy.special.xlogy(p, q)).sum(-1),
      **TOL32)


def test_js_divergence_matches_scipy(rng):
  p, q = _simplex(rng, (4, 6), True), _simplex(rng, (4, 6))
  expected = scipy.spatial.distance.jensenshannon(p, q, axis=-1, base=2) ** 2
  out = jxent.js_divergence(jnp.asarray(p, jnp.float32),
                            jnp.asarray(q, jnp.float32), base=2)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-6)
  assert np.all(np.asarray(out) <= 1.0 + 1e-6)


@pytest.mark.parametrize("dtype, tol", [(jnp.float32, 2e-5),
                                        (jnp.bfloat16, 2e-5)])
def test_from_logits_match_scipy(rng, dtype, tol):
  zp = jnp.asarray(rng.normal(scale=3, size=(4, 9)), dtype)
  zq = jnp.asarray(rng.normal(scale=3, size=(4, 9)), dtype)
  # The reference sees the same (rounded) inputs, so only accumulation
  # error remains, and that is float32 for every input dtype.
  lp = scipy.special.log_softmax(np.asarray(zp, np.float64), -1)
  lq = scipy.special.log_softmax(np.asarray(zq, np.float64), -1)
  p = np.exp(lp)
  for out, expected in [
      (jxent.entropy_from_logits(zp), -(p * lp).sum(-1)),
      (jxent.cross_entropy_from_logits(zp, zq), -(p * lq).sum(-1)),
      (jxent.kl_divergence_from_logits(zp, zq), (p * (lp - lq)).sum(-1)),
  ]:
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)


# --- edges ---------------------------------------------------------------


def test_zero_probabilities_give_finite_values_and_gradients():
  p = jnp.array([0.5, 0.5, 0.0])
  q = jnp.array([0.5, 0.5, 0.0])
  for fn in (jxent.kl_divergence, jxent.cross_entropy, jxent.js_divergence):
    value, grads = jax.value_and_grad(fn, argnums=(0, 1))(p, q)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads), fn.__name__
  value, grad = jax.value_and_grad(jxent.entropy)(p)
  assert np.isfinite(value) and np.isfinite(grad).all()


def test_impossible_outcome_under_q_costs_infinite_information():
  p, q = jnp.array([0.5, 0.5]), jnp.array([1.0, 0.0])
  assert jxent.cross_entropy(p, q) == np.inf
  assert jxent.kl_divergence(p, q) == np.inf
  assert jxent.information(jnp.array(0.0)) == np.inf


def test_negative_probability_gives_nan_not_a_number():
  assert np.isnan(jxent.entropy(jnp.array([1.2, -0.2])))
  assert np.isnan(jxent.kl_divergence(jnp.array([1.2, -0.2]),
                                      jnp.array([0.5, 0.5])))


def test_masked_minus_inf_logits_are_finite_with_finite_gradients():
  z = jnp.array([[0.0, -jnp.inf, 1.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
  zq = jnp.array([[1.0, -jnp.inf, 0.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
  for fn, args in [(jxent.entropy_from_logits, (z,)),
                   (jxent.kl_divergence_from_logits, (z, zq)),
                   (jxent.cross_entropy_from_logits, (z, zq))]:
    value, grads = jax.value_and_grad(
        lambda *a, fn=fn: fn(*a).sum(), argnums=tuple(range(len(args))))(
            *args)
    assert np.isfinite(value)
    assert all(np.isfinite(g).all() for g in grads)
  # The fully masked row is empty: nothing to be uncertain about.
  np.testing.assert_array_equal(jxent.entropy_from_logits(z)[1], 0.0)


def test_where_excludes_classes():
  p = jnp.array([0.5, 0.5, 0.25])
  mask = jnp.array([True, True, False])
  np.testing.assert_allclose(jxent.entropy(p, where=mask, base=2), 1.0)
  z = jnp.array([0.0, 0.0, 100.0])
  np.testing.assert_allclose(
      jxent.entropy_from_logits(z, where=mask, base=2), 1.0)
  np.testing.assert_allclose(
      jxent.kl_divergence_from_logits(z, jnp.array([0.0, 0.0, -5.0]),
                                      where=mask), 0.0, atol=1e-7)


@pytest.mark.parametrize("axis", [0, 1, (0, 2)])
def test_class_axis_anywhere(rng, axis):
  z = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  zq = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  axes = axis if isinstance(axis, tuple) else (axis,)
  moved = jnp.moveaxis(z, axes, range(-len(axes), 0))
  moved_q = jnp.moveaxis(zq, axes, range(-len(axes), 0))
  flat = moved.reshape(moved.shape[: 3 - len(axes)] + (-1,))
  flat_q = moved_q.reshape(flat.shape)
  np.testing.assert_allclose(jxent.kl_divergence_from_logits(z, zq, axis),
                             jxent.kl_divergence_from_logits(flat, flat_q),
                             rtol=1e-5, atol=1e-6)


def test_jit_vmap_and_grad_agree(rng):
  p = jnp.asarray(_simplex(rng, (6, 5)), jnp.float32)
  q = jnp.asarray(_simplex(rng, (6, 5)), jnp.float32)
  eager = jxent.kl_divergence(p, q)
  np.testing.assert_allclose(jax.jit(jxent.kl_divergence)(p, q), eager,
                             rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(jxent.kl_divergence)(p, q), eager,
                             rtol=1e-6)
  grad = jax.grad(lambda q: jxent.kl_divergence(p, q).sum())(q)
  np.testing.assert_allclose(grad, -p / q, rtol=1e-5)


def test_broadcasting_and_shape_errors():
  p = jnp.array([0.5, 0.5])
  q = jnp.array([[0.5, 0.5], [0.9, 0.1]])
  assert jxent.kl_divergence(p, q).shape == (2,)
  with pytest.raises(ValueError, match=r"\(3,\).*\(2, 2\)"):
    jxent.kl_divergence(jnp.ones(3) / 3, q)


@pytest.mark.parametrize("base", [0, -2, 1, 1.0])
def test_bad_base_is_a_value_error(base):
  with pytest.raises(ValueError, match="base"):
    jxent.entropy(jnp.array([0.5, 0.5]), base=base)


def test_integer_probabilities_are_a_type_error():
  with pytest.raises(TypeError, match="floating"):
    jxent.entropy(jnp.array([1, 0]))


# --- laws ------------------------------------------------------------------

logits_rows = hnp.arrays(
    np.float32, (3, 5),
    elements=st.floats(-30, 30, width=32, allow_nan=False))


@given(logits_rows, logits_rows)
def test_cross_entropy_is_entropy_plus_kl(zp, zq):
  h_pq = jxent.cross_entropy_from_logits(zp, zq)
  h_p = jxent.entropy_from_logits(zp)
  kl = jxent.kl_divergence_from_logits(zp, zq)
  np.testing.assert_allclose(h_pq, h_p + kl, rtol=1e-4, atol=1e-4)


@given(logits_rows, logits_rows)
def test_kl_is_nonnegative_and_zero_only_at_p_equals_q(zp, zq):
  kl = np.asarray(jxent.kl_divergence_from_logits(zp, zq))
  assert np.all(kl >= -1e-6)
  np.testing.assert_allclose(jxent.kl_divergence_from_logits(zp, zp), 0.0,
                             atol=1e-6)
  p, q = scipy.special.softmax(zp.astype(np.float64), -1), \
      scipy.special.softmax(zq.astype(np.float64), -1)
  differ = np.abs(p - q).max(-1) > 1e-2
  assert np.all(kl[differ] > 0)


def _float64_pair(kind, zp, zq):
  lp = scipy.special.log_softmax(zp.astype(np.float64), -1)
  lq = scipy.special.log_softmax(zq.astype(np.float64), -1)
  p = np.exp(lp)
  terms = p * ((lp - lq) if kind == "kl" else -lq)
  return np.where(p > 0, terms, 0).sum(-1)


def _ruled_out(zp, zq):
  """Rows where P has float32 mass on a class Q's float32 shift rules out."""
  with np.errstate(over="ignore"):
    sq = zq - zq.max(-1, keepdims=True)
    mass = np.exp(zp - zp.max(-1, keepdims=True)) > 0
  return (mass & np.isinf(sq)).any(-1)


extreme_rows = hnp.arrays(
    np.float32, (2, 4),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=32))


@given(extreme_rows)
def test_extreme_logits_give_finite_results_where_the_exact_value_fits(z):
  # Any finite float32 logits. The entropy is at most log C; a KL or
  # cross-entropy is finite (saturating at the float32 maximum) unless P
  # has mass on a class more than the float32 range below Q's maximum, which
  # Q's float32 shift rules out; then it is inf, never NaN.
  z = np.asarray(z)
  top = np.finfo(np.float32).max
  value, grad = jax.value_and_grad(
      lambda a: jxent.entropy_from_logits(a).sum())(jnp.asarray(z))
  assert np.isfinite(value) and np.isfinite(grad).all()
  for kind, fn in (("kl", jxent.kl_divergence_from_logits),
                   ("cross_entropy", jxent.cross_entropy_from_logits)):
    rows = np.asarray(fn(z, z[::-1]))
    ruled_out = _ruled_out(z, z[::-1])
    assert np.all(rows[ruled_out] == np.inf)
    want = np.minimum(_float64_pair(kind, z, z[::-1]), top)
    np.testing.assert_allclose(rows[~ruled_out], want[~ruled_out],
                               rtol=1e-5, atol=1e-4)
    if not ruled_out.any():
      grad = jax.grad(lambda a, fn=fn: fn(a, a[::-1]).sum())(jnp.asarray(z))
      assert np.isfinite(grad).all()


def test_kl_one_rounding_below_the_float32_maximum_is_finite():
  # Regression: the exact KL of the first row is 0.3 units in the last
  # place below the float32 maximum; the division and multiplication by the
  # number of classes rounded it past, to inf, and the gradient to -inf.
  # The hypothesis test above found it.
  z = np.array([[0, -16, 1, 1], [1, 3.4028235e38, 1, 1]], np.float32)
  value, grad = jax.value_and_grad(
      lambda a: jxent.kl_divergence_from_logits(a, a[::-1]).sum())(
          jnp.asarray(z))
  assert np.isfinite(value) and np.isfinite(grad).all()
  np.testing.assert_allclose(
      jxent.kl_divergence_from_logits(z, z[::-1]),
      np.minimum(_float64_pair("kl", z, z[::-1]), np.finfo(np.float32).max),
      rtol=1e-6)


# --- regressions of the core second pass (issue 11) ------------------------


def test_nan_logit_gives_nan_entropy_and_divergences():
  # Issue 11, defect 1: entropy_from_logits([1, nan, .5]) gave -3.54.
  x = jnp.array([1.0, jnp.nan, 0.5])
  assert np.isnan(jxent.entropy_from_logits(x))
  assert np.isnan(jxent.kl_divergence_from_logits(x, jnp.zeros(3)))
  assert np.isnan(jxent.kl_divergence_from_logits(jnp.zeros(3), x))
  assert np.isnan(jxent.cross_entropy_from_logits(jnp.zeros(3), x))
  grad = jax.grad(jxent.entropy_from_logits)(x)
  assert np.isnan(grad).all()


def test_zero_length_class_axis_gives_zero():
  # Issue 11, defect 4.
  x = jnp.zeros((2, 0))
  np.testing.assert_array_equal(jxent.entropy_from_logits(x), 0.0)
  np.testing.assert_array_equal(jxent.kl_divergence_from_logits(x, x), 0.0)
  np.testing.assert_array_equal(jxent.cross_entropy_from_logits(x, x), 0.0)


def _float64_kl(p, q):
  lp, lq = jax.nn.log_softmax(p), jax.nn.log_softmax(q)
  return (jnp.exp(lp) * (lp - lq)).sum(-1)


def _float64_ce(p, q):
  return -(jax.nn.softmax(p) * jax.nn.log_softmax(q)).sum(-1)


def _float64_entropy(z):
  lp = jax.nn.log_softmax(z)
  return -(jnp.exp(lp) * lp).sum(-1)


DERIVATIVES = {
    "grad": lambda f, x: jax.grad(lambda x: f(x).sum())(x),
    "jvp": lambda f, x: jax.jvp(f, (x,), (jnp.cos(3 * x),))[1],
    "jacfwd": lambda f, x: jax.jacfwd(f)(x),
    "hessian": lambda f, x: jax.hessian(lambda x: f(x).sum())(x),
}


@pytest.mark.parametrize("mode", DERIVATIVES)
@pytest.mark.parametrize("which", ["entropy", "kl_p", "kl_q", "ce_p", "ce_q"])
def test_every_derivative_matches_float64_autodiff(rng, mode, which):
  with jax.enable_x64(True):
    a = jnp.asarray(rng.normal(size=(3, 6)) * 2)
    b = jnp.asarray(rng.normal(size=(3, 6)) * 2)
    f32 = lambda v: v.astype(jnp.float32)
    fns = {
        "entropy": (lambda v: jxent.entropy_from_logits(f32(v)),
                    _float64_entropy),
        "kl_p": (lambda v: jxent.kl_divergence_from_logits(f32(v), f32(b)),
                 lambda v: _float64_kl(v, b)),
        "kl_q": (lambda v: jxent.kl_divergence_from_logits(f32(b), f32(v)),
                 lambda v: _float64_kl(b, v)),
        "ce_p": (lambda v: jxent.cross_entropy_from_logits(f32(v), f32(b)),
                 lambda v: _float64_ce(v, b)),
        "ce_q": (lambda v: jxent.cross_entropy_from_logits(f32(b), f32(v)),
                 lambda v: _float64_ce(b, v)),
    }
    got_fn, want_fn = fns[which]
    np.testing.assert_allclose(DERIVATIVES[mode](got_fn, a),
                               DERIVATIVES[mode](want_fn, a),
                               rtol=5e-5, atol=5e-6)


def test_kl_of_large_finite_logits_does_not_overflow():
  # Regression (issue 19): E_p[z_p - z_q] was summed before it was divided
  # by the sum of P's exponentials, and 3 x 1.7e38 overflowed to inf; the
  # true value, 1.275e38, fits in float32. The hypothesis test
  # hypothesis test (then test_everything_finite_for_extreme_logits) found it.
  q = jnp.array([[1.7e38, 0.0, 0.0, 0.0]], jnp.float32)
  p = jnp.zeros((1, 4), jnp.float32)
  # P is uniform; log Q is 0 on class 0 and -1.7e38 on the others (the
  # log-sum-exp of Q is 0 to float precision): both are 3/4 x 1.7e38.
  want = 0.75 * 1.7e38
  for fn in (jxent.kl_divergence_from_logits, jxent.cross_entropy_from_logits):
    value = fn(p, q)
    assert np.isfinite(value).all()
    np.testing.assert_allclose(value, [want], rtol=1e-6)
  grad = jax.grad(lambda q: jnp.sum(jxent.kl_divergence_from_logits(p, q)))(q)
  np.testing.assert_allclose(grad, [[0.75, -0.25, -0.25, -0.25]], rtol=1e-6)
