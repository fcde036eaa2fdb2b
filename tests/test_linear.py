"""Tests for the fused linear softmax cross-entropy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

import jxent

linear_ce = jxent.linear_softmax_cross_entropy


def _problem(rng, tokens=37, dim=16, vocab=301, dtype=jnp.float32):
  x = jnp.asarray(rng.normal(size=(tokens, dim)), dtype)
  w = jnp.asarray(rng.normal(size=(dim, vocab)) * 0.3, dtype)
  bias = jnp.asarray(rng.normal(size=(vocab,)), dtype)
  labels = jnp.asarray(rng.integers(0, vocab, size=tokens), jnp.int32)
  # Hit the first and last classes, which sit at the blocks' edges.
  labels = labels.at[0].set(0).at[1].set(vocab - 1).at[2].set(-100)
  return x, w, bias, labels


def materialised_logits(x, w, bias=None, logit_softcap=None):
  """The whole logits, capped (finite inputs), in float32 or float64."""
  acc = jnp.float64 if x.dtype == jnp.float64 else jnp.float32
  logits = jnp.dot(x, w, preferred_element_type=acc)
  if bias is not None:
    logits = logits + bias.astype(acc)[None, :]
  if logit_softcap is not None:
    logits = logit_softcap * jnp.tanh(logits / logit_softcap)
  return logits


def materialised(x, w, labels, *, bias=None, logit_softcap=None,
                 **options):
  """The reference: build the logits, then the core integer-label loss."""
  return jxent.softmax_cross_entropy_with_integer_labels(
      materialised_logits(x, w, bias, logit_softcap), labels, **options)


OPTIONS = [
    dict(),
    dict(label_smoothing=0.1),
    dict(z_loss=1e-3),
    dict(logit_softcap=5.0),
    dict(label_smoothing=0.2, z_loss=1e-2, logit_softcap=3.0),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("block_size", [64, 100, 301, None])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_matches_materialised_loss_and_gradients(rng, options, block_size,
                                                 reduction):
  x, w, bias, labels = _problem(rng)

  def fused(x, w, bias):
    out = linear_ce(x, w, labels, bias=bias, ignore_index=-100,
                    reduction=reduction, block_size=block_size, **options)
    return out.sum()

  def reference(x, w, bias):
    return materialised(x, w, labels, bias=bias, ignore_index=-100,
                        reduction=reduction, **options).sum()

  value, grads = jax.value_and_grad(fused, (0, 1, 2))(x, w, bias)
  ref_value, ref_grads = jax.value_and_grad(reference, (0, 1, 2))(x, w, bias)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  assert grads[0][2].sum() == 0.0  # The ignored row has no gradient.


def test_bfloat16_inputs_accumulate_in_float32(rng):
  x, w, _, labels = _problem(rng, dtype=jnp.bfloat16)
  labels = jnp.abs(labels)
  loss, (dx, dw) = jax.value_and_grad(
      lambda x, w: linear_ce(x, w, labels, block_size=128), (0, 1))(x, w)
  assert loss.dtype == jnp.float32
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  ref, (rdx, rdw) = jax.value_and_grad(
      lambda x, w: materialised(x, w, labels, reduction="mean"), (0, 1))(x, w)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(dx, np.float32),
                             np.asarray(rdx, np.float32), rtol=2e-2,
                             atol=1e-3)
  np.testing.assert_allclose(np.asarray(dw, np.float32),
                             np.asarray(rdw, np.float32), rtol=2e-2,
                             atol=1e-3)


def test_leading_batch_axes_jit_and_vmap(rng):
  x, w, _, labels = _problem(rng, tokens=24)
  labels = jnp.abs(labels)
  flat = linear_ce(x, w, labels, reduction="none", block_size=64)
  batched = jax.jit(lambda x, y: linear_ce(x, w, y, reduction="none",
                                           block_size=64))(
      x.reshape(4, 6, -1), labels.reshape(4, 6))
  np.testing.assert_allclose(batched.reshape(-1), flat, rtol=1e-6)
  mapped = jax.vmap(lambda x, y: linear_ce(x, w, y, reduction="none",
                                           block_size=64))(
      x.reshape(4, 6, -1), labels.reshape(4, 6))
  np.testing.assert_allclose(mapped.reshape(-1), flat, rtol=1e-6)


def test_huge_equal_logits_stay_exact():
  x = jnp.ones((2, 1))
  w = jnp.full((1, 1000), 1e8)
  np.testing.assert_allclose(
      linear_ce(x, w, jnp.array([3, 999]), block_size=128), np.log(1000),
      rtol=1e-6)


def test_out_of_range_labels_give_nan_and_checked_raises(rng):
  x, w, _, labels = _problem(rng)
  bad = jnp.abs(labels).at[5].set(301)
  out = linear_ce(x, w, bad, reduction="none")
  assert np.isnan(out[5]) and np.isfinite(np.delete(np.asarray(out), 5)).all()
  with pytest.raises(Exception, match=r"labels must lie in \[0, 301\)"):
    jxent.checked(lambda x: linear_ce(x, w, bad))(x)


def compiled_temp_bytes(loss, x, w) -> int:
  """XLA's temporary bytes for loss and gradient in x and w, under jit."""
  step = jax.jit(jax.value_and_grad(loss, (0, 1)))
  return step.lower(x, w).compile().memory_analysis().temp_size_in_bytes


def test_temporary_memory_stays_far_below_the_materialised_logits():
  tokens, dim, vocab = 512, 64, 65536
  x = jnp.zeros((tokens, dim), jnp.float32)
  w = jnp.zeros((dim, vocab), jnp.float32)
  labels = jnp.zeros((tokens,), jnp.int32)

  def temp(loss):
    return compiled_temp_bytes(loss, x, w)

  fused = temp(lambda x, w: linear_ce(x, w, labels, mode="low_memory"))
  reference = temp(lambda x, w: materialised(x, w, labels,
                                             reduction="mean"))
  logits_bytes = tokens * vocab * 4
  assert reference >= logits_bytes  # The check can fail: it sees them.
  assert fused <= reference / 8, (fused, reference)


def test_default_block_size_depends_on_shapes():
  from jxent._vocab.cross_entropy import default_block_size
  assert default_block_size(8192, 256000) == 128
  assert default_block_size(2048, 32768) == 512
  assert default_block_size(16, 1000) == 1000
  assert default_block_size(1, 10**6) == 8192
  # A GPU takes larger blocks: 128 MiB of float32 per [tokens, block] buffer.
  assert default_block_size(8192, 256000, "gpu") == 4096
  assert default_block_size(8192, 256000, "cpu") == 128
  assert default_block_size(1, 10**6, "gpu") == 16384


def test_bad_input_is_rejected_with_clear_errors(rng):
  x, w, bias, labels = _problem(rng)
  with pytest.raises(ValueError, match=r"x.shape=\(37, 16\).*\(15, 301\)"):
    linear_ce(x, w[:15], labels)
  with pytest.raises(ValueError, match="labels"):
    linear_ce(x, w, labels[:5])
  with pytest.raises(ValueError, match="bias"):
    linear_ce(x, w, labels, bias=bias[:7])
  with pytest.raises(TypeError, match="integer"):
    linear_ce(x, w, labels.astype(jnp.float32))
  with pytest.raises(ValueError, match="logit_softcap"):
    linear_ce(x, w, labels, logit_softcap=0.0)
  with pytest.raises(ValueError, match="block_size"):
    linear_ce(x, w, labels, block_size=0)


# --- regressions found in review -------------------------------------------


def _padded_problem(rng, vocab=37, pad=5):
  x = jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(8, vocab)), jnp.float32)
  bias = jnp.zeros((vocab,), jnp.float32).at[vocab - pad:].set(-jnp.inf)
  labels = jnp.asarray(rng.integers(0, vocab - pad, size=4), jnp.int32)
  return x, w, bias, labels


def test_smoothing_skips_minus_inf_bias_padding(rng):
  # Padding columns with a -inf bias get no smoothing mass, as in the
  # integer-label loss; summing their logits gave inf.
  x, w, bias, labels = _padded_problem(rng)

  def fused(x, w):
    return linear_ce(x, w, labels, bias=bias, label_smoothing=0.1,
                     block_size=8, reduction="none").sum()

  def reference(x, w):
    return materialised(x, w, labels, bias=bias, label_smoothing=0.1).sum()

  value, grads = jax.value_and_grad(fused, (0, 1))(x, w)
  ref_value, ref_grads = jax.value_and_grad(reference, (0, 1))(x, w)
  np.testing.assert_allclose(value, ref_value, rtol=1e-5)
  for got, want in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_first_block_all_minus_inf_is_not_nan(rng):
  # The online log-sum-exp met -inf - -inf = NaN when a row's first block
  # had no finite logit.
  x, w, _, labels = _padded_problem(rng)
  bias = jnp.zeros((37,), jnp.float32).at[:8].set(-jnp.inf)
  labels = labels + 8
  out = linear_ce(x, w, labels, bias=bias, block_size=8, reduction="none")
  np.testing.assert_allclose(
      out, materialised(x, w, labels, bias=bias), rtol=1e-5)


def test_huge_logits_with_smoothing_stay_exact():
  # Summing raw logits of 3e7 in float32 before subtracting the shift lost
  # 0.5 nats; the mean is now kept relative to the running shift.
  rng = np.random.default_rng(1)
  logits = 3e7 + 4.0 * rng.integers(-3, 4, size=(2, 1000))
  x = jnp.ones((2, 1), jnp.float32)
  w = jnp.asarray(logits[:1], jnp.float32)
  labels = jnp.array([5, 7])
  row = logits[0] - logits[0].max()
  log_q = row - scipy.special.logsumexp(row)
  expected = 0.9 * -log_q[[5, 7]] + 0.1 * -log_q.mean()
  for block in (128, 1000):
    np.testing.assert_allclose(
        linear_ce(x, w, labels, label_smoothing=0.1, block_size=block,
                  reduction="none"), expected, rtol=1e-6)


def test_empty_batch_gives_empty_or_zero_loss():
  x = jnp.zeros((0, 4))
  w = jnp.zeros((4, 10))
  labels = jnp.zeros((0,), jnp.int32)
  assert linear_ce(x, w, labels, reduction="none").shape == (0,)
  assert linear_ce(x, w, labels) == 0.0


@pytest.mark.skipif(not hasattr(jax, "enable_x64"), reason="no jax.enable_x64")
def test_float64_inputs_accumulate_in_float64(rng):
  with jax.enable_x64(True):
    x = jnp.asarray(rng.normal(size=(6, 5)), jnp.float64)
    w = jnp.asarray(rng.normal(size=(5, 40)), jnp.float64)
    labels = jnp.asarray(rng.integers(0, 40, size=6))
    out = linear_ce(x, w, labels, block_size=16, label_smoothing=0.1)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(
        out, materialised(x, w, labels, label_smoothing=0.1,
                          reduction="mean"), rtol=1e-12)


# --- regressions of the core second pass (issue 11) ------------------------


def test_mean_skips_rows_whose_logits_are_all_minus_inf():
  # Issue 11, defect 5: the linear "mean" counted empty rows, so on this
  # two-row example it was half the integer-label loss's.
  x = jnp.array([[1.0], [-jnp.inf]])  # Row 1's logits are all -inf.
  w = jnp.array([[1.0, 2.0]])
  labels = jnp.array([0, 1])
  expected = np.log1p(np.e)  # -log softmax([1, 2])[0], row 0 alone.
  for block in (1, 2):
    np.testing.assert_allclose(
        linear_ce(x, w, labels, block_size=block), expected, rtol=1e-6)
    np.testing.assert_allclose(
        linear_ce(x, w, labels, block_size=block, reduction="none"),
        [expected, 0.0], rtol=1e-6)
  np.testing.assert_allclose(
      materialised(x, w, labels, reduction="mean"), expected, rtol=1e-6)


def test_infinite_softcap_is_refused():
  # Issue 11, defect 5: logit_softcap=inf returned loss 0.
  x, w = jnp.ones((2, 3)), jnp.ones((3, 4))
  with pytest.raises(ValueError, match="logit_softcap"):
    linear_ce(x, w, jnp.array([0, 1]), logit_softcap=float("inf"))


def test_zero_vocabulary_is_refused_naming_w():
  # Issue 21, item 5: w of shape [D, 0] (no class at all) is a shape error
  # that names `w`, not a ZeroDivisionError (issue 11) nor a loss of NaN.
  x = jnp.ones((2, 3))
  w = jnp.zeros((3, 0))
  with pytest.raises(ValueError, match=r"`w` must have at least one column"):
    linear_ce(x, w, jnp.array([0, -100]), ignore_index=-100,
              reduction="none")
  with pytest.raises(ValueError, match=r"`w` must have at least one column"):
    jxent.linear_log_probs(x, w, jnp.array([0, 1]))
  with pytest.raises(ValueError, match=r"w` must have at least one column"):
    jxent.linear_kl_divergence(x, jnp.ones((3, 4)), x, w)


def test_nan_in_x_or_w_makes_its_rows_nan(rng):
  # Issue 11, defect 1, in the linear loss.
  x, w, bias, labels = _problem(rng)
  labels = jnp.abs(labels)
  bad_x = x.at[3, 0].set(jnp.nan)
  out = linear_ce(bad_x, w, labels, reduction="none", block_size=64)
  assert np.isnan(out[3]) and np.isfinite(np.delete(np.asarray(out), 3)).all()
  assert np.isnan(linear_ce(bad_x, w, labels, block_size=64))
  dx = jax.grad(lambda x: linear_ce(x, w, labels, block_size=64))(bad_x)
  assert np.isnan(dx[3]).any()
  bad_w = w.at[0, 5].set(jnp.nan)
  assert np.isnan(linear_ce(x, bad_w, labels, reduction="none",
                            block_size=64)).all()


def test_traced_smoothing_and_z_loss_match_static_and_differentiate(rng):
  x, w, bias, labels = _problem(rng)
  def loss(x, s, z):
    return linear_ce(x, w, labels, ignore_index=-100, label_smoothing=s,
                     z_loss=z, block_size=64)
  static = loss(x, 0.1, 0.01)
  traced = jax.jit(loss)(x, jnp.float32(0.1), jnp.float32(0.01))
  np.testing.assert_allclose(traced, static, rtol=1e-6)
  ds, dz = jax.grad(loss, (1, 2))(x, 0.1, 0.01)
  ref_s, ref_z = jax.grad(lambda s, z: materialised(
      x, w, labels, ignore_index=-100, label_smoothing=s, z_loss=z,
      reduction="mean"), (0, 1))(0.1, 0.01)
  np.testing.assert_allclose([ds, dz], [ref_s, ref_z], rtol=1e-4)


# --- per-token log-sum-exp and argmax (issue 21, item 4) ---------------------


MODES = [dict(mode="fast", token_chunk=4), dict(block_size=64)]


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("mode", MODES)
def test_log_sum_exp_and_argmax_come_from_the_same_walk(rng, mode,
                                                        reduction):
  if reduction == "none" and mode.get("mode") == "fast":
    mode = {}  # The fast mode needs a reduction inside.
  x, w, bias, labels = _problem(rng)  # Token 2 is ignored (-100).
  options = dict(bias=bias, ignore_index=-100, label_smoothing=0.1,
                 logit_softcap=5.0, reduction=reduction, **mode)
  loss, lse, arg = linear_ce(x, w, labels, return_lse=True,
                             return_argmax=True, **options)
  np.testing.assert_array_equal(loss, linear_ce(x, w, labels, **options))
  only_lse = linear_ce(x, w, labels, return_lse=True, **options)
  assert len(only_lse) == 2
  np.testing.assert_array_equal(only_lse[1], lse)
  with jax.enable_x64(True):
    logits = np.asarray(materialised_logits(
        *(jnp.asarray(np.asarray(a), jnp.float64) for a in (x, w, bias)),
        5.0))
  want_lse = scipy.special.logsumexp(logits, axis=1)
  want_arg = np.argmax(logits, axis=1)
  ignored = np.asarray(labels) == -100
  assert lse.shape == arg.shape == labels.shape
  assert lse.dtype == jnp.float32 and arg.dtype == jnp.int32
  np.testing.assert_allclose(lse[~ignored], want_lse[~ignored], rtol=1e-6)
  np.testing.assert_array_equal(arg[~ignored], want_arg[~ignored])
  assert (lse[ignored] == 0).all() and (arg[ignored] == -1).all()


@pytest.mark.parametrize("mode", MODES)
def test_the_monitoring_outputs_leave_the_gradient_alone(rng, mode):
  x, w, bias, labels = _problem(rng)
  plain = jax.grad(lambda x: linear_ce(x, w, labels, ignore_index=-100,
                                       **mode))(x)

  def with_outputs(x):
    loss, lse, _ = linear_ce(x, w, labels, ignore_index=-100,
                             return_lse=True, return_argmax=True, **mode)
    # The log-sum-exp is a monitoring value: it has no gradient.
    return loss + jnp.sum(lse)

  np.testing.assert_array_equal(jax.grad(with_outputs)(x), plain)


@pytest.mark.parametrize("mode", MODES)
def test_empty_and_nan_tokens_have_no_argmax(rng, mode):
  x, w, bias, labels = _problem(rng)
  labels = jnp.abs(labels)
  w = jnp.abs(w) + 0.1  # With positive weights, an x of -inf empties a row.
  x = x.at[3].set(-jnp.inf).at[5, 0].set(jnp.nan)
  _, lse, arg = linear_ce(x, w, labels, return_lse=True, return_argmax=True,
                          **mode)
  assert lse[3] == -jnp.inf and arg[3] == -1
  assert np.isnan(lse[5]) and arg[5] == -1
  assert (np.delete(np.asarray(arg), [3, 5]) >= 0).all()


def test_argmax_refuses_a_vocabulary_float32_cannot_count():
  w = jnp.zeros((1, 2**24 + 1), jnp.float32)
  with pytest.raises(ValueError, match="return_argmax"):
    linear_ce(jnp.ones((1, 1)), w, jnp.zeros(1, jnp.int32),
              return_argmax=True)
