"""Tests for the stable primitives: logsumexp, log_softmax, softmax."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import jxent

# Worst-case relative error against float64, per input dtype.
RTOL = {jnp.float32: 2e-6, jnp.bfloat16: 1e-2, jnp.float16: 2e-3}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("axis", [-1, 0, (0, 2)])
def test_logsumexp_matches_scipy(rng, dtype, axis):
  x = rng.normal(scale=5, size=(3, 4, 5))
  x_in = jnp.asarray(x, dtype)
  expected = scipy.special.logsumexp(np.asarray(x_in, np.float64), axis=axis)
  out = jxent.logsumexp(x_in, axis=axis)
  # 16-bit inputs are accumulated and returned in float32.
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_softmax_and_log_softmax_match_scipy_and_keep_dtype(rng, dtype):
  x = jnp.asarray(rng.normal(scale=3, size=(4, 6)), dtype)
  x64 = np.asarray(x, np.float64)
  log_sm = jxent.log_softmax(x)
  sm = jxent.softmax(x)
  assert log_sm.dtype == dtype and sm.dtype == dtype
  np.testing.assert_allclose(
      np.asarray(log_sm, np.float64), scipy.special.log_softmax(x64, -1),
      rtol=RTOL[dtype], atol=RTOL[dtype])
  np.testing.assert_allclose(
      np.asarray(sm, np.float64), scipy.special.softmax(x64, -1),
      rtol=RTOL[dtype], atol=RTOL[dtype])


def test_logsumexp_of_huge_logits_does_not_overflow():
  x = jnp.array([1e30, 1e30, -1e30], jnp.float32)
  np.testing.assert_allclose(jxent.logsumexp(x), 1e30, rtol=1e-7)
  np.testing.assert_allclose(
      jxent.softmax(jnp.array([1000.0, 1000.0])), [0.5, 0.5])


def test_all_masked_row_gives_minus_inf_and_zero_gradient():
  x = jnp.array([[1.0, 2.0, 3.0], [-jnp.inf, -jnp.inf, -jnp.inf]])
  out = jxent.logsumexp(x)
  assert out[1] == -jnp.inf and np.isfinite(out[0])
  grad = jax.grad(lambda x: jnp.where(jnp.isfinite(jxent.logsumexp(x)),
                                      jxent.logsumexp(x), 0).sum())(x)
  np.testing.assert_array_equal(grad[1], 0.0)
  assert not np.isnan(jxent.log_softmax(x)).any()
  np.testing.assert_array_equal(jxent.softmax(x)[1], 0.0)


def test_where_masks_before_exp():
  x = jnp.array([0.0, 1e38, 0.0])
  mask = jnp.array([True, False, True])
  np.testing.assert_allclose(jxent.logsumexp(x, where=mask), np.log(2))
  np.testing.assert_allclose(jxent.softmax(x, where=mask), [0.5, 0, 0.5])
  grad = jax.grad(lambda x: jxent.logsumexp(x, where=mask))(x)
  np.testing.assert_allclose(grad, [0.5, 0.0, 0.5])


def test_keepdims_and_gradient_is_softmax(rng):
  x = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
  assert jxent.logsumexp(x, keepdims=True).shape == (2, 1)
  grad = jax.grad(lambda x: jxent.logsumexp(x).sum())(x)
  np.testing.assert_allclose(grad, scipy.special.softmax(
      np.asarray(x, np.float64), -1), rtol=1e-5)


def test_primitives_reject_integer_input():
  with pytest.raises(TypeError, match="floating"):
    jxent.logsumexp(jnp.arange(3))
  with pytest.raises(ValueError, match="out of range"):
    jxent.softmax(jnp.zeros(3), axis=2)


# --- regressions of the core second pass (issue 11) ------------------------


def test_nan_anywhere_in_a_row_makes_it_nan():
  # Issue 11, defect 1: logsumexp([1, nan, .5]) gave -inf and softmax kept
  # the finite entries.
  x = jnp.array([1.0, jnp.nan, 0.5])
  assert np.isnan(jxent.logsumexp(x))
  assert np.isnan(jxent.softmax(x)).all()
  assert np.isnan(jxent.log_softmax(x)).all()
  # A NaN on a class masked by `where` is ignored.
  where = jnp.array([True, False, True])
  np.testing.assert_allclose(jxent.logsumexp(x, where=where),
                             scipy.special.logsumexp([1.0, 0.5]), rtol=1e-6)


def test_zero_length_axis_gives_minus_inf_as_scipy():
  # Issue 11, defect 4: the max of a zero-length axis raised.
  x = jnp.zeros((3, 0))
  np.testing.assert_array_equal(jxent.logsumexp(x), [-np.inf] * 3)
  np.testing.assert_array_equal(scipy.special.logsumexp(np.zeros((3, 0)),
                                                        axis=-1), -np.inf)
  assert jxent.softmax(x).shape == (3, 0)
