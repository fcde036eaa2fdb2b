"""Tests for the reducing heads' fast mode (token chunks, `mode="fast"`).

The fast mode computes the gradients in the forward pass, chunk by chunk
of tokens that hold whole rows. Each head is compared, in value and in the
gradients for every head argument, with the materialised computation in
float64 (the references of test_linear_heads.py and test_linear.py), for
chunks that do not divide the tokens (the last chunk shifted back over
rows already done). Then: the matmuls it compiles to, second derivatives,
the edges (NaN, masked, empty and ignored tokens), traced options, the
mesh, its memory and its errors.
"""

import functools
import re

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from test_linear import compiled_temp_bytes
from test_linear_heads import (
    RTOL,
    TOKENS,
    _assert_matches,
    _call_pair,
    _heads,
    _js_reference,
    _kl_reference,
    _legal,
    _logits,
    _problem,
    _top_k,
    _top_k_reference,
)

import jxent
from jxent import sharded

# (token_chunk, reduction): None is the default (one chunk of the 9 tokens
# here); 4 leaves one token over (the last chunk is shifted back); 1 is a
# chunk a token.
CHUNKS_AND_REDUCTIONS = [(None, "mean"), (4, "sum"), (1, "mean")]
OPTIONS = dict(logit_softcap=4.0, temperature=0.6)


def _reduce(reference, reduction, weights):
  """A per-token reference reduced as the head does ("mean" over weights)."""
  def reduced(*args):
    value = reference(*args)
    if reduction == "sum":
      return jnp.sum(value)
    return jnp.sum(value) / jnp.sum(weights.astype(value.dtype))
  return reduced


def materialised(x, w, labels, *, bias=None, logit_softcap=None, **options):
  """The cross-entropy of the whole logits (a -inf stays -inf under the
  cap), in the inputs' precision."""
  logits = _logits(x, w, bias, logit_softcap, 1.0)
  return jxent.softmax_cross_entropy_with_integer_labels(logits, labels,
                                                         **options)


def _where():
  return jnp.ones(TOKENS, bool).at[4].set(False)


@pytest.mark.parametrize(("token_chunk", "reduction"), CHUNKS_AND_REDUCTIONS)
@pytest.mark.parametrize("name", ["kl", "js"])
def test_pair_heads_match_float64(rng, name, token_chunk, reduction):
  prob = _problem(rng)
  where = _where()
  fn = dict(kl=jxent.linear_kl_divergence, js=jxent.linear_js_divergence)
  extra = dict(beta=0.3) if name == "js" else {}
  fused = _call_pair(fn[name], where=where, reduction=reduction, mode="fast",
                     token_chunk=token_chunk, **extra, **OPTIONS)
  per_token = (_kl_reference(where, 4.0, 0.6) if name == "kl"
               else _js_reference(0.3, where, 4.0, 0.6))
  reference = _reduce(per_token, reduction, where)
  _assert_matches(fused, reference, _heads(prob), tuple(range(6)))


@pytest.mark.parametrize(("token_chunk", "reduction"), CHUNKS_AND_REDUCTIONS)
def test_top_k_matches_float64(rng, token_chunk, reduction):
  prob = _problem(rng)
  indices, teacher = _top_k(rng)
  where = _where()

  def fused(x, w, bias):
    return jxent.linear_kl_divergence_from_top_k(
        indices, teacher, x, w, tail="bin", bias=bias, where=where,
        reduction=reduction, mode="fast", token_chunk=token_chunk, **OPTIONS)

  reference = _reduce(_top_k_reference(indices, teacher, "bin", where, 4.0,
                                       0.6), reduction, where)
  _assert_matches(fused, reference,
                  (prob["p_x"], prob["p_w"], prob["p_bias"]), (0, 1, 2))


@pytest.mark.parametrize(("token_chunk", "reduction"), CHUNKS_AND_REDUCTIONS)
def test_cross_entropy_matches_float64(rng, token_chunk, reduction):
  prob = _problem(rng)
  labels = prob["labels"]  # One is ignored (-100); padding columns at -inf.
  options = dict(ignore_index=-100, label_smoothing=0.1, z_loss=1e-3,
                 logit_softcap=4.0, reduction=reduction)

  def fused(x, w, bias):
    return jxent.linear_softmax_cross_entropy(
        x, w, labels, bias=bias, mode="fast", token_chunk=token_chunk,
        **options)

  def reference(x, w, bias):
    return materialised(x, w, labels, bias=bias, **options)

  _assert_matches(fused, reference,
                  (prob["p_x"], prob["p_w"], prob["p_bias"]), (0, 1, 2))


def test_auto_is_fast_for_a_reduction_and_low_memory_otherwise(rng):
  # The modes give the same numbers, so tell them apart by their matmuls.
  x, w = jnp.ones((256, 8)), jnp.ones((8, 100))
  labels = jnp.zeros(256, jnp.int32)

  def dots(**kwargs):
    return _dots(lambda x, w: jxent.linear_softmax_cross_entropy(
        x, w, labels, **kwargs), x, w)

  fast, low = dots(token_chunk=32), dots(block_size=32)
  assert (fast, low) == (3, 4)
  assert dots() == fast  # "mean": the fast mode.
  assert dots(block_size=32, mode="auto") == low  # The walk's setting.
  few = jnp.ones((32, 8)), jnp.zeros(32, jnp.int32)  # Under 64 tokens.
  assert _dots(lambda x, w: jxent.linear_softmax_cross_entropy(
      x, w, few[1]), few[0], w) == _dots(
          lambda x, w: jxent.linear_softmax_cross_entropy(
              x, w, few[1], mode="low_memory"), few[0], w)
  assert _dots(lambda x, w: jnp.sum(jxent.linear_softmax_cross_entropy(
      x, w, labels, reduction="none", block_size=32)), x, w) == low


def _dots(loss, *args):
  """Matmuls in the compiled loss and gradient (XLA has merged repeats)."""
  text = jax.jit(jax.value_and_grad(loss, tuple(range(len(args))))).lower(
      *args).compile().as_text()
  return len(re.findall(r"\sdot\(", text))


def _traced_dots(loss, *args):
  """Matmuls in the traced loss and gradient, loop bodies included."""
  def count(jaxpr):
    return sum(int(eqn.primitive.name == "dot_general") + sum(
        count(sub) for sub in jax.extend.core.jaxprs_in_params(eqn.params))
               for eqn in jaxpr.eqns)
  return count(jax.make_jaxpr(jax.value_and_grad(
      loss, tuple(range(len(args)))))(*args).jaxpr)


@pytest.mark.parametrize("name", ["ce", "kl", "js", "top_k",
                                  "policy_gradient"])
def test_fast_mode_makes_each_logit_once(name):
  # Issue 21: logits, dx and dw for the student (3 matmuls in each loop);
  # a frozen teacher adds its logits alone. The low-memory walk makes the
  # student's logits twice (and JS the teacher's more).
  tokens, dim, vocab = 256, 8, 100
  x, w = jnp.ones((tokens, dim)), jnp.ones((dim, vocab))
  tx, tw = jnp.ones((tokens, dim + 2)), jnp.ones((dim + 2, vocab))
  labels = jnp.zeros(tokens, jnp.int32)
  indices = jnp.tile(jnp.arange(4, dtype=jnp.int32), (tokens, 1))
  teacher = jnp.full((tokens, 4), -2.0)
  heads = dict(
      ce=lambda x, w, **k: jxent.linear_softmax_cross_entropy(
          x, w, labels, label_smoothing=0.1, **k),
      kl=lambda x, w, **k: jxent.linear_kl_divergence(
          tx, tw, x, w, reduction="mean", **k),
      js=lambda x, w, **k: jxent.linear_js_divergence(
          tx, tw, x, w, reduction="mean", **k),
      top_k=lambda x, w, **k: jxent.linear_kl_divergence_from_top_k(
          indices, teacher, x, w, tail="bin", reduction="mean", **k),
      policy_gradient=lambda x, w, **k: jxent.linear_policy_gradient_loss(
          x, w, labels, jnp.ones(tokens), entropy_bonus=0.01, **k))
  head = heads[name]
  # In the traced program itself: no reliance on XLA merging repeats.
  fast = _traced_dots(lambda x, w: head(x, w, mode="fast", token_chunk=32),
                      x, w)
  low = _traced_dots(
      lambda x, w: head(x, w, mode="low_memory", block_size=32), x, w)
  assert _dots(lambda x, w: head(x, w, mode="fast", token_chunk=32), x,
               w) == fast
  teacher_units = 1 if name in ("kl", "js") else 0
  assert fast == 3 + teacher_units, (fast, low)
  assert low > fast


def test_second_derivatives_match_float64(rng):
  prob = _problem(rng)
  x, w, bias, labels = prob["p_x"], prob["p_w"], prob["p_bias"], prob[
      "labels"]
  options = dict(ignore_index=-100, label_smoothing=0.1, logit_softcap=4.0)
  tangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def hvp(loss, x, w, bias, tangent):
    grad = jax.grad(lambda x: loss(x, w, bias))
    return jax.jvp(grad, (x,), (tangent,))[1]

  fused = lambda x, w, b: jxent.linear_softmax_cross_entropy(  # noqa: E731
      x, w, labels, bias=b, mode="fast", token_chunk=4, **options)
  # Under jit: each derivative compiles once instead of dispatching op by
  # op, several times faster to test.
  got = jax.jit(functools.partial(hvp, fused))(x, w, bias, tangent)
  with jax.enable_x64(True):
    f64 = [jnp.asarray(np.asarray(a), jnp.float64)
           for a in (x, w, bias, tangent)]
    want = jax.jit(functools.partial(
        hvp, lambda x, w, b: materialised(x, w, labels, bias=b,
                                          reduction="mean", **options)))(*f64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # A whole Hessian (forward over reverse) over three chunks of 4 tokens,
  # the last shifted back: the first two tokens' x.
  def of_rows(loss, x, w, bias):
    return lambda rows: loss(jnp.concatenate([rows, x[2:]]), w, bias)
  hessian = jax.jit(jax.hessian(of_rows(fused, x, w, bias)))(x[:2])
  with jax.enable_x64(True):
    want = jax.jit(jax.hessian(of_rows(
        lambda x, w, b: materialised(x, w, labels, bias=b, reduction="mean",
                                     **options), *f64[:3])))(f64[0][:2])
  np.testing.assert_allclose(hessian, want, rtol=1e-4, atol=1e-6)
  # Forward mode alone is refused, clearly (the rule is a custom VJP).
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(lambda x: fused(x, w, bias), (x,), (tangent,))


def test_traced_options_get_their_gradients(rng):
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], prob["labels"]

  def loss(s, z, **mode):
    return jxent.linear_softmax_cross_entropy(
        x, w, labels, ignore_index=-100, label_smoothing=s, z_loss=z,
        **mode)

  fast = jax.jit(jax.grad(lambda s, z: loss(s, z, mode="fast", token_chunk=4),
                          (0, 1)))(0.1, 0.01)
  with jax.enable_x64(True):
    want = jax.grad(lambda s, z: materialised(
        jnp.asarray(np.asarray(x), jnp.float64),
        jnp.asarray(np.asarray(w), jnp.float64), labels, ignore_index=-100,
        label_smoothing=s, z_loss=z, reduction="mean"), (0, 1))(0.1, 0.01)
  np.testing.assert_allclose(fast, want, rtol=RTOL)


@pytest.mark.parametrize("name", ["ce", "kl"])
def test_nan_reaches_the_loss_and_gradient_but_not_from_a_masked_token(
    rng, name):
  prob = _problem(rng)
  x, w, labels = prob["p_x"], prob["p_w"], jnp.abs(prob["labels"])
  where = _where()  # Token 4 is masked out.

  def loss(x):
    if name == "ce":
      labels_ = labels.at[4].set(-100)
      return jxent.linear_softmax_cross_entropy(
          x, w, labels_, ignore_index=-100, mode="fast", token_chunk=4)
    return jxent.linear_kl_divergence(
        prob["q_x"], prob["q_w"], x, w, where=where, reduction="mean",
        mode="fast", token_chunk=4)

  clean = jax.value_and_grad(loss)(x)
  masked = jax.value_and_grad(loss)(x.at[4, 0].set(jnp.nan))
  np.testing.assert_array_equal(masked[0], clean[0])
  np.testing.assert_array_equal(masked[1], clean[1])
  value, grad = jax.value_and_grad(loss)(x.at[6, 1].set(jnp.nan))
  assert np.isnan(value) and np.isnan(grad[6]).all()


def test_an_empty_token_does_not_count_in_the_mean(rng):
  prob = _problem(rng)
  # With every weight positive, an x row of -inf makes every logit -inf:
  # token 2 of P and Q is empty, and the mean is over the other 8.
  p_w, q_w = jnp.abs(prob["p_w"]) + 0.1, jnp.abs(prob["q_w"]) + 0.1
  p_x, q_x = prob["p_x"].at[2].set(-jnp.inf), prob["q_x"].at[2].set(-jnp.inf)
  per_token = jxent.linear_kl_divergence(p_x, p_w, q_x, q_w)
  assert per_token[2] == 0 and np.isfinite(per_token).all()

  def mean(q_x):
    return jxent.linear_kl_divergence(p_x, p_w, q_x, q_w, reduction="mean",
                                      mode="fast", token_chunk=4)

  value, dx = jax.value_and_grad(mean)(q_x)
  np.testing.assert_allclose(value, jnp.sum(per_token) / 8, rtol=1e-6)
  np.testing.assert_array_equal(dx[2], 0.0)
  assert np.isfinite(dx).all()


def test_all_ignored_batch_gives_zero_and_zero_gradient(rng):
  prob = _problem(rng)
  labels = jnp.full(TOKENS, -100, jnp.int32)
  loss, grads = jax.value_and_grad(
      lambda x, w: jxent.linear_softmax_cross_entropy(
          x, w, labels, ignore_index=-100, mode="fast", token_chunk=4),
      (0, 1))(prob["p_x"], prob["p_w"])
  assert loss == 0
  assert all(not np.any(g) for g in grads)


def test_bfloat16_accumulates_in_float32(rng):
  prob = _problem(rng)
  x, w, labels = (prob["p_x"].astype(jnp.bfloat16),
                  prob["p_w"].astype(jnp.bfloat16), jnp.abs(prob["labels"]))
  loss = lambda **k: jax.value_and_grad(  # noqa: E731
      lambda x, w: jxent.linear_softmax_cross_entropy(x, w, labels, **k),
      (0, 1))(x, w)
  fast, low = loss(mode="fast", token_chunk=2), loss(mode="low_memory")
  assert fast[0].dtype == jnp.float32
  assert fast[1][0].dtype == fast[1][1].dtype == jnp.bfloat16
  np.testing.assert_allclose(fast[0], low[0], rtol=1e-6)
  for a, b in zip(fast[1], low[1], strict=True):
    np.testing.assert_allclose(np.asarray(a, np.float32),
                               np.asarray(b, np.float32), rtol=1e-2,
                               atol=1e-4)


def test_bad_modes_are_refused():
  x, w, labels = jnp.ones((4, 3)), jnp.zeros((3, 5)), jnp.zeros(4, jnp.int32)
  ce = lambda **k: jxent.linear_softmax_cross_entropy(  # noqa: E731
      x, w, labels, **k)
  with pytest.raises(ValueError, match="`mode` must be one of"):
    ce(mode="quick")
  with pytest.raises(ValueError, match="needs the reduction inside"):
    ce(mode="fast", reduction="none")
  with pytest.raises(ValueError, match="needs the reduction inside"):
    ce(token_chunk=2, reduction="none")
  with pytest.raises(ValueError, match="`block_size` sets the low-memory"):
    ce(mode="fast", block_size=2)
  with pytest.raises(ValueError, match="`token_chunk` sets the fast mode"):
    ce(mode="low_memory", token_chunk=2)
  with pytest.raises(TypeError, match="`token_chunk` must be an int"):
    ce(token_chunk=True)
  with pytest.raises(ValueError, match="`token_chunk` must be >= 1"):
    ce(token_chunk=0)
  with pytest.raises(ValueError, match="needs the reduction inside"):
    jxent.linear_kl_divergence(x, w, x, w, mode="fast")  # "none" default


def test_temporary_memory_is_the_gradients_and_a_few_chunks():
  tokens, dim, vocab, chunk = 1024, 64, 32768, 128
  x = jnp.zeros((tokens, dim), jnp.float32)
  w = jnp.zeros((dim, vocab), jnp.float32)
  labels = jnp.zeros((tokens,), jnp.int32)

  def temp(loss):
    return compiled_temp_bytes(loss, x, w)

  fast = temp(lambda x, w: jxent.linear_softmax_cross_entropy(
      x, w, labels, token_chunk=chunk))
  reference = temp(lambda x, w: materialised(x, w, labels, reduction="mean"))
  logits_bytes = tokens * vocab * 4
  assert reference >= logits_bytes  # The check can fail: it sees them.
  # The float32 dx and dw, kept for the backward pass, and at most four
  # float32 [chunk, V] buffers.
  limit = (tokens * dim + dim * vocab) * 4 + 4 * chunk * vocab * 4
  assert fast <= limit, (fast, limit)
  # The materialised loss keeps one float32 [tokens, V] buffer (the kept
  # exp, which its gradient reuses); the fast mode well under half of it.
  assert fast < reference / 2, (fast, reference)


@pytest.mark.skipif(len(jax.devices()) < 8,
                    reason="needs 8 devices (see conftest.py)")
def test_sharded_fast_mode_matches_the_unsharded_walk(rng):
  prob = _problem(rng)
  mesh = jax.make_mesh((2, 4), ("data", "vocab"),
                       axis_types=(AxisType.Auto,) * 2)
  vocab = 40  # 37 classes padded to a multiple of 4 devices.
  pad = lambda a, value: jnp.pad(  # noqa: E731
      a, [(0, 0)] * (a.ndim - 1) + [(0, vocab - a.shape[-1])],
      constant_values=value)
  x = jnp.concatenate([prob["p_x"], prob["p_x"][:1] * 0.5])  # 10 tokens
  labels = jnp.concatenate([prob["labels"], jnp.array([3], jnp.int32)])
  w, bias = pad(prob["p_w"], 0.0), pad(prob["p_bias"], 0.0)

  def local(x, w, b, y, s):
    return sharded.linear_softmax_cross_entropy(
        x, w, y, "vocab", local_bias=b, vocab_size=37, ignore_index=-100,
        label_smoothing=s, z_loss=1e-3, batch_axis_name="data", mode="fast",
        token_chunk=2)

  fn = jax.jit(jax.shard_map(
      local, mesh=mesh,
      in_specs=(P("data", None), P(None, "vocab"), P("vocab"), P("data"),
                P()),
      out_specs=P()))

  def reference(x, w, b, y, s):
    return jxent.linear_softmax_cross_entropy(
        x, w[:, :37], y, bias=b[:37], ignore_index=-100, label_smoothing=s,
        z_loss=1e-3, mode="low_memory")

  args = (x, w, bias, labels, jnp.float32(0.1))
  np.testing.assert_allclose(fn(*args), reference(*args), rtol=2e-5)
  got = jax.jit(jax.grad(fn, (0, 1, 2, 4)))(*args)
  want = jax.grad(reference, (0, 1, 2, 4))(*args)
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-6)


def test_default_token_chunk_depends_on_shapes_and_platform():
  from jxent._vocab.chunks import default_token_chunk
  # One float32 [chunk, V] buffer near 32 MiB on a CPU, 1 GiB on a GPU.
  assert default_token_chunk(2048, 32768, "cpu") == 256
  assert default_token_chunk(8192, 256000, "gpu") == 1024
  assert default_token_chunk(100, 32768, "cpu") == 16  # A quarter, or 16.
  assert default_token_chunk(8, 32768, "cpu") == 8  # All the tokens.
  assert default_token_chunk(4096, 10**7, "cpu") == 16  # At least 16.
  assert default_token_chunk(0, 10, "cpu") == 1
  # Two heads (KL, JS) share the budget.
  assert default_token_chunk(2048, 32768, "cpu", heads=2) == 128
  assert default_token_chunk(8192, 256000, "gpu", heads=2) == 512


def _chunk_loop_lengths(jaxpr):
  """The lengths of the scans (static `fori_loop`s) in a jaxpr, nested too."""
  lengths = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      lengths.append(eqn.params["length"])
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          lengths += _chunk_loop_lengths(inner)
  return lengths


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="CPU budget")
def test_two_head_losses_take_half_the_default_chunk():
  # 4096 tokens, V = 32768: one head's chunk is 256 tokens on a CPU (16
  # chunks), two heads' 128 (32 chunks).
  tokens, dim, vocab = 4096, 8, 32768
  x = jax.ShapeDtypeStruct((tokens, dim), jnp.float32)
  w = jax.ShapeDtypeStruct((dim, vocab), jnp.float32)
  labels = jax.ShapeDtypeStruct((tokens,), jnp.int32)
  cases = [
      (16, lambda x, w, y: jxent.linear_softmax_cross_entropy(x, w, y),
       (x, w, labels), (0, 1)),
      (32, lambda tx, tw, x, w: jxent.linear_kl_divergence(
          tx, tw, x, w, reduction="mean"), (x, w, x, w), (2, 3)),
      (32, lambda tx, tw, x, w: jxent.linear_js_divergence(
          tx, tw, x, w, reduction="mean"), (x, w, x, w), (2, 3)),
  ]
  for chunks, loss, args, argnums in cases:
    grad = jax.grad(loss, argnums)
    lengths = _chunk_loop_lengths(jax.make_jaxpr(grad)(*args).jaxpr)
    assert lengths == [chunks], (chunks, lengths)


@pytest.mark.skipif(len(jax.devices()) < 8,
                    reason="needs 8 devices (see conftest.py)")
@pytest.mark.parametrize("mode", ["fast", "low_memory"])
def test_sharded_log_sum_exp_and_argmax_match_unsharded(rng, mode):
  prob = _problem(rng)
  mesh = jax.make_mesh((2, 4), ("data", "vocab"),
                       axis_types=(AxisType.Auto,) * 2)
  x = jnp.concatenate([prob["p_x"], prob["p_x"][:1] * 0.5])  # 10 tokens
  labels = jnp.concatenate([prob["labels"], jnp.array([3], jnp.int32)])
  w = jnp.pad(prob["p_w"], [(0, 0), (0, 3)])  # 40 columns, 37 classes

  def local(x, w, y):
    return sharded.linear_softmax_cross_entropy(
        x, w, y, "vocab", vocab_size=37, ignore_index=-100,
        batch_axis_name="data", mode=mode, return_lse=True,
        return_argmax=True)

  fn = jax.jit(jax.shard_map(
      local, mesh=mesh, in_specs=(P("data", None), P(None, "vocab"),
                                  P("data")),
      out_specs=(P(), P("data"), P("data"))))
  got = fn(x, w, labels)
  want = jxent.linear_softmax_cross_entropy(
      x, w[:, :37], labels, ignore_index=-100, return_lse=True,
      return_argmax=True, mode="low_memory")
  for g, r in zip(got, want, strict=True):
    np.testing.assert_allclose(g, r, rtol=2e-6)
  np.testing.assert_array_equal(got[2], want[2])


def test_an_empty_batch_differentiates_to_zero():
  x, w = jnp.ones((0, 4)), jnp.ones((4, 7))
  labels = jnp.zeros((0,), jnp.int32)
  for mode in ("auto", "fast"):
    loss, (dx, dw) = jax.value_and_grad(
        lambda x, w: jxent.linear_softmax_cross_entropy(
            x, w, labels, mode=mode), (0, 1))(x, w)
    assert loss == 0 and dx.shape == (0, 4) and not np.any(dw)


def test_monitoring_outputs_are_the_same_under_a_gradient(rng):
  # With a gradient the fast mode's chunks write them; without, the walk.
  x, w = jnp.asarray(rng.normal(size=(70, 6)), jnp.float32), jnp.asarray(
      rng.normal(size=(6, 37)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 37, 70), jnp.int32).at[5].set(-1)

  def loss(x):
    loss, lse, arg = jxent.linear_softmax_cross_entropy(
        x, w, labels, ignore_index=-1, return_lse=True, return_argmax=True,
        mode="fast", token_chunk=16)
    return loss, (lse, arg)

  (_, (lse, arg)), _ = jax.value_and_grad(loss, has_aux=True)(x)
  _, (want_lse, want_arg) = loss(x)
  np.testing.assert_allclose(lse, want_lse, rtol=1e-6)
  np.testing.assert_array_equal(arg, want_arg)
  assert lse[5] == 0 and arg[5] == -1


def test_float64_inputs_run_in_float64(rng):
  prob = _problem(rng)
  labels = _legal(prob["labels"])
  with jax.enable_x64(True):
    x, w = (jnp.asarray(np.asarray(prob[k]), jnp.float64)
            for k in ("p_x", "p_w"))
    fast = jax.value_and_grad(lambda x: jxent.linear_softmax_cross_entropy(
        x, w, labels, mode="fast", token_chunk=4))(x)
    want = jax.value_and_grad(lambda x: materialised(
        x, w, labels, reduction="mean"))(x)
    assert fast[0].dtype == fast[1].dtype == jnp.float64
    np.testing.assert_allclose(fast[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(fast[1], want[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("mode", ["fast", "low_memory"])
def test_heads_lower_for_cuda_at_the_gpu_bench_shape(mode):
  # Gemma 2 2B's output layer, in bfloat16, with the sizes a GPU would pick
  # (the defaults follow the backend that traces, here a CPU). Lowering
  # needs no memory: the shapes are abstract.
  from jxent._vocab.blocks import default_block_size
  from jxent._vocab.chunks import default_token_chunk
  tokens, dim, vocab, k = 8192, 2304, 256000, 64
  if mode == "fast":
    sizes = {"token_chunk": default_token_chunk(tokens, vocab, "gpu")}
    pair = {"token_chunk": default_token_chunk(tokens, vocab, "gpu", 2)}
  else:
    sizes = pair = {"block_size": default_block_size(tokens, vocab, "gpu")}
  spec = jax.ShapeDtypeStruct
  head = (spec((tokens, dim), jnp.bfloat16), spec((dim, vocab), jnp.bfloat16))
  labels = spec((tokens,), jnp.int32)
  indices = spec((tokens, k), jnp.int32)
  teacher = spec((tokens, k), jnp.float32)
  losses = {
      "ce": (lambda x, w, y: jxent.linear_softmax_cross_entropy(
          x, w, y, mode=mode, **sizes), (labels,)),
      "kl": (lambda x, w, tx, tw: jxent.linear_kl_divergence(
          tx, tw, x, w, reduction="mean", mode=mode, **pair), head),
      "js": (lambda x, w, tx, tw: jxent.linear_js_divergence(
          tx, tw, x, w, reduction="mean", mode=mode, **pair), head),
      "top_k": (lambda x, w, i, t: jxent.linear_kl_divergence_from_top_k(
          i, t, x, w, tail="bin", reduction="mean", mode=mode, **sizes),
                (indices, teacher)),
  }
  for name, (loss, data) in losses.items():
    step = jax.jit(jax.value_and_grad(loss, (0, 1)))
    exported = jax.export.export(step, platforms=["cuda"])(*head, *data)
    assert exported.platforms == ("cuda",), name
    assert "while" in exported.mlir_module(), name  # The walk, not unrolled.
