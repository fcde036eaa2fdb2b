"""Tests for `linear_policy_gradient_loss`: -(A log q_y) - beta H, reduced.

Compared, in value and in the gradients for x, w, bias and the advantages,
with the materialised computation in float64 (the problem and helpers of
test_linear_heads.py: an odd vocabulary with -inf padding, a masked token
and an ignored label), in both modes; then its edges, its errors and its
sharded form.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from test_linear_heads import (
    TOKENS,
    _assert_matches,
    _legal,
    _logits,
    _problem,
    _xlogy,
)

import jxent
from jxent import sharded

BONUS = 0.05
MODES = [dict(mode="fast", token_chunk=4), dict(block_size=8)]


def _reference(labels, keep, reduction, cap=None, temperature=1.0):
  def reference(x, w, bias, advantages):
    log_q = jax.nn.log_softmax(_logits(x, w, bias, cap, temperature))
    counts = keep & (labels >= 0)
    picked = jnp.take_along_axis(log_q, jnp.where(counts, labels, 0)[:, None],
                                 axis=1)[:, 0]
    entropy = -jnp.sum(_xlogy(jnp.exp(log_q), log_q), axis=1)
    loss = jnp.where(counts, -(advantages * picked) - BONUS * entropy, 0)
    if reduction == "none":
      return loss
    total = jnp.sum(loss)
    return total if reduction == "sum" else total / jnp.sum(
        counts.astype(total.dtype))
  return reference


@pytest.mark.parametrize(("mode", "reduction"), [
    (MODES[0], "mean"), (MODES[0], "sum"), (MODES[1], "none")])
def test_matches_float64(rng, mode, reduction):
  prob = _problem(rng)
  labels = prob["labels"]  # Token 2 is ignored (-100).
  keep = jnp.ones(TOKENS, bool).at[4].set(False)
  advantages = jnp.asarray(rng.normal(size=TOKENS), jnp.float32)

  def fused(x, w, bias, advantages):
    return jxent.linear_policy_gradient_loss(
        x, w, labels, advantages, bias=bias, entropy_bonus=BONUS,
        logit_softcap=4.0, temperature=0.6, ignore_index=-100, where=keep,
        reduction=reduction, **mode)

  _assert_matches(fused, _reference(labels, keep, reduction, 4.0, 0.6),
                  (prob["p_x"], prob["p_w"], prob["p_bias"], advantages),
                  (0, 1, 2, 3))


def test_every_derivative_matches_float64_over_several_chunks(rng):
  # Grad, jvp-of-grad and a Hessian (x and the advantages) over three
  # chunks of 4 of the 9 tokens; forward mode alone is a clear error.
  prob = _problem(rng)
  labels = prob["labels"]
  keep = jnp.ones(TOKENS, bool).at[4].set(False)
  x, w, bias = prob["p_x"], prob["p_w"], prob["p_bias"]
  advantages = jnp.asarray(rng.normal(size=TOKENS), jnp.float32)
  tangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def fused(x, a):
    return jxent.linear_policy_gradient_loss(
        x, w, labels, a, bias=bias, entropy_bonus=BONUS, ignore_index=-100,
        where=keep, mode="fast", token_chunk=4)

  def derivatives(loss, x, a, tangent):
    grad = jax.grad(loss, (0, 1))
    jvp_of_grad = jax.jvp(lambda x: grad(x, a)[0], (x,), (tangent,))[1]
    hessian = jax.hessian(lambda rows, a: loss(
        jnp.concatenate([rows, x[1:]]), a), (0, 1))(x[:1], a)
    return grad(x, a), jvp_of_grad, hessian

  # Under jit: compiled once, several times faster to test than op by op.
  got = jax.jit(functools.partial(derivatives, fused))(x, advantages, tangent)
  with jax.enable_x64(True):
    f64 = [jnp.asarray(np.asarray(v), jnp.float64)
           for v in (x, w, bias, advantages, tangent)]
    reference = _reference(labels, keep, "mean")
    want = jax.jit(functools.partial(
        derivatives, lambda x, a: reference(x, f64[1], f64[2], a)))(
            f64[0], f64[3], f64[4])
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda x: fused(x, advantages), (x,), (tangent,))


@pytest.mark.parametrize("mode", MODES)
def test_equals_the_loss_written_on_linear_log_probs(rng, mode):
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], _legal(prob["labels"])
  advantages = jnp.asarray(rng.normal(size=TOKENS), jnp.float32)
  log_q, entropy = jxent.linear_log_probs(x, w, labels, return_entropy=True)
  want = jnp.mean(-(advantages * log_q) - BONUS * entropy)
  got = jxent.linear_policy_gradient_loss(x, w, labels, advantages,
                                          entropy_bonus=BONUS, **mode)
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_an_illegal_label_or_a_nan_advantage_gives_nan_masked_ones_do_not(
    rng, mode):
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], _legal(prob["labels"])
  keep = jnp.ones(TOKENS, bool).at[4].set(False)
  advantages = jnp.ones(TOKENS).at[4].set(jnp.nan)

  def loss(labels, advantages, x=x):
    return jxent.linear_policy_gradient_loss(x, w, labels, advantages,
                                             where=keep, **mode)

  clean = loss(labels, advantages)
  assert np.isfinite(clean)
  np.testing.assert_array_equal(
      loss(labels.at[4].set(10**6), advantages, x.at[4].set(jnp.nan)),
      clean)  # Token 4 is masked: its label, x and advantage are not read.
  assert np.isnan(loss(labels.at[1].set(10**6), advantages))
  assert np.isnan(loss(labels, advantages.at[1].set(jnp.nan)))


def test_bad_arguments_are_refused(rng):
  x, w, labels = jnp.ones((4, 3)), jnp.zeros((3, 5)), jnp.zeros(4, jnp.int32)
  pg = jxent.linear_policy_gradient_loss
  with pytest.raises(ValueError, match="`advantages` must have the tokens'"):
    pg(x, w, labels, jnp.ones(3))
  with pytest.raises(TypeError, match="advantages"):
    pg(x, w, labels, jnp.ones(4, jnp.int32))
  with pytest.raises(ValueError, match="`entropy_bonus` must be finite"):
    pg(x, w, labels, jnp.ones(4), entropy_bonus=float("inf"))
  with pytest.raises(TypeError, match="`entropy_bonus` must be a Python"):
    jax.jit(lambda b: pg(x, w, labels, jnp.ones(4), entropy_bonus=b))(0.1)


@pytest.mark.skipif(len(jax.devices()) < 8,
                    reason="needs 8 devices (see conftest.py)")
def test_sharded_matches_unsharded(rng):
  prob = _problem(rng)
  mesh = jax.make_mesh((2, 4), ("data", "vocab"),
                       axis_types=(AxisType.Auto,) * 2)
  x = jnp.concatenate([prob["p_x"], prob["p_x"][:1] * 0.5])  # 10 tokens
  labels = jnp.concatenate([prob["labels"], jnp.array([3], jnp.int32)])
  advantages = jnp.asarray(rng.normal(size=10), jnp.float32)
  w = jnp.pad(prob["p_w"], [(0, 0), (0, 3)])  # 40 columns, 37 classes

  def local(x, w, a, y):
    return sharded.linear_policy_gradient_loss(
        x, w, y, a, "vocab", vocab_size=37, entropy_bonus=BONUS,
        ignore_index=-100, batch_axis_name="data", mode="fast",
        token_chunk=2)

  on_mesh = jax.shard_map(
      local, mesh=mesh,
      in_specs=(P("data", None), P(None, "vocab"), P("data"), P("data")),
      out_specs=P())
  fn = jax.jit(lambda x, w, a: on_mesh(x, w, a, labels))

  def reference(x, w, a):
    return jxent.linear_policy_gradient_loss(
        x, w[:, :37], labels, a, entropy_bonus=BONUS, ignore_index=-100,
        mode="low_memory")

  np.testing.assert_allclose(fn(x, w, advantages),
                             reference(x, w, advantages), rtol=2e-6)
  got = jax.jit(jax.grad(fn, (0, 1, 2)))(x, w, advantages)
  want = jax.grad(reference, (0, 1, 2))(x, w, advantages)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-6)
