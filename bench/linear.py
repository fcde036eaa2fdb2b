"""The linear suites: a loss of ``x @ w`` without materialising the logits.

    python -m bench.linear                      # the default shape for the device
    python -m bench.linear --shapes 2048x512x32768 --dtypes float32

``python -m bench.linear`` is ``python -m bench --suite linear_ce``. Each
suite compares, in one process and in rotating rounds:

* ``jxent``: jxent's linear loss, e.g. ``jxent.linear_softmax_cross_entropy``;
* ``materialised``: the loss on the full float32 logits ``x @ w``, as users
  write it;
* ``chunked``: the same over chunks of tokens in a ``lax.map``, each chunk
  under ``jax.checkpoint``, so only one chunk's logits are alive at a time.

The mode is what training runs: ``jax.value_and_grad`` of the mean loss
with respect to both ``x`` and ``w``, under ``jit``. The matmuls bound the
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


def materialised(loss):
  """``loss(x @ w, *extra).mean()``, the logits materialised in float32."""
  def fn(x, w, *extra):
    logits = jnp.dot(x, w, preferred_element_type=jnp.float32)
    return loss(logits, *extra).mean()
  return fn


def chunked(loss):
  """`materialised` over chunks of `TOKEN_CHUNK` tokens, each checkpointed."""
  def fn(x, w, *extra):
    chunk = min(TOKEN_CHUNK, x.shape[0])

    @jax.checkpoint
    def chunk_loss(args):
      xc, *extra_c = args
      logits = jnp.dot(xc, w, preferred_element_type=jnp.float32)
      return loss(logits, *extra_c).sum()

    split = [a.reshape(-1, chunk, *a.shape[1:]) for a in (x, *extra)]
    return jnp.sum(jax.lax.map(chunk_loss, split)) / x.shape[0]
  return fn


def _check_tokens(shape):
  tokens = shape[0]
  if tokens > TOKEN_CHUNK and tokens % TOKEN_CHUNK:
    return (f"tokens {tokens} is not a multiple of the chunked peer's "
            f"{TOKEN_CHUNK}")
  return None


def linear_suite(name, title, *, extra, jxent_fn, jxent_code, loss,
                 loss_code) -> Suite:
  """A suite on hidden states ``x`` (tokens, dim) and weights (dim, vocab).

  Args:
    name: The suite's name.
    title: What it computes.
    extra: ``extra(draw, tokens, vocab, dtype)``: the inputs after ``x, w``,
      each with the tokens first.
    jxent_fn: ``jxent_fn(x, w, *extra, **options)``, jxent's mean loss.
    jxent_code: Its user code.
    loss: ``loss(logits, *extra)``: the per-token loss on logits, which the
      ``materialised`` and ``chunked`` peers call.
    loss_code: Its user code.

  Returns:
    The suite.
  """
  def inputs(draw, shape, dtype):
    tokens, dim, vocab = shape
    x = draw.normal((tokens, dim)).astype(dtype)
    w = draw.normal((dim, vocab), dim ** -0.5).astype(dtype)
    return (x, w, *extra(draw, tokens, vocab, dtype))

  return Suite(
      name=name, title=title, dims=("tokens", "dim", "vocab"), inputs=inputs,
      jxent=jxent_fn, jxent_code=jxent_code,
      peers=(
          Impl("materialised", materialised(loss),
               f"{loss_code} on logits = x @ w in float32", f32=True),
          Impl("chunked", chunked(loss),
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
      grad_argnums=(0, 1), check_shape=_check_tokens, reps=5,
      max_case_s=20.0, default=False)


register(linear_suite(
    "linear_ce", "softmax cross-entropy of x @ w, integer labels",
    extra=lambda draw, tokens, vocab, dtype: (draw.integers(vocab, (tokens,)),),
    jxent_fn=lambda x, w, y, **o: jxent.linear_softmax_cross_entropy(
        x, w, y, **o),
    jxent_code="jxent.linear_softmax_cross_entropy(x, w, y)",
    loss=optax.softmax_cross_entropy_with_integer_labels,
    loss_code="optax.softmax_cross_entropy_with_integer_labels(logits, y)"))


if __name__ == "__main__":
  from bench.__main__ import main

  sys.exit(main(prog="python -m bench.linear", suite="linear_ce"))
