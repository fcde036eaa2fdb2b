"""The linear suites: a loss of ``x @ w`` without materialising the logits.

    python -m bench.linear                      # every linear suite
    python -m bench.linear --suite linear_kl    # one of them
    python -m bench.linear --shapes 2048x512x32768 --dtypes float32

``python -m bench.linear`` is ``python -m bench --suite`` with the suites
below (`NAMES`). Each suite compares, in one process and in rotating rounds:

* ``jxent``: jxent's linear loss, e.g. ``jxent.linear_softmax_cross_entropy``;
* ``materialised``: the loss on the full float32 logits ``x @ w``, as users
  write it;
* ``chunked``: the same over chunks of tokens in a ``lax.map``, each chunk
  under ``jax.checkpoint``, so only one chunk's logits are alive at a time.

A suite has one head ``(x, w)`` or, for distillation, a teacher head and a
student head, the student last. The mode is what training runs:
``jax.value_and_grad`` of the mean loss with respect to the student's ``x``
and ``w``, under ``jit``; a teacher head is data. The matmuls bound the
time, not memory traffic, so there is no byte model; XLA's temporary memory
is the point.
"""

import sys

import jax
import jax.numpy as jnp
import optax

from bench.registry import Impl, Lazy, Suite, register

jxent = Lazy("jxent")

TOKEN_CHUNK = 1024

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
      baseline=("materialised", "chunked"), modes=("vjp",),
      grad_argnums=(student, student + 1), check_shape=_check_tokens, reps=5,
      max_case_s=20.0, note=note, default=False)


def _register(suite: Suite) -> Suite:
  NAMES.append(suite.name)
  return register(suite)


_register(linear_suite(
    "linear_ce", "softmax cross-entropy of x @ w, integer labels",
    extra=lambda draw, tokens, vocab, dtype: (draw.integers(vocab, (tokens,)),),
    jxent_fn=lambda x, w, y, **o: jxent.linear_softmax_cross_entropy(
        x, w, y, **o),
    jxent_code="jxent.linear_softmax_cross_entropy(x, w, y)",
    loss=optax.softmax_cross_entropy_with_integer_labels,
    loss_code="optax.softmax_cross_entropy_with_integer_labels(logits, y)"))


if __name__ == "__main__":
  from bench.__main__ import main

  sys.exit(main(prog="python -m bench.linear", suite=tuple(NAMES)))
