"""The linear losses' vocabulary block size, swept against materialised logits.

    python -m bench.linear_blocks --out blocks.json                  # GPU shape
    python -m bench.linear_blocks --shape 64x32x4096 --blocks 128,1024  # a CPU try

Times loss and gradient (for the student's x and w) of
`jxent.linear_softmax_cross_entropy` and of `jxent.linear_kl_divergence`
(a frozen teacher of the same shape), under `jit`, at each block size and
with the materialised logits, interleaved in one process, and records
XLA's compiled temporary memory for each. What it measures chooses the
automatic block size of `jxent._vocab.blocks.default_block_size`.
"""

import argparse
import json
import statistics
import sys

import jax
import jax.numpy as jnp

import jxent
from bench import timing


def _losses(block):
  def ce(x, w, tx, tw, y):
    return jxent.linear_softmax_cross_entropy(x, w, y, block_size=block)

  def kl(x, w, tx, tw, y):
    return jxent.linear_kl_divergence(tx, tw, x, w, block_size=block,
                                      reduction="mean")
  return {"linear_ce": ce, "linear_kl": kl}


def _materialised():
  dot = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32)  # noqa: E731

  def ce(x, w, tx, tw, y):
    return jxent.softmax_cross_entropy_with_integer_labels(
        dot(x, w), y, reduction="mean")

  def kl(x, w, tx, tw, y):
    return jnp.mean(jxent.kl_divergence_from_logits(dot(tx, tw), dot(x, w)))
  return {"linear_ce": ce, "linear_kl": kl}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", default="8192x2304x256000",
                      help="TOKENSxDIMxVOCAB (default: %(default)s)")
  # 4000 divides the default shape's 256000 columns: no shifted last block,
  # so every block writes its columns of dw without reading them.
  parser.add_argument("--blocks",
                      default="128,1024,2048,4000,4096,8192,16384")
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--out", help="write the rows as JSON here")
  args = parser.parse_args(argv)
  try:
    tokens, dim, vocab = (int(v) for v in args.shape.split("x"))
    blocks = [int(b) for b in args.blocks.split(",")]
  except ValueError:
    print(f"bench.linear_blocks: bad --shape {args.shape!r} or --blocks "
          f"{args.blocks!r}", file=sys.stderr)
    return 2
  keys = jax.random.split(jax.random.key(0), 5)
  dtype = jnp.dtype(args.dtype)
  x = jax.random.normal(keys[0], (tokens, dim), dtype)
  w = (jax.random.normal(keys[1], (dim, vocab)) / dim**0.5).astype(dtype)
  tx = jax.random.normal(keys[2], (tokens, dim), dtype)
  tw = (jax.random.normal(keys[3], (dim, vocab)) / dim**0.5).astype(dtype)
  y = jax.random.randint(keys[4], (tokens,), 0, vocab)
  inputs = (x, w, tx, tw, y)
  rows = []
  for suite in ("linear_ce", "linear_kl"):
    impls = {f"block {b}": _losses(b)[suite] for b in blocks}
    impls["materialised"] = _materialised()[suite]
    calls, memory = {}, {}
    for name, loss in impls.items():
      step = jax.jit(jax.value_and_grad(loss, (0, 1)))
      compiled = step.lower(*inputs).compile()
      temp = timing.compiled_memory(compiled)["temp_bytes"]
      memory[name] = None if temp is None else round(temp / 2**20, 1)
      calls[name] = (lambda c=compiled: c(*inputs), jax.block_until_ready)
    times = timing.time_interleaved(calls, reps=args.reps, max_total_s=20.0)
    for name in impls:
      median = statistics.median(times[name].times_s)
      rows.append(dict(suite=suite, impl=name, median_ms=1e3 * median,
                       temp_mb=memory[name]))
      print(f"{suite:10s} {name:14s} {1e3 * median:10.2f} ms "
            f"{memory[name]} MB", flush=True)
  meta = dict(device=jax.devices()[0].device_kind, jax=jax.__version__,
              shape=args.shape, dtype=args.dtype)
  if args.out:
    with open(args.out, "w") as f:
      json.dump(dict(meta, rows=rows), f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
