"""The linear suites: a loss of ``x @ w`` without materialising the logits.

    python -m bench.linear                      # every linear suite
    python -m bench.linear --suite linear_kl    # one of them
    python -m bench.linear --shapes 2048x512x32768 --dtypes float32

``python -m bench.linear`` is ``python -m bench --suite`` with the suites
below (`NAMES`). Each suite compares, in one process and in rotating rounds:

* ``jxent``: jxent's linear loss, e.g. ``jxent.linear_softmax_cross_entropy``;
* ``materialised``: the loss on the full float32 logits ``x @ w``, as users
  write it;
* ``materialised_bf16``: the logits in the inputs' dtype (``x @ w`` in
  bfloat16), upcast to float32 inside the loss, as a Flax or MaxText
  language model keeps them: the upcast's transpose casts the logits'
  gradient back to bfloat16, so every matmul runs at bfloat16 speed (on
  float32 inputs it is ``materialised``, and is skipped);
* ``chunked``: the same over chunks of tokens in a ``lax.map``, each chunk
  under ``jax.checkpoint``, so only one chunk's logits are alive at a time.

jxent runs as ``jxent`` (its default: for the reducing heads, the fast mode
of token chunks) and, in the reducing suites, as ``jxent_low_memory``
(``mode="low_memory"``, the vocabulary walk).

A suite has one head ``(x, w)`` or, for distillation, a teacher head and a
student head, the student last. The mode is what training runs:
``jax.value_and_grad`` of the mean loss with respect to the student's ``x``
and ``w``, under ``jit``; a teacher head is data. The matmuls bound the
time, not memory traffic, so there is no byte model; XLA's temporary memory
is the point.
"""

import math
import sys

import jax
import jax.numpy as jnp
import optax

from bench.registry import Impl, Lazy, Suite, register

jxent = Lazy("jxent")

TOKEN_CHUNK = 1024
# The policy-gradient loss's entropy bonus (`linear_log_probs`).
ENTROPY_BONUS = 0.01
# The teacher's classes per token (`linear_top_k`), and the share of its
# mass on them.
TOP_K = 64
TOP_K_MASS = 0.9

# The suites registered below, in order: what ``python -m bench.linear`` runs.
NAMES: list[str] = []


def _logits(x, w):
  return jnp.dot(x, w, preferred_element_type=jnp.float32)


def materialised(loss, heads=1):
  """``loss(x @ w, ..., *extra).mean()``, each head's logits materialised in
  float32; the inputs are ``x, w`` per head, then the per-token extras."""
  def fn(*args):
    pairs, extra = args[:2 * heads], args[2 * heads:]
    logits = [_logits(x, w) for x, w in zip(pairs[::2], pairs[1::2],
                                            strict=True)]
    return loss(*logits, *extra).mean()
  return fn


def materialised_in_dtype(loss, heads=1):
  """`materialised`, with each head's logits in the inputs' dtype and
  upcast to float32 inside the loss."""
  def fn(*args):
    pairs, extra = args[:2 * heads], args[2 * heads:]
    logits = [jnp.dot(x, w).astype(jnp.float32)
              for x, w in zip(pairs[::2], pairs[1::2], strict=True)]
    return loss(*logits, *extra).mean()
  return fn


def chunked(loss, heads=1):
  """`materialised` over chunks of `TOKEN_CHUNK` tokens, each checkpointed."""
  def fn(*args):
    pairs, extra = args[:2 * heads], args[2 * heads:]
    xs, ws = pairs[::2], pairs[1::2]
    tokens = xs[0].shape[0]
    chunk = min(TOKEN_CHUNK, tokens)

    @jax.checkpoint
    def chunk_loss(split):
      logits = [_logits(xc, w) for xc, w in zip(split[:heads], ws,
                                                strict=True)]
      return loss(*logits, *split[heads:]).sum()

    split = [a.reshape(-1, chunk, *a.shape[1:]) for a in (*xs, *extra)]
    return jnp.sum(jax.lax.map(chunk_loss, split)) / tokens
  return fn


def _check_tokens(shape):
  tokens = shape[0]
  if tokens > TOKEN_CHUNK and tokens % TOKEN_CHUNK:
    return (f"tokens {tokens} is not a multiple of the chunked peer's "
            f"{TOKEN_CHUNK}")
  return None


def linear_suite(name, title, *, extra, jxent_fn, jxent_code, loss,
                 loss_code, heads=1, note="") -> Suite:
  """A suite on heads of hidden states ``x`` (tokens, dim) and weights
  ``w`` (dim, vocab).

  Args:
    name: The suite's name.
    title: What it computes.
    extra: ``extra(draw, tokens, vocab, dtype)``: the inputs after the
      heads, each with the tokens first.
    jxent_fn: ``jxent_fn(*heads, *extra, **options)``, jxent's loss (per
      token or its mean), each head given as ``x, w``.
    jxent_code: Its user code.
    loss: ``loss(*logits, *extra)``: the per-token loss on each head's
      logits, which the ``materialised`` and ``chunked`` peers call.
    loss_code: Its user code.
    heads: The number of heads: 1, or 2 for a teacher and a student. The
      last head is the student, the one differentiated.
    note: How to read its results, for table.md.

  Returns:
    The suite.
  """
  def inputs(draw, shape, dtype):
    tokens, dim, vocab = shape
    pairs = []
    for _ in range(heads):
      pairs.append(draw.normal((tokens, dim)).astype(dtype))
      pairs.append(draw.normal((dim, vocab), dim ** -0.5).astype(dtype))
    return (*pairs, *extra(draw, tokens, vocab, dtype))

  per_head = " per head" if heads > 1 else ""
  student = 2 * (heads - 1)
  return Suite(
      name=name, title=title, dims=("tokens", "dim", "vocab"), inputs=inputs,
      jxent=jxent_fn, jxent_code=jxent_code,
      peers=(
          Impl("materialised", materialised(loss, heads),
               f"{loss_code} on logits = x @ w{per_head} in float32",
               f32=True),
          Impl("materialised_bf16", materialised_in_dtype(loss, heads),
               f"{loss_code} on logits = (x @ w{per_head}).astype(float32),"
               " the matmul in the inputs' dtype", upcasts=True,
               rounded=True),
          Impl("chunked", chunked(loss, heads),
               f"the same over {TOKEN_CHUNK}-token chunks under "
               "jax.checkpoint in lax.map", f32=True),
      ),
      shapes={"quick": ((256, 32, 1000),), "cpu": ((2048, 512, 32768),),
              # Gemma 2 2B's output layer, as in Cut Cross-Entropy.
              "gpu": ((8192, 2304, 256000),)},
      dtypes={"quick": ("float32",), "cpu": ("float32",),
              "gpu": ("bfloat16",)},
      min_bytes=None,
      byte_model="none, the matmuls bound the time: compare times and "
                 "temporary memory",
      baseline=("materialised", "materialised_bf16", "chunked"),
      modes=("vjp",),
      grad_argnums=(student, student + 1), check_shape=_check_tokens, reps=5,
      max_case_s=20.0, note=note, default=False)


def _register(suite: Suite) -> Suite:
  NAMES.append(suite.name)
  return register(suite)


_register(linear_suite(
    "linear_ce", "softmax cross-entropy of x @ w, integer labels",
    extra=lambda draw, tokens, vocab, dtype: (draw.integers(vocab, (tokens,)),),
    jxent_fn=jxent.linear_softmax_cross_entropy,
    jxent_code="jxent.linear_softmax_cross_entropy(x, w, y)",
    loss=optax.softmax_cross_entropy_with_integer_labels,
    loss_code="optax.softmax_cross_entropy_with_integer_labels(logits, y)"))


# --- linear_log_probs: a policy-gradient loss with an entropy bonus ---------


def policy_gradient(log_q, entropy, advantages):
  """``-(A log q_y) - c H(q)`` per token, c = `ENTROPY_BONUS`."""
  return -(advantages * log_q) - ENTROPY_BONUS * entropy


def _log_probs_from_logits(logits, labels, advantages):
  log_q = jax.nn.log_softmax(logits)
  entropy = -jnp.sum(jnp.exp(log_q) * log_q, axis=-1)
  label_log_q = jnp.take_along_axis(log_q, labels[:, None], axis=-1)[:, 0]
  return policy_gradient(label_log_q, entropy, advantages)


_register(linear_suite(
    "linear_log_probs",
    "policy-gradient loss -(A log q_y) - 0.01 H(q) of x @ w",
    extra=lambda draw, tokens, vocab, dtype: (
        draw.integers(vocab, (tokens,)), draw.normal((tokens,))),
    jxent_fn=lambda x, w, y, a, **o: policy_gradient(
        *jxent.linear_log_probs(x, w, y, return_entropy=True, **o), a),
    jxent_code="log_q, h = jxent.linear_log_probs(x, w, y, "
               "return_entropy=True); -(a * log_q) - 0.01 * h",
    loss=_log_probs_from_logits,
    loss_code="log_q = jax.nn.log_softmax(logits); -(a * log_q[y]) + "
              "0.01 * sum(exp(log_q) * log_q)",
    note="Both outputs of `linear_log_probs` are differentiated: the label's "
         "log-probability, weighted by a float32 advantage per token, and "
         "the entropy bonus."))


# --- linear_kl_divergence, linear_js_divergence: two heads -----------------


def _kl_from_logits(p_logits, q_logits):
  return optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(q_logits), jax.nn.log_softmax(p_logits))


def _js_from_logits(p_logits, q_logits, beta=0.5):
  log_p = jax.nn.log_softmax(p_logits)
  log_q = jax.nn.log_softmax(q_logits)
  log_m = jnp.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
  return (beta * jnp.sum(jnp.exp(log_p) * (log_p - log_m), axis=-1)
          + (1 - beta) * jnp.sum(jnp.exp(log_q) * (log_q - log_m), axis=-1))


_TEACHER_NOTE = (
    "The teacher head P (`p_x`, `p_w`) is data; the loss and its gradient "
    "are taken with respect to the student head Q (`q_x`, `q_w`), as in "
    "distillation.")

_register(linear_suite(
    "linear_kl", "KL divergence D(P || Q) between a teacher head P and a "
    "student head Q", heads=2, extra=lambda draw, tokens, vocab, dtype: (),
    jxent_fn=lambda *a, **o: jxent.linear_kl_divergence(
        *a, reduction="mean", **o),
    jxent_code='jxent.linear_kl_divergence(p_x, p_w, q_x, q_w, '
               'reduction="mean")',
    loss=_kl_from_logits,
    loss_code="optax.losses.kl_divergence_with_log_targets("
              "jax.nn.log_softmax(q), jax.nn.log_softmax(p))",
    note=_TEACHER_NOTE))

_register(linear_suite(
    "linear_js", "Jensen-Shannon divergence (beta 0.5) between a teacher "
    "head P and a student head Q", heads=2,
    extra=lambda draw, tokens, vocab, dtype: (),
    jxent_fn=lambda *a, **o: jxent.linear_js_divergence(
        *a, reduction="mean", **o),
    jxent_code='jxent.linear_js_divergence(p_x, p_w, q_x, q_w, '
               'reduction="mean")',
    loss=_js_from_logits,
    loss_code="log_m = logaddexp(log_p + log 0.5, log_q + log 0.5); "
              "0.5 KL(P || M) + 0.5 KL(Q || M) with jax.nn.log_softmax",
    note=_TEACHER_NOTE))


# --- linear_kl_divergence_from_top_k: a sparse teacher ----------------------


def _top_k_teacher(draw, tokens, vocab, dtype):
  """`TOP_K` distinct classes per token, evenly spaced from a random start,
  and the teacher's log-probabilities of them, `TOP_K_MASS` in all."""
  k = min(TOP_K, vocab)
  start = draw.integers(vocab, (tokens, 1))
  steps = jnp.arange(k, dtype=jnp.int32)[None, :] * (vocab // k)
  indices = (start + steps) % vocab
  log_p = jax.nn.log_softmax(draw.normal((tokens, k), 2.0)) + math.log(
      TOP_K_MASS)
  return indices, log_p.astype(dtype)


def _top_k_kl_from_logits(logits, indices, teacher_log_probs):
  log_q = jnp.take_along_axis(jax.nn.log_softmax(logits), indices, axis=-1)
  log_p = jax.nn.log_softmax(teacher_log_probs.astype(jnp.float32))
  return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


_register(linear_suite(
    "linear_top_k", f"KL divergence from a teacher's top {TOP_K} "
    "log-probabilities (renormalised) to a linear head",
    extra=_top_k_teacher,
    jxent_fn=lambda x, w, i, lp, **o: jxent.linear_kl_divergence_from_top_k(
        i, lp, x, w, reduction="mean", **o),
    jxent_code='jxent.linear_kl_divergence_from_top_k(i, lp, x, w, '
               'reduction="mean")',
    loss=_top_k_kl_from_logits,
    loss_code="log_p = jax.nn.log_softmax(lp); sum(exp(log_p) * (log_p - "
              "jax.nn.log_softmax(logits)[i]))",
    note=f"The teacher is {TOP_K} distinct classes per token and their "
         f"log-probabilities (in the input dtype, {TOP_K_MASS} of the mass), "
         "renormalised over them (`tail=\"renormalize\"`, the default)."))


# --- linear_policy_gradient_loss: the same loss, reduced inside ------------


_register(linear_suite(
    "linear_policy_gradient",
    "policy-gradient loss -(A log q_y) - 0.01 H(q) of x @ w, reduced inside",
    extra=lambda draw, tokens, vocab, dtype: (
        draw.integers(vocab, (tokens,)), draw.normal((tokens,))),
    jxent_fn=lambda x, w, y, a, **o: jxent.linear_policy_gradient_loss(
        x, w, y, a, entropy_bonus=ENTROPY_BONUS, **o),
    jxent_code="jxent.linear_policy_gradient_loss(x, w, y, a, "
               "entropy_bonus=0.01)",
    loss=_log_probs_from_logits,
    loss_code="log_q = jax.nn.log_softmax(logits); -(a * log_q[y]) + "
              "0.01 * sum(exp(log_q) * log_q)",
    note="The `linear_log_probs` suite's loss, with the advantages given "
         "to jxent, which reduces inside and so runs its fast mode."))


if __name__ == "__main__":
  from bench.__main__ import main

  sys.exit(main(prog="python -m bench.linear", suite=tuple(NAMES)))
