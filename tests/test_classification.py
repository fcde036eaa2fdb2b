"""Tests for the training losses and their custom VJPs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.special
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import jxent
from jxent._numerics import softmax_rows

int_ce = jxent.softmax_cross_entropy_with_integer_labels
soft_ce = jxent.softmax_cross_entropy


def reference_int_ce(logits, labels, *, weight=None, smoothing=0.0,
                     ignore_index=None, z_loss=0.0, mask=None):
  """PyTorch's documented cross_entropy, in float64, plus z-loss and masks.

  Returns the per-row losses and the per-row weights that "mean" divides by.
  """
  x = np.asarray(logits, np.float64)
  if mask is not None:
    x = np.where(mask, x, -np.inf)
  num_classes = x.shape[-1]
  w = np.ones(num_classes) if weight is None else np.asarray(weight,
                                                              np.float64)
  lse = scipy.special.logsumexp(x, axis=-1)
  log_q = x - lse[..., None]
  valid = x > -np.inf
  safe = np.clip(labels, 0, num_classes - 1)
  nll = -np.take_along_axis(log_q, safe[..., None], -1)[..., 0]
  smooth = -np.where(valid, w * np.where(valid, log_q, 0), 0).sum(-1)
  loss = ((1 - smoothing) * w[safe] * nll
          + smoothing / valid.sum(-1) * smooth + z_loss * lse**2)
  keep = np.ones(labels.shape, bool) if ignore_index is None else (
      labels != ignore_index)
  return np.where(keep, loss, 0.0), np.where(keep, w[safe], 0.0)


def _problem(rng, batch=6, classes=7, scale=3.0):
  logits = jnp.asarray(rng.normal(scale=scale, size=(batch, classes)),
                       jnp.float32)
  labels = jnp.asarray(rng.integers(0, classes, size=batch), jnp.int32)
  return logits, labels


# --- worked example and references ------------------------------------


def test_classifier_example_is_minus_log_0_7():
  logits = jnp.log(jnp.array([[0.7, 0.1, 0.05, 0.15]]))
  np.testing.assert_allclose(int_ce(logits, jnp.array([0])), -np.log(0.7),
                             rtol=1e-6)
  np.testing.assert_allclose(
      soft_ce(logits, jnp.array([[1.0, 0.0, 0.0, 0.0]])), -np.log(0.7),
      rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_integer_labels_match_float64_reference(rng, smoothing, weighted,
                                                z_loss):
  logits, labels = _problem(rng)
  weight = rng.uniform(0.5, 2.0, size=7) if weighted else None
  labels = labels.at[1].set(-100)
  expected, row_weight = reference_int_ce(
      logits, np.asarray(labels), weight=weight, smoothing=smoothing,
      ignore_index=-100, z_loss=z_loss)
  kwargs = dict(ignore_index=-100, label_smoothing=smoothing, z_loss=z_loss,
                class_weights=None if weight is None else
                jnp.asarray(weight, jnp.float32))
  np.testing.assert_allclose(int_ce(logits, labels, **kwargs), expected,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(int_ce(logits, labels, reduction="sum",
                                    **kwargs), expected.sum(), rtol=1e-5)
  np.testing.assert_allclose(int_ce(logits, labels, reduction="mean",
                                    **kwargs),
                             expected.sum() / row_weight.sum(), rtol=1e-5)


def test_matches_optax_on_its_own_ground(rng):
  logits, labels = _problem(rng)
  np.testing.assert_allclose(
      int_ce(logits, labels),
      optax.softmax_cross_entropy_with_integer_labels(logits, labels),
      rtol=1e-6, atol=1e-6)
  soft = jax.nn.softmax(jnp.asarray(rng.normal(size=(6, 7)), jnp.float32))
  np.testing.assert_allclose(soft_ce(logits, soft),
                             optax.softmax_cross_entropy(logits, soft),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_agrees_with_pytorch(rng, reduction):
  torch = pytest.importorskip("torch")
  logits, labels = _problem(rng, batch=8)
  labels = labels.at[2].set(-100)
  weight = rng.uniform(0.5, 2.0, size=7).astype(np.float32)
  expected = torch.nn.functional.cross_entropy(
      torch.tensor(np.asarray(logits)), torch.tensor(np.asarray(labels),
                                                     dtype=torch.long),
      weight=torch.tensor(weight), ignore_index=-100, label_smoothing=0.2,
      reduction=reduction).numpy()
  out = int_ce(logits, labels, ignore_index=-100, label_smoothing=0.2,
               class_weights=jnp.asarray(weight), reduction=reduction)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def test_sigmoid_binary_cross_entropy_matches_reference(rng):
  x = rng.normal(scale=4, size=(5, 3))
  y = rng.uniform(size=(5, 3))
  pw = np.array([1.0, 2.0, 0.5])
  log_sig = -np.logaddexp(0, -x)
  log_one_minus = -np.logaddexp(0, x)
  expected = -(pw * y * log_sig + (1 - y) * log_one_minus)
  out = jxent.sigmoid_binary_cross_entropy(
      jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
      pos_weight=jnp.asarray(pw, jnp.float32))
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      jxent.sigmoid_binary_cross_entropy(
          jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
          reduction="mean"),
      (-(y * log_sig + (1 - y) * log_one_minus)).mean(), rtol=1e-5)


def test_sigmoid_binary_cross_entropy_is_finite_at_infinite_logits():
  x = jnp.array([jnp.inf, -jnp.inf, 1e30])
  y = jnp.array([1.0, 0.0, 1.0])
  value, grad = jax.value_and_grad(
      lambda x: jxent.sigmoid_binary_cross_entropy(x, y).sum())(x)
  assert value == 0.0 and np.isfinite(grad).all()


# --- numerics users expect --------------------------------------------


def test_huge_equal_logits_give_log_num_classes():
  for classes in (3, 1000):
    logits = jnp.full((2, classes), 1e8, jnp.float32)
    np.testing.assert_allclose(int_ce(logits, jnp.array([0, 1])),
                               np.log(classes), rtol=1e-6)
    grad = jax.grad(lambda x: int_ce(x, jnp.array([0, 1])).sum())(logits)
    np.testing.assert_allclose(grad[0, 1:], 1 / classes, rtol=1e-5)


def test_masked_logit_with_zero_label_is_finite():
  logits = jnp.array([[2.0, -jnp.inf, 0.5]])
  labels = jnp.array([[1.0, 0.0, 0.0]])
  for fn, lab in [(int_ce, jnp.array([0])), (soft_ce, labels)]:
    for smoothing in (0.0, 0.1):
      value, grad = jax.value_and_grad(
          lambda x, fn=fn, lab=lab, s=smoothing:
          fn(x, lab, label_smoothing=s).sum())(logits)
      assert np.isfinite(value) and np.isfinite(grad).all()
      assert grad[0, 1] == 0.0
  # optax's soft-label loss gives NaN here: 0 * -inf.
  assert np.isnan(optax.softmax_cross_entropy(logits, labels)).all()


def test_a_label_on_an_impossible_class_has_no_gradient_there():
  # The label's logit is -inf: the loss is inf, that class's gradient 0 (as
  # every impossible class's), the others the softmax. An illegal label's
  # row is NaN on its possible classes and 0 on the impossible ones. On a
  # CPU, float32 takes the pass that reads the kept exp alone.
  logits = jnp.array([[2.0, -jnp.inf, 0.5], [1.0, -jnp.inf, 3.0]])
  labels = jnp.array([1, 7])
  loss = int_ce(logits, labels)
  assert loss[0] == jnp.inf and np.isnan(loss[1])
  grad = jax.grad(lambda x: int_ce(x, labels[:1]).sum())(logits[:1])
  q = jax.nn.softmax(logits[0])
  np.testing.assert_allclose(grad[0], np.asarray(q), rtol=1e-6)
  assert grad[0, 1] == 0
  grad = jax.grad(lambda x: int_ce(x, labels[1:]).sum())(logits[1:])
  assert np.isnan(grad[0, [0, 2]]).all() and grad[0, 1] == 0



def test_a_nan_row_keeps_its_masked_classes_at_zero_gradient():
  # NaN in gives NaN out on the row's classes that take part; a masked class
  # still gets exactly 0, as the docstring promises.
  logits = jnp.array([[1.0, 2.0, jnp.nan, 3.0]])
  where = jnp.array([[False, True, True, True]])
  for labels in (jnp.array([3]), jnp.array([9])):  # legal, illegal
    grad = jax.grad(lambda x: int_ce(x, labels, where=where).sum())(logits)
    assert grad[0, 0] == 0 and np.isnan(grad[0, 1:]).all()


@pytest.mark.parametrize("use_where", [True, False])
def test_fully_masked_row_gives_zero_loss_and_zero_gradient(use_where):
  logits = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
  if use_where:
    where = jnp.array([[True, True, True], [False, False, False]])
  else:
    logits = logits.at[1].set(-jnp.inf)
    where = None
  labels = jnp.array([0, 1])
  soft = jnp.array([[1.0, 0, 0], [0, 1.0, 0]])
  for fn, lab in [(int_ce, labels), (soft_ce, soft)]:
    loss_fn = lambda x, fn=fn, lab=lab: fn(
        x, lab, where=where, label_smoothing=0.1, z_loss=1e-3,
        reduction="mean")
    value, grad = jax.value_and_grad(loss_fn)(logits)
    row = fn(logits, lab, where=where, label_smoothing=0.1, z_loss=1e-3)
    assert row[1] == 0.0
    np.testing.assert_array_equal(grad[1], 0.0)
    # The empty row does not count in the mean.
    np.testing.assert_allclose(value, row[0], rtol=1e-6)


def test_label_smoothing_never_reaches_masked_classes(rng):
  logits, labels = _problem(rng, classes=6)
  labels = labels % 4
  where = jnp.arange(6) < 4
  out = int_ce(logits, labels, where=jnp.broadcast_to(where, logits.shape),
               label_smoothing=0.3)
  # Same as the loss on the four unmasked classes alone.
  expected, _ = reference_int_ce(logits[:, :4], np.asarray(labels),
                                 smoothing=0.3)
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  soft_labels = jax.nn.one_hot(labels, 6)
  np.testing.assert_allclose(
      soft_ce(logits, soft_labels, where=jnp.broadcast_to(where, (6, 6)),
              label_smoothing=0.3), expected, rtol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16_bit_inputs_accumulate_in_float32(rng, dtype):
  logits = jnp.asarray(rng.normal(scale=4, size=(8, 1000)), dtype)
  labels = jnp.asarray(rng.integers(0, 1000, size=8), jnp.int32)
  loss, grad = jax.value_and_grad(lambda x: int_ce(x, labels).sum())(logits)
  assert loss.dtype == jnp.float32 and grad.dtype == dtype
  expected, _ = reference_int_ce(np.asarray(logits, np.float64),
                                 np.asarray(labels))
  # Inputs are the same rounded values, so float32 accumulation is all
  # the error there is: far tighter than 16-bit arithmetic would give.
  np.testing.assert_allclose(int_ce(logits, labels), expected, rtol=1e-5)
  soft = jax.nn.one_hot(labels, 1000, dtype=dtype)
  loss_s, (g_x, g_y) = jax.value_and_grad(
      lambda x, y: soft_ce(x, y).sum(), argnums=(0, 1))(logits, soft)
  assert g_x.dtype == dtype and g_y.dtype == dtype
  np.testing.assert_allclose(soft_ce(logits, soft), expected, rtol=1e-5)


def test_out_of_range_labels_give_nan_never_a_wrapped_class(rng):
  logits, labels = _problem(rng)
  bad = labels.at[0].set(-1).at[1].set(7)
  out = jax.jit(int_ce)(logits, bad)
  assert np.isnan(out[:2]).all() and np.isfinite(out[2:]).all()
  # optax picks the last class for -1 today; jxent must not.
  assert np.isfinite(
      optax.softmax_cross_entropy_with_integer_labels(logits, bad)[0])
  grad = jax.grad(lambda x: int_ce(x, bad).sum())(logits)
  assert np.isnan(grad[0]).all() and np.isfinite(grad[2:]).all()


def test_checked_turns_bad_labels_into_errors(rng):
  logits, labels = _problem(rng)
  loss = jax.jit(lambda x, y: int_ce(x, y, ignore_index=-100,
                                     reduction="mean"))
  checked = jxent.checked(loss)
  np.testing.assert_allclose(checked(logits, labels.at[0].set(-100)),
                             loss(logits, labels.at[0].set(-100)))
  with pytest.raises(Exception, match=r"labels must lie in \[0, 7\)"):
    checked(logits, labels.at[0].set(7))
  grad_checked = jxent.checked(jax.grad(lambda x, y: int_ce(x, y).sum()))
  with pytest.raises(Exception, match="labels must lie"):
    grad_checked(logits, labels.at[3].set(-1))


def test_ignored_rows_have_no_loss_or_gradient(rng):
  logits, labels = _problem(rng)
  labels = labels.at[0].set(-100)
  loss_fn = lambda x: int_ce(x, labels, ignore_index=-100, reduction="mean")
  value, grad = jax.value_and_grad(loss_fn)(logits)
  np.testing.assert_array_equal(grad[0], 0.0)
  np.testing.assert_allclose(value, int_ce(logits[1:], labels[1:]).mean(),
                             rtol=1e-6)
  all_ignored = jnp.full_like(labels, -100)
  assert int_ce(logits, all_ignored, ignore_index=-100,
                reduction="mean") == 0.0


# --- gradients -------------------------------------------------------------


def _plain_int_ce(x, y, smoothing=0.0, z=0.0):
  """Autodiff-only reference: no custom VJP."""
  log_q = jax.nn.log_softmax(x)
  target = (1 - smoothing) * jax.nn.one_hot(y, x.shape[-1]) + (
      smoothing / x.shape[-1])
  lse = jax.nn.logsumexp(x, axis=-1)
  return -(target * log_q).sum(-1) + z * lse**2


def test_gradient_and_hessian_vector_product_match_autodiff(rng):
  logits, labels = _problem(rng)
  v = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)
  for kwargs, ref_kwargs in [({}, {}),
                             (dict(label_smoothing=0.2, z_loss=0.1),
                              dict(smoothing=0.2, z=0.1))]:
    f = lambda x, kw=kwargs: int_ce(x, labels, **kw).sum()
    g = lambda x, kw=ref_kwargs: _plain_int_ce(x, labels, **kw).sum()
    np.testing.assert_allclose(jax.grad(f)(logits), jax.grad(g)(logits),
                               rtol=1e-5, atol=1e-6)
    hvp = jax.grad(lambda x: jnp.vdot(jax.grad(f)(x), v))(logits)
    hvp_ref = jax.grad(lambda x: jnp.vdot(jax.grad(g)(x), v))(logits)
    np.testing.assert_allclose(hvp, hvp_ref, rtol=1e-4, atol=1e-5)


def test_soft_labels_stay_differentiable_for_distillation(rng):
  logits, _ = _problem(rng)
  labels = jax.nn.softmax(jnp.asarray(rng.normal(size=(6, 7)), jnp.float32))
  def reference(x, y):
    t = 0.9 * y + 0.1 / 7
    return -(t * jax.nn.log_softmax(x)).sum()
  got = jax.grad(lambda x, y: soft_ce(x, y, label_smoothing=0.1).sum(),
                 argnums=(0, 1))(logits, labels)
  want = jax.grad(reference, argnums=(0, 1))(logits, labels)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Second order through the labels, as a distillation meta-gradient needs.
  mixed = jax.grad(lambda y: jnp.sum(jax.grad(
      lambda x: soft_ce(x, y).sum())(logits)))(labels)
  mixed_ref = jax.grad(lambda y: jnp.sum(jax.grad(
      lambda x: -(y * jax.nn.log_softmax(x)).sum())(logits)))(labels)
  np.testing.assert_allclose(mixed, mixed_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, (0, 2), (2, 0)])
def test_class_axis_anywhere_under_jit_and_vmap(rng, axis):
  x = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
  axes = axis if isinstance(axis, tuple) else (axis,)
  batch = [a for a in range(3) if a not in axes]
  flat = jnp.transpose(x, batch + list(axes)).reshape(
      tuple(x.shape[a] for a in batch) + (-1,))
  labels = jnp.asarray(rng.integers(0, flat.shape[-1], size=flat.shape[:-1]),
                       jnp.int32)
  expected = int_ce(flat, labels)
  np.testing.assert_allclose(jax.jit(int_ce, static_argnums=2)(x, labels,
                                                               axis),
                             expected, rtol=1e-6)
  soft = jax.nn.one_hot(labels, flat.shape[-1])
  np.testing.assert_allclose(soft_ce(flat, soft), expected, rtol=1e-6)
  np.testing.assert_allclose(jax.vmap(int_ce)(flat, labels), expected,
                             rtol=1e-6)


def test_residuals_hold_no_float32_copy_of_the_logits():
  # Above the size at which a CPU converts small 16-bit logits (faster
  # there; see softmax_rows.upcasts_on_cpu).
  batch, classes = 32, 2**17
  assert batch * classes * 4 > softmax_rows.CPU_UPCAST_BYTES
  logits = jnp.zeros((batch, classes), jnp.bfloat16)
  labels = jnp.zeros((batch,), jnp.int32)
  soft = jnp.zeros((batch, classes), jnp.bfloat16)

  def big_float32(vjp_fn):
    return [leaf.shape for leaf in jax.tree_util.tree_leaves(vjp_fn)
            if leaf.dtype == jnp.float32 and leaf.size >= batch * classes]

  for fn, lab in [(int_ce, labels), (soft_ce, soft)]:
    _, vjp_fn = jax.vjp(lambda x, fn=fn, lab=lab: fn(
        x, lab, label_smoothing=0.1, z_loss=1e-4), logits)
    assert big_float32(vjp_fn) == []
  # The check can fail: plain autodiff of an upcast loss saves float32 rows.
  _, vjp_ref = jax.vjp(lambda x: optax.softmax_cross_entropy_with_integer_labels(
      x.astype(jnp.float32), labels), logits)
  assert big_float32(vjp_ref)


def _keeps_a_float32_copy(x, y):
  """A loss that needs a float32 [batch, classes] buffer XLA cannot fuse."""
  return optax.softmax_cross_entropy_with_integer_labels(
      jnp.sort(x.astype(jnp.float32), axis=-1), y)


def test_compiled_value_and_grad_holds_no_float32_logits():
  batch, classes = 256, 8192
  labels = jnp.zeros((batch,), jnp.int32)
  float32_copy = batch * classes * 4

  def temp(loss, dtype):
    logits = jnp.zeros((batch, classes), dtype)
    step = jax.jit(jax.value_and_grad(lambda x: loss(x, labels).mean()))
    return step.lower(logits).compile().memory_analysis().temp_size_in_bytes

  # Float32 logits: only per-row numbers live between or within the passes.
  assert temp(int_ce, jnp.float32) < float32_copy // 8
  # The check can fail: a float32 [batch, classes] temporary is seen.
  assert temp(_keeps_a_float32_copy, jnp.float32) >= float32_copy
  # bfloat16 logits: never more than the usual upcast-first recipe. (On the
  # CPU backend, XLA materialises the float32 conversion for its reduction
  # kernels in both; the residuals themselves are checked above.)
  upcast = lambda x, y: optax.softmax_cross_entropy_with_integer_labels(
      x.astype(jnp.float32), y)
  assert temp(int_ce, jnp.bfloat16) <= temp(upcast, jnp.bfloat16)


# --- laws ------------------------------------------------------------------

rows = hnp.arrays(np.float32, (3, 6),
                  elements=st.floats(-50, 50, width=32))


@given(rows, st.floats(-1e3, 1e3))
def test_shift_invariance(x, shift):
  labels = jnp.array([0, 3, 5])
  shifted = jnp.asarray(x) + jnp.float32(shift)
  np.testing.assert_allclose(int_ce(shifted, labels), int_ce(x, labels),
                             rtol=1e-4, atol=2e-3)


@given(rows, st.floats(0, 1))
def test_gradient_is_softmax_minus_labels(x, smoothing):
  labels = jnp.array([0, 3, 5])
  target = optax.smooth_labels(jax.nn.one_hot(labels, 6), smoothing)
  expected = scipy.special.softmax(x.astype(np.float64), -1) - np.asarray(
      target, np.float64)
  grad = jax.grad(lambda x: int_ce(x, labels, label_smoothing=smoothing)
                  .sum())(jnp.asarray(x))
  np.testing.assert_allclose(grad, expected, atol=2e-6)
  grad_soft = jax.grad(lambda x: soft_ce(x, target).sum())(jnp.asarray(x))
  np.testing.assert_allclose(grad_soft, expected, atol=2e-6)


@given(hnp.arrays(np.float32, (2, 5), elements=st.floats(
    allow_nan=False, allow_infinity=False, width=32)))
def test_finite_for_extreme_logits(x):
  labels = jnp.array([1, 4])
  for fn, lab in [(int_ce, labels), (soft_ce, jax.nn.one_hot(labels, 5))]:
    value, grad = jax.value_and_grad(
        lambda x, fn=fn, lab=lab: fn(x, lab, label_smoothing=0.1).sum())(
            jnp.asarray(x))
    assert np.isfinite(value) and np.isfinite(grad).all()


# --- bad input ----------------------------------------------------------


def test_bad_input_fails_at_trace_time_with_clear_errors():
  x = jnp.zeros((4, 3))
  y = jnp.zeros((4,), jnp.int32)
  with pytest.raises(ValueError, match=r"\(4,\).*\(5,\)"):
    int_ce(x, jnp.zeros((5,), jnp.int32))
  with pytest.raises(ValueError, match=r"\(4, 3\).*\(4, 2\)"):
    soft_ce(x, jnp.zeros((4, 2)))
  with pytest.raises(TypeError, match="floating"):
    int_ce(jnp.zeros((4, 3), jnp.int32), y)
  with pytest.raises(TypeError, match="integer"):
    int_ce(x, jnp.zeros((4,)))
  with pytest.raises(TypeError, match="floating"):
    soft_ce(x, jnp.zeros((4, 3), jnp.complex64))
  for bad in (-0.1, 1.5):
    with pytest.raises(ValueError, match="label_smoothing"):
      int_ce(x, y, label_smoothing=bad)
  with pytest.raises(ValueError, match="reduction"):
    int_ce(x, y, reduction="average")
  with pytest.raises(ValueError, match="z_loss"):
    soft_ce(x, x, z_loss=-1.0)
  with pytest.raises(ValueError, match="class_weights"):
    int_ce(x, y, class_weights=jnp.ones(4))
  with pytest.raises(TypeError, match="keyword|positional"):
    int_ce(x, y, -1, None, None)  # Options past `where` are keyword-only.


# --- regressions found in review -------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16])
def test_narrow_integer_labels_do_not_wrap(rng, dtype):
  # With uint8 labels and 300 classes, a uint8 class index wrapped past 255,
  # so class 257 took label 1's gradient.
  logits = jnp.asarray(rng.normal(size=(3, 300)), jnp.float32)
  labels = jnp.array([1, 3, 100])
  def grad(lab):
    return jax.grad(lambda x: int_ce(x, lab, label_smoothing=0.1).sum())(
        logits)
  np.testing.assert_allclose(grad(labels.astype(dtype)), grad(labels),
                             rtol=1e-6, atol=1e-8)


def test_empty_batch_is_not_an_error():
  logits, labels = jnp.zeros((0, 5)), jnp.zeros((0,), jnp.int32)
  assert int_ce(logits, labels).shape == (0,)
  assert int_ce(logits, labels, reduction="mean") == 0.0
  assert jxent.checked(int_ce)(logits, labels).shape == (0,)


def test_shape_error_names_the_shape_the_user_passed():
  with pytest.raises(ValueError, match=r"logits.shape=\(5, 3\)"):
    int_ce(jnp.zeros((5, 3)), jnp.zeros((5,), jnp.int32), axis=0)


def test_non_integer_ignore_index_is_a_type_error():
  with pytest.raises(TypeError, match="ignore_index"):
    int_ce(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), ignore_index=1.5)


# --- regressions of the core second pass (issue 11) ------------------------


def test_nan_logit_makes_its_row_nan_and_the_mean_nan():
  # Issue 11, defect 1: a NaN row was treated as fully masked (loss 0).
  logits = jnp.array([[1.0, jnp.nan, 0.5], [1.0, 2.0, 0.5]])
  labels = jnp.array([0, 1])
  loss = int_ce(logits, labels)
  assert np.isnan(loss[0])
  np.testing.assert_allclose(loss[1], reference_int_ce(logits[1:], np.array(
      [1]))[0][0], rtol=1e-6)
  assert np.isnan(int_ce(logits, labels, reduction="mean"))
  grad = jax.grad(lambda x: int_ce(x, labels).sum())(logits)
  assert np.isnan(grad[0]).all() and np.isfinite(grad[1]).all()
  soft = jax.nn.one_hot(labels, 3)
  assert np.isnan(soft_ce(logits, soft)[0])
  assert np.isnan(soft_ce(logits, soft, reduction="mean"))
  # optax agrees on the row; PyTorch's mean is NaN too.
  assert np.isnan(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels)[0])


def test_all_nan_batch_gives_nan_mean_and_gradient():
  logits = jnp.full((2, 3), jnp.nan)
  for fn, lab in [(int_ce, jnp.array([0, 1])),
                  (soft_ce, jnp.eye(3)[:2])]:
    value, grad = jax.value_and_grad(
        lambda x, fn=fn, lab=lab: fn(x, lab, reduction="mean"))(logits)
    assert np.isnan(value) and np.isnan(grad).all()


def test_nan_on_a_masked_class_is_ignored():
  logits = jnp.array([[1.0, jnp.nan, 0.5]])
  where = jnp.array([[True, False, True]])
  expected = -np.log(scipy.special.softmax([1.0, 0.5])[0])
  for smoothing in (0.0, 0.1):
    value, grad = jax.value_and_grad(lambda x, s=smoothing: int_ce(
        x, jnp.array([0]), where=where, label_smoothing=s).sum())(logits)
    assert np.isfinite(value) and np.isfinite(grad).all()
    assert grad[0, 1] == 0.0
  np.testing.assert_allclose(int_ce(logits, jnp.array([0]), where=where),
                             [expected], rtol=1e-6)


def test_sigmoid_gradient_at_zero_logit_is_minus_half():
  # Issue 11, defect 2: the gradient at logit 0 was -1.0 (|x| differentiated
  # as slope 1); sigmoid(0) - 1 = -0.5, as optax and PyTorch give.
  for label, expected in [(1.0, -0.5), (0.0, 0.5), (0.3, 0.2)]:
    grad = jax.grad(lambda a, y=label: jxent.sigmoid_binary_cross_entropy(
        a, jnp.float32(y)))(0.0)
    optax_grad = jax.grad(lambda a, y=label: optax.sigmoid_binary_cross_entropy(
        a, jnp.float32(y)))(0.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-6)
    np.testing.assert_allclose(grad, optax_grad, rtol=1e-6)


def test_labels_are_range_checked_in_their_own_dtype():
  # Issue 11, defect 3: labels were cast to int32 before the range check, so
  # with x64, 2**32 + 3 became class 3 and 2**32 - 100 matched -100.
  with jax.enable_x64(True):
    logits = jnp.zeros((3, 5), jnp.float32)
    labels = jnp.array([2**32 + 3, 2**32 - 100, 3], jnp.int64)
    loss = int_ce(logits, labels, ignore_index=-100)
    assert np.isnan(loss[:2]).all() and np.isfinite(loss[2])
    grad = jax.grad(lambda x: int_ce(x, labels, ignore_index=-100).sum())(
        logits)
    assert np.isnan(grad[:2]).all()
    x = jnp.ones((3, 2), jnp.float32)
    w = jnp.zeros((2, 5), jnp.float32)
    linear = jxent.linear_softmax_cross_entropy(
        x, w, labels, ignore_index=-100, reduction="none")
    assert np.isnan(linear[:2]).all() and np.isfinite(linear[2])


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.uint32, jnp.int8])
def test_ignore_index_outside_the_label_dtype_never_matches(dtype):
  # -100 cannot be a uint8 label: no label is ignored, and none wraps.
  logits = jnp.zeros((2, 4))
  labels = jnp.array([1, 3], dtype)
  np.testing.assert_allclose(int_ce(logits, labels, ignore_index=-100),
                             np.log(4), rtol=1e-6)
  np.testing.assert_allclose(int_ce(logits, labels, ignore_index=300),
                             np.log(4), rtol=1e-6)


def test_zero_classes_give_empty_rows_or_nan_for_labels():
  # Issue 11, defect 4: a zero-length class axis crashed.
  logits = jnp.zeros((3, 0))
  assert np.isnan(int_ce(logits, jnp.zeros((3,), jnp.int32))).all()
  np.testing.assert_array_equal(
      int_ce(logits, jnp.full((3,), -100), ignore_index=-100), 0.0)
  np.testing.assert_array_equal(soft_ce(logits, logits), 0.0)


# --- every differentiation mode (issue 11, defect 7) -------------------------


def _float64_int_ce(x, y, *, smoothing=0.0, z=0.0, weights=None, mask=None):
  """Plain float64 autodiff reference of the integer-label loss."""
  x = x.astype(jnp.float64)
  if mask is not None:
    x = jnp.where(mask, x, -jnp.inf)
  w = jnp.ones(x.shape[-1]) if weights is None else weights.astype(
      jnp.float64)
  valid = x > -jnp.inf
  log_q = jax.nn.log_softmax(x)
  safe = jnp.where(valid, log_q, 0)
  nll = -jnp.take_along_axis(log_q, y[:, None], -1)[:, 0]
  k = valid.sum(-1).astype(jnp.float64)
  smooth = -(jnp.where(valid, w[None, :] * safe, 0)).sum(-1) / k
  lse = jax.nn.logsumexp(x, -1)
  return (1 - smoothing) * w[y] * nll + smoothing * smooth + z * lse**2


def _float64_soft_ce(x, t, *, smoothing=0.0, z=0.0, weights=None):
  x, t = x.astype(jnp.float64), t.astype(jnp.float64)
  c = x.shape[-1]
  w = jnp.ones(c) if weights is None else weights.astype(jnp.float64)
  target = (1 - smoothing) * t + smoothing / c
  lse = jax.nn.logsumexp(x, -1)
  return -(w[None, :] * target * jax.nn.log_softmax(x)).sum(-1) + z * lse**2


MODES = {
    "grad": lambda f, x: jax.grad(lambda x: f(x).sum())(x),
    "jvp": lambda f, x: jax.jvp(f, (x,), (jnp.cos(3 * x),))[1],
    "linearize": lambda f, x: jax.linearize(f, x)[1](jnp.sin(x)),
    "jacfwd": lambda f, x: jax.jacfwd(f)(x),
    "jacrev": lambda f, x: jax.jacrev(f)(x),
    "hessian": lambda f, x: jax.hessian(lambda x: f(x).sum())(x),
    "vmap_grad": lambda f, x: jax.vmap(jax.grad(lambda x: f(x).sum()))(
        jnp.stack([x, 2 * x])),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("options", [
    {}, {"smoothing": 0.2, "z": 0.05, "weights": True, "mask": True}])
def test_every_differentiation_mode_matches_float64_autodiff(rng, mode,
                                                            options):
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(3, 5)) * 2)
    y = jnp.array([0, 4, 2])
    weights = jnp.asarray(rng.uniform(0.5, 2, 5)) if options.get(
        "weights") else None
    mask = jnp.array([True, True, True, False, True]) if options.get(
        "mask") else None
    y = jnp.where(y == 3, 0, y)
    smoothing, z = options.get("smoothing", 0.0), options.get("z", 0.0)
    kw = dict(label_smoothing=smoothing, z_loss=z, class_weights=weights,
              where=None if mask is None else jnp.broadcast_to(mask, x.shape))
    got = MODES[mode](lambda x: int_ce(x.astype(jnp.float32), y, **kw), x)
    want = MODES[mode](lambda x: _float64_int_ce(
        x, y, smoothing=smoothing, z=z, weights=weights, mask=mask), x)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_soft_labels_every_mode_in_logits_and_labels(rng, mode):
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(3, 5)) * 2)
    t = jnp.asarray(rng.dirichlet(np.ones(5), size=3))
    weights = jnp.asarray(rng.uniform(0.5, 2, 5))
    kw = dict(label_smoothing=0.1, z_loss=0.02)
    for argnum in (0, 1):
      def f(v, argnum=argnum):
        a, b = (v, t) if argnum == 0 else (x, v)
        return soft_ce(a.astype(jnp.float32), b.astype(jnp.float32),
                       class_weights=weights.astype(jnp.float32), **kw)

      def ref(v, argnum=argnum):
        a, b = (v, t) if argnum == 0 else (x, v)
        return _float64_soft_ce(a, b, smoothing=0.1, z=0.02, weights=weights)

      v = x if argnum == 0 else t
      np.testing.assert_allclose(MODES[mode](f, v), MODES[mode](ref, v),
                                 rtol=2e-5, atol=1e-6)


def test_derivative_with_respect_to_traced_smoothing_and_z_loss(rng):
  logits, labels = _problem(rng)
  def loss(s, z):
    return int_ce(logits, labels, label_smoothing=s, z_loss=z).sum()
  def ref(s, z):
    return _float64_int_ce(logits, labels, smoothing=s, z=z).sum()
  got = jax.grad(loss, (0, 1))(0.1, 0.01)
  with jax.enable_x64(True):
    want = jax.grad(ref, (0, 1))(0.1, 0.01)
  np.testing.assert_allclose(got, want, rtol=1e-4)


# --- drop-in gaps --------------------------------------------------------------


def test_integer_labels_are_accepted_where_optax_accepts_them(rng):
  logits, labels = _problem(rng)
  one_hot = jax.nn.one_hot(labels, 7, dtype=jnp.int32)
  np.testing.assert_allclose(soft_ce(logits, one_hot),
                             int_ce(logits, labels), rtol=1e-6)
  y = jnp.array([[1, 0, 1]])
  np.testing.assert_allclose(
      jxent.sigmoid_binary_cross_entropy(jnp.array([[0.5, -1.0, 2.0]]), y),
      optax.sigmoid_binary_cross_entropy(jnp.array([[0.5, -1.0, 2.0]]),
                                         y.astype(jnp.float32)), rtol=1e-6)


def test_axis_none_reduces_over_every_axis(rng):
  x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  t = jax.nn.softmax(jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                     axis=None)
  np.testing.assert_allclose(soft_ce(x, t, axis=None),
                             optax.softmax_cross_entropy(x, t, axis=None),
                             rtol=1e-6)
  np.testing.assert_allclose(int_ce(x, jnp.array(7), axis=None),
                             int_ce(x.reshape(-1), jnp.array(7)), rtol=1e-6)


def test_soft_labels_with_class_weights_follow_pytorch(rng):
  # PyTorch's `weight` with probability targets: -sum_c w_c t_c log q_c, and
  # "mean" divides by the number of rows, not by the weights.
  x = rng.normal(size=(4, 5))
  t = rng.dirichlet(np.ones(5), size=4)
  w = rng.uniform(0.5, 2, 5)
  s = 0.2
  target = (1 - s) * t + s / 5
  log_q = x - scipy.special.logsumexp(x, -1, keepdims=True)
  expected = -(w[None, :] * target * log_q).sum(-1)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = soft_ce(f32(x), f32(t), class_weights=f32(w), label_smoothing=s)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  np.testing.assert_allclose(
      soft_ce(f32(x), f32(t), class_weights=f32(w), label_smoothing=s,
              reduction="mean"), expected.mean(), rtol=1e-5)


def test_traced_smoothing_and_z_loss_do_not_recompile(rng):
  logits, labels = _problem(rng)
  traces = []

  def loss(x, s, z):
    traces.append(None)  # Runs once per trace, not per call.
    return int_ce(x, labels, label_smoothing=s, z_loss=z, reduction="mean")

  step = jax.jit(loss)
  for s in (0.0, 0.1, 0.2):
    traced = step(logits, jnp.float32(s), jnp.float32(s / 10))
    static = int_ce(logits, labels, label_smoothing=s, z_loss=s / 10,
                    reduction="mean")
    np.testing.assert_allclose(traced, static, rtol=1e-6)
  assert len(traces) == 1


def test_per_row_where_mask_as_in_optax(rng):
  logits, labels = _problem(rng, batch=4)
  rows = jnp.array([True, False, True, True])
  out = int_ce(logits, labels, where=rows)
  np.testing.assert_allclose(out[1], 0.0)
  np.testing.assert_allclose(out[rows], int_ce(logits[rows], labels[rows]),
                             rtol=1e-6)
  np.testing.assert_allclose(
      out, optax.softmax_cross_entropy_with_integer_labels(
          logits, labels, where=rows), rtol=1e-6)


def test_reduction_is_a_literal_type():
  import typing
  hints = typing.get_type_hints(int_ce)
  assert typing.get_args(hints["reduction"]) == ("none", "sum", "mean")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_wide_rows_with_smoothing_match_float64(dtype):
  # 131072 classes: the row sums of the path that recomputes exp (16-bit
  # inputs, accelerators) once lost ~1e-5 to sequential float32 rounding,
  # 30 times the float32 path's error.
  rows, classes, alpha = 3, 131072, 0.1
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(rows, classes)) * 3, dtype)
  labels = jnp.asarray(rng.integers(0, classes, rows))
  x64 = np.asarray(x.astype(jnp.float32), np.float64)
  shifted = x64 - x64.max(1, keepdims=True)
  log_q = shifted - np.log(np.sum(np.exp(shifted), 1, keepdims=True))
  want = -((1 - alpha) * log_q[np.arange(rows), np.asarray(labels)]
           + alpha * log_q.mean(1))
  loss = lambda x: int_ce(x, labels, label_smoothing=alpha)  # noqa: E731
  with softmax_rows.recompute_everywhere():
    recomputed = jax.jit(loss)(x)
  for got in (jax.jit(loss)(x), recomputed):
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_soft_label_sum_after_the_log_sum_exp_keeps_every_edge(jit):
  # On a CPU the soft-label loss is one sum after the log-sum-exp, with no
  # select (see rows._soft_label_part): 0 log 0 must still be 0 at a -inf
  # logit, any label mass there (even 1e-30, or a negative one) must still
  # reach +-inf, an empty row 0 and a NaN row NaN, under jit too (where XLA
  # could fold the constants into a 0 * inf).
  inf = np.inf
  logits = jnp.array([[0.0, -inf, 1.0], [0.0, -inf, 1.0], [0.0, -inf, 1.0],
                      [-inf, -inf, -inf], [0.0, np.nan, 1.0], [2.0, 0.5, 1.0]])
  labels = jnp.array([[0.5, 0.0, 0.5], [0.5, 1e-30, 0.5], [0.5, -0.1, 0.6],
                      [0.3, 0.3, 0.4], [0.5, 0.0, 0.5], [0.2, 0.3, 0.5]])
  fn = jax.jit(jxent.softmax_cross_entropy) if jit else (
      jxent.softmax_cross_entropy)
  loss = np.asarray(fn(logits, labels))
  with np.errstate(divide="ignore", invalid="ignore"):
    log_q = scipy.special.log_softmax(np.asarray(logits, np.float64)[0], -1)
    want = -np.sum(np.where(labels[0] > 0, labels[0] * log_q, 0))
    log_q = scipy.special.log_softmax(np.asarray(logits, np.float64)[5], -1)
    want_last = -np.sum(np.asarray(labels[5], np.float64) * log_q)
  np.testing.assert_allclose(loss[0], want, rtol=1e-6)
  assert loss[1] == inf and loss[2] == -inf
  assert loss[3] == 0 and np.isnan(loss[4])
  np.testing.assert_allclose(loss[5], want_last, rtol=1e-6)


def test_soft_label_forward_pass_falls_back_where_the_plain_sum_is_nan():
  # On a CPU the forward pass first takes optax's plain sum, and computes a
  # batch again the careful way only where that gives NaN (an edge row).
  # Each edge row gives the same loss alone, beside plain rows, and under
  # vmap, whose batched calls are one call with one condition: a `cond`
  # stays in the program, not a select that computes both branches.
  inf = np.inf
  edges = jnp.array([[0.0, -inf, 1.0], [-inf, -inf, -inf], [0.0, inf, 1.0],
                     [0.0, np.nan, 1.0]])
  edge_labels = jnp.array([[0.5, 0.0, 0.5], [0.3, 0.3, 0.4],
                           [0.2, 0.3, 0.5], [0.5, 0.0, 0.5]])
  plain = jnp.array([[2.0, 0.5, 1.0], [0.1, -3.0, 4.0]])
  plain_labels = jnp.array([[0.2, 0.3, 0.5], [0.0, 0.5, 0.5]])
  weights = jnp.array([0.5, 2.0, 1.5])
  loss = jax.jit(lambda x, t, w: jxent.softmax_cross_entropy(
      x, t, class_weights=w))
  with np.errstate(divide="ignore", invalid="ignore"):
    log_q = scipy.special.log_softmax(np.asarray(plain, np.float64), -1)
  want_plain = -np.sum(np.asarray(weights)[None] * np.asarray(plain_labels)
                       * log_q,
                       axis=-1)
  np.testing.assert_allclose(loss(plain, plain_labels, weights), want_plain,
                             rtol=1e-6)
  alone = np.concatenate([loss(edges[i:i + 1], edge_labels[i:i + 1], weights)
                          for i in range(len(edges))])
  np.testing.assert_allclose(alone[0], -0.5 * 0.5 * np.log(1 / (1 + np.e))
                             - 0.5 * 1.5 * np.log(np.e / (1 + np.e)),
                             rtol=1e-6)
  assert alone[1] == 0 and np.isnan(alone[2:]).all()
  x = jnp.concatenate([plain, edges])
  t = jnp.concatenate([plain_labels, edge_labels])
  together = np.asarray(loss(x, t, weights))
  np.testing.assert_array_equal(together[2:], alone)
  np.testing.assert_allclose(together[:2], want_plain, rtol=1e-6)
  # vmap over the rows, over the labels only, and over the class weights.
  per_row = jax.vmap(lambda x, t: loss(x[None], t[None], weights)[0])
  np.testing.assert_array_equal(per_row(x, t), together)
  over_labels = jax.vmap(loss, in_axes=(None, 0, None))(
      x, jnp.stack([t, t]), weights)
  np.testing.assert_array_equal(over_labels, np.stack([together] * 2))
  over_weights = jax.vmap(loss, in_axes=(None, None, 0))(
      x, t, jnp.stack([weights, 2 * weights]))
  np.testing.assert_allclose(over_weights[1][:2], 2 * want_plain, rtol=1e-6)
  np.testing.assert_array_equal(over_weights[0], together)
  assert "cond[" in str(jax.make_jaxpr(per_row)(x, t))
