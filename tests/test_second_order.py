"""Second derivatives of the vocabulary-scale heads, against float64.

`jax.hessian` (forward over reverse), reverse over reverse and
Hessian-vector products (`jax.jvp` of `jax.grad`) differentiate a head's
custom VJP rule: its forward walk and its backward walk. Each must equal the
same derivative of the materialised computation (the logits built whole,
then the textbook formula) whenever the vocabulary spans several blocks,
which is every real use. Forward mode alone (`jax.jvp` of the loss) is
refused by JAX with a clear error, which is checked too.

Regression (issue 18): the online log-sum-exp rescaled its running sum with
exp(running max - new shift), through which a gradient flowed; second
derivatives were off by up to 1.9 with more than one block.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxent

TOKENS, DIM, VOCAB, BLOCK = 4, 3, 10, 4  # three blocks, the last shifted
RTOL = 1e-7


def _logits(x, w, bias=None, cap=None, temperature=1.0):
  z = x @ w
  if bias is not None:
    z = z + bias[None, :]
  if cap is not None:
    z = cap * jnp.tanh(z / cap)
  return z / temperature


def _xlogy(p, y):
  nonzero = p > 0
  return jnp.where(nonzero, p * jnp.where(nonzero, y, 0), 0)


def _unpack(theta, shapes):
  parts, start = [], 0
  for shape in shapes:
    size = int(np.prod(shape))
    parts.append(theta[start:start + size].reshape(shape))
    start += size
  return parts


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  return dict(
      x=rng.normal(size=(TOKENS, DIM)), w=rng.normal(size=(DIM, VOCAB)),
      bias=rng.normal(size=(VOCAB,)), qx=rng.normal(size=(TOKENS, DIM)),
      qw=rng.normal(size=(DIM, VOCAB)),
      labels=np.array([1, 5, 9, 2]),
      # A per-token weighting of the outputs, so that the rows' cotangents
      # differ (a plain sum would hide a wrong per-row factor).
      weights=rng.uniform(0.5, 1.5, size=TOKENS),
      top_k_indices=np.array([[0, 4, 9], [1, 2, 3], [8, 5, 6], [7, 9, 0]]),
      direction=rng.normal(size=(2 * TOKENS * DIM + 2 * DIM * VOCAB
                                 + VOCAB,)))


def _cross_entropy(fused, options):
  shapes = [(TOKENS, DIM), (DIM, VOCAB), (VOCAB,)]

  def head(theta, p):
    x, w, bias = _unpack(theta, shapes)
    return jnp.dot(p["weights"], jxent.linear_softmax_cross_entropy(
        x, w, p["labels"], bias=bias, block_size=BLOCK, reduction="none",
        **options))

  def reference(theta, p):
    x, w, bias = _unpack(theta, shapes)
    loss = jxent.softmax_cross_entropy_with_integer_labels(
        _logits(x, w, bias, options.get("logit_softcap")), p["labels"],
        **{k: v for k, v in options.items() if k != "logit_softcap"},
        reduction="none")
    return jnp.dot(p["weights"], loss)

  return (head if fused else reference), shapes


def _log_probs(fused, options, output):
  shapes = [(TOKENS, DIM), (DIM, VOCAB), (VOCAB,)]
  cap, temperature = options.get("logit_softcap"), options.get(
      "temperature", 1.0)

  def head(theta, p):
    x, w, bias = _unpack(theta, shapes)
    outputs = jxent.linear_log_probs(x, w, p["labels"], bias=bias,
                                     return_entropy=True, block_size=BLOCK,
                                     **options)
    return jnp.dot(p["weights"], outputs[output])

  def reference(theta, p):
    x, w, bias = _unpack(theta, shapes)
    log_q = jax.nn.log_softmax(_logits(x, w, bias, cap, temperature))
    picked = jnp.take_along_axis(log_q, p["labels"][:, None], axis=1)[:, 0]
    entropy = -jnp.sum(_xlogy(jnp.exp(log_q), log_q), axis=1)
    return jnp.dot(p["weights"], (picked, entropy)[output])

  return (head if fused else reference), shapes


_PAIR_SHAPES = [(TOKENS, DIM), (DIM, VOCAB), (TOKENS, DIM), (DIM, VOCAB)]


def _kl(fused, options):
  cap, temperature = options.get("logit_softcap"), options.get(
      "temperature", 1.0)

  def head(theta, p):
    return jnp.dot(p["weights"], jxent.linear_kl_divergence(
        *_unpack(theta, _PAIR_SHAPES), block_size=BLOCK, **options))

  def reference(theta, p):
    px, pw, qx, qw = _unpack(theta, _PAIR_SHAPES)
    log_p = jax.nn.log_softmax(_logits(px, pw, None, cap, temperature))
    log_q = jax.nn.log_softmax(_logits(qx, qw, None, cap, temperature))
    kl = jnp.sum(_xlogy(jnp.exp(log_p), log_p - log_q), axis=1)
    return jnp.dot(p["weights"], kl)

  return (head if fused else reference), _PAIR_SHAPES


def _js(fused, beta):
  def head(theta, p):
    return jnp.dot(p["weights"], jxent.linear_js_divergence(
        *_unpack(theta, _PAIR_SHAPES), beta=beta, block_size=BLOCK))

  def reference(theta, p):
    px, pw, qx, qw = _unpack(theta, _PAIR_SHAPES)
    log_p, log_q = jax.nn.log_softmax(px @ pw), jax.nn.log_softmax(qx @ qw)
    m = beta * jnp.exp(log_p) + (1 - beta) * jnp.exp(log_q)
    log_m = jnp.log(m)
    js = beta * jnp.sum(_xlogy(jnp.exp(log_p), log_p - log_m), axis=1) + (
        1 - beta) * jnp.sum(_xlogy(jnp.exp(log_q), log_q - log_m), axis=1)
    return jnp.dot(p["weights"], js)

  return (head if fused else reference), _PAIR_SHAPES


def _top_k(fused, tail):
  shapes = [(TOKENS, DIM), (DIM, VOCAB), (VOCAB,)]

  def teacher(p):
    log_p = jax.nn.log_softmax(p["qx"] @ p["qw"])
    return jnp.take_along_axis(log_p, p["top_k_indices"], axis=1)

  def head(theta, p):
    x, w, bias = _unpack(theta, shapes)
    return jnp.dot(p["weights"], jxent.linear_kl_divergence_from_top_k(
        p["top_k_indices"], teacher(p), x, w, tail=tail, bias=bias,
        block_size=BLOCK))

  def reference(theta, p):
    x, w, bias = _unpack(theta, shapes)
    log_q = jax.nn.log_softmax(_logits(x, w, bias))
    idx, t = p["top_k_indices"], teacher(p)
    log_q_k = jnp.take_along_axis(log_q, idx, axis=1)
    if tail == "renormalize":
      log_p = t - jax.nn.logsumexp(t, axis=1, keepdims=True)
      kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q_k), axis=1)
    else:
      in_top = jnp.zeros(log_q.shape, bool).at[
          jnp.arange(TOKENS)[:, None], idx].set(True)
      q_tail = jnp.sum(jnp.where(in_top, 0, jnp.exp(log_q)), axis=1)
      r = 1 - jnp.sum(jnp.exp(t), axis=1)
      kl = jnp.sum(jnp.exp(t) * (t - log_q_k), axis=1) + r * (
          jnp.log(r) - jnp.log(q_tail))
    return jnp.dot(p["weights"], kl)

  return (head if fused else reference), shapes


CASES = {
    "ce": lambda fused: _cross_entropy(fused, {}),
    "ce_options": lambda fused: _cross_entropy(fused, dict(
        label_smoothing=0.1, z_loss=1e-2, logit_softcap=3.0)),
    "log_probs": lambda fused: _log_probs(fused, dict(temperature=1.3), 0),
    "entropy": lambda fused: _log_probs(fused, dict(logit_softcap=3.0), 1),
    "kl": lambda fused: _kl(fused, {}),
    "kl_options": lambda fused: _kl(fused, dict(temperature=0.7,
                                                logit_softcap=4.0)),
    "js": lambda fused: _js(fused, 0.3),
    "top_k_renormalize": lambda fused: _top_k(fused, "renormalize"),
    "top_k_bin": lambda fused: _top_k(fused, "bin"),
}

MODES = {
    "hessian": lambda f, theta, v: jax.hessian(f)(theta),
    "reverse_over_reverse": lambda f, theta, v: jax.jacrev(jax.jacrev(f))(
        theta),
    "hessian_vector_product": lambda f, theta, v: jax.jvp(
        jax.grad(f), (theta,), (v,))[1],
}


def _second_derivative(case, fused, mode):
  with jax.enable_x64(True):
    p = {k: jnp.asarray(v) for k, v in _problem().items()}
    fn, shapes = CASES[case](fused)
    size = sum(int(np.prod(s)) for s in shapes)
    theta = jnp.concatenate([p[k].reshape(-1) for k in (
        ("x", "w", "qx", "qw") if len(shapes) == 4 else ("x", "w", "bias"))])
    assert theta.shape == (size,)
    v = p["direction"][:size]
    # One compilation for the whole derivative, rather than op by op.
    derivative = jax.jit(lambda theta, v, p: MODES[mode](
        lambda t: fn(t, p), theta, v))
    return np.asarray(derivative(theta, v, p))


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_second_derivative_matches_materialised_float64(case, mode):
  got = _second_derivative(case, True, mode)
  want = _second_derivative(case, False, mode)
  assert got.dtype == np.float64
  scale = np.max(np.abs(want))
  assert scale > 0
  np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale)


def test_first_order_forward_mode_is_refused_clearly():
  p = _problem()
  x, w = jnp.asarray(p["x"], jnp.float32), jnp.asarray(p["w"], jnp.float32)
  labels = jnp.asarray(p["labels"])
  loss = lambda x: jxent.linear_softmax_cross_entropy(x, w, labels,
                                                      block_size=BLOCK)
  with pytest.raises(TypeError, match="forward-mode"):
    jax.jvp(loss, (x,), (jnp.ones_like(x),))
