"""The linear cross-entropy suite: loss and gradients of `x @ w` without logits.

    python -m bench.linear                      # the default shape for the device
    python -m bench.linear --shapes 2048x512x32768 --dtypes float32

Compares, in one process and in rotating rounds (`timing.time_interleaved`):

* ``jxent``: `jxent.linear_softmax_cross_entropy(x, w, y)`;
* ``materialised``: `optax.softmax_cross_entropy_with_integer_labels` on the
  full float32 logits `x @ w`, as users write it;
* ``chunked``: the same over chunks of tokens in a `lax.map`, each chunk under
  `jax.checkpoint`, so only one chunk's logits are alive at a time.

The mode is what training runs: `jax.value_and_grad` of the mean loss with
respect to both `x` and `w`, under `jit`. For each it records the median time,
XLA's compiled temporary memory and, on a GPU, the peak bytes in use, and the
ratios to the materialised version. Results go to
`<out>/results.json` and `<out>/table.md`.
"""

import argparse
import datetime
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import report, timing

CPU_SHAPES = ((2048, 512, 32768),)
GPU_SHAPES = ((8192, 2304, 256000),)  # Gemma 2 2B, as in Cut Cross-Entropy
TOKEN_CHUNK = 1024


def _materialised(x, w, y):
  logits = jnp.dot(x, w, preferred_element_type=jnp.float32)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _chunked(x, w, y):
  chunk = min(TOKEN_CHUNK, x.shape[0])
  if x.shape[0] % chunk:
    raise ValueError(f"tokens {x.shape[0]} not a multiple of {chunk}")

  @jax.checkpoint
  def chunk_loss(args):
    xc, yc = args
    logits = jnp.dot(xc, w, preferred_element_type=jnp.float32)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yc).sum()

  xs = x.reshape(-1, chunk, x.shape[1])
  ys = y.reshape(-1, chunk)
  return jnp.sum(jax.lax.map(chunk_loss, (xs, ys))) / x.shape[0]


def implementations():
  """Name to loss function `(x, w, y) -> mean loss`, jxent first."""
  import jxent  # noqa: PLC0415 (the harness also runs while jxent is broken)

  return {
      "jxent": lambda x, w, y: jxent.linear_softmax_cross_entropy(x, w, y),
      "materialised": _materialised,
      "chunked": _chunked,
  }


def make_inputs(tokens, dim, vocab, dtype, seed=0):
  """Hidden states, an output projection and labels, seeded."""
  kx, kw, ky = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.normal(kx, (tokens, dim), jnp.float32).astype(dtype)
  w = (jax.random.normal(kw, (dim, vocab), jnp.float32) / np.sqrt(dim)
       ).astype(dtype)
  y = jax.random.randint(ky, (tokens,), 0, vocab, jnp.int32)
  return jax.block_until_ready((x, w, y))


def run_case(tokens, dim, vocab, dtype, reps, device):
  """Times every implementation on one shape; returns its result rows."""
  x, w, y = make_inputs(tokens, dim, vocab, dtype)
  rows, calls, ref = [], {}, None
  for name, loss in implementations().items():
    row = {"suite": "linear_ce", "impl": name, "tokens": tokens, "dim": dim,
           "vocab": vocab, "dtype": jnp.dtype(dtype).name, "mode": "vjp"}
    rows.append(row)
    try:
      step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
      compiled = step.lower(x, w, y).compile()
      row.update(timing.compiled_memory(compiled))
      before = timing.device_memory(device)
      out = jax.block_until_ready(compiled(x, w, y))
      after = timing.device_memory(device)
      if before and after:
        row["gpu_peak_delta_bytes"] = (after["peak_bytes_in_use"]
                                       - before["bytes_in_use"])
    except Exception as e:  # e.g. out of memory: record it, go on
      row["status"], row["error"] = "error", f"{type(e).__name__}: {e}"[:300]
      continue
    row["status"] = "ok"
    loss_value, (dx, dw) = out
    if ref is None:
      ref = out
    else:
      row["loss_diff"] = float(abs(loss_value - ref[0]))
      row["dx_max_abs_diff"] = float(jnp.max(jnp.abs(
          dx.astype(jnp.float32) - ref[1][0].astype(jnp.float32))))
      row["dw_max_abs_diff"] = float(jnp.max(jnp.abs(
          dw.astype(jnp.float32) - ref[1][1].astype(jnp.float32))))
    calls[name] = (lambda c=compiled: c(x, w, y), jax.block_until_ready)
  timings = timing.time_interleaved(calls, reps=reps, max_total_s=60.0)
  by_name = {row["impl"]: row for row in rows}
  for name, t in timings.items():
    by_name[name].update(t.summary())
  base = by_name.get("materialised", {})
  for row in rows:
    if row.get("median_s") and base.get("median_s"):
      row["time_vs_materialised"] = row["median_s"] / base["median_s"]
    if row.get("temp_bytes") is not None and base.get("temp_bytes"):
      row["temp_vs_materialised"] = row["temp_bytes"] / base["temp_bytes"]
  return rows


def markdown(results):
  """The results as a markdown table."""
  meta = results["meta"]
  lines = [
      f"# jxent linear_ce bench: {meta['device_kind']}, {meta['date']}",
      "",
      f"- Machine: {meta['machine']}; jax {meta['jax']}, optax "
      f"{meta['optax']}",
      "- Mode: `jax.value_and_grad(mean loss, argnums=(x, w))` under `jit`; "
      "ratios are to the materialised version in the same run.",
      "",
      "| tokens x dim x vocab | dtype | impl | median ms | IQR ms | temp MB "
      "| GPU peak MB | time / materialised | temp / materialised |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results["rows"]:
    def f(key, scale=1.0, spec=".3g", r=r):
      v = r.get(key)
      return "–" if v is None else format(v * scale, spec)
    shape = f"{r['tokens']}x{r['dim']}x{r['vocab']}"
    if r.get("status") != "ok":
      lines.append(f"| {shape} | {r['dtype']} | {r['impl']} | "
                   f"{r.get('error', 'error')} | | | | | |")
      continue
    iqr = (r["p75_s"] - r["p25_s"]) * 1e3
    lines.append(
        f"| {shape} | {r['dtype']} | {r['impl']} | {f('median_s', 1e3)} | "
        f"{iqr:.3g} | {f('temp_bytes', 1 / 2**20, '.1f')} | "
        f"{f('gpu_peak_delta_bytes', 1 / 2**20, '.1f')} | "
        f"{f('time_vs_materialised', spec='.2f')} | "
        f"{f('temp_vs_materialised', spec='.3f')} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.linear",
                              description=__doc__.splitlines()[0])
  p.add_argument("--shapes", help="comma list of TOKENSxDIMxVOCAB")
  p.add_argument("--dtypes", help="comma list of float32, bfloat16 (default: "
                 "float32 on CPU, bfloat16 elsewhere)")
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--out", help="output folder (default "
                 "bench/results/<device>-<date>/linear_ce)")
  args = p.parse_args(argv)
  device = jax.devices()[0]
  on_cpu = device.platform == "cpu"
  shapes = (tuple(tuple(int(v) for v in s.lower().split("x"))
                  for s in args.shapes.split(",")) if args.shapes
            else CPU_SHAPES if on_cpu else GPU_SHAPES)
  dtypes = (args.dtypes or ("float32" if on_cpu else "bfloat16")).split(",")
  date = datetime.datetime.now(datetime.UTC)
  out = report.suite_dir(args.out, device, "linear_ce", date)
  results = {"meta": {
      "device_kind": device.device_kind, "platform": device.platform,
      "machine": timing.cpu_model() if on_cpu else device.device_kind,
      "date": f"{date:%Y-%m-%d %H:%M} UTC", "jax": jax.__version__,
      "optax": optax.__version__, "command": " ".join(sys.argv),
  }, "rows": []}
  for tokens, dim, vocab in shapes:
    for dtype in dtypes:
      results["rows"] += run_case(tokens, dim, vocab, jnp.dtype(dtype),
                                  args.reps, device)
      # After every case, so a run cut short by a timeout keeps its rows.
      report.write_json(results, os.path.join(out, "results.json"))
  report.write_suite(results, markdown(results), out)
  return 0 if all(r.get("status") == "ok" for r in results["rows"]) else 1


if __name__ == "__main__":
  sys.exit(main())
