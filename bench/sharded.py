"""The sharded suite: vocabulary-parallel loss against gather-then-loss.

    python -m bench.sharded        # 8 simulated CPU devices

The logits of shape (rows, vocab) are split along the vocabulary over a
mesh axis of 8 devices. It compares, for `jax.value_and_grad` of the mean
integer-label cross-entropy under `jit`:

* ``sharded``: `jxent.sharded.softmax_cross_entropy_with_integer_labels`
  inside `shard_map`, which combines per-row numbers with `pmax`/`psum`;
* ``gspmd``: the ordinary `jxent.softmax_cross_entropy_with_integer_labels`
  under plain `jit` on the sharded array, left to XLA's SPMD partitioner;
* ``gathered``: each device all-gathers the vocabulary, then runs the
  ordinary loss: what a loss that is not mesh-aware costs.

It records the median time and the compiled temporary memory per device
(XLA's `memory_analysis` of the partitioned program), and writes
`<out>/results.json` and `<out>/table.md`. On 8 simulated devices sharing
the CPU's cores, the times say little about real devices; the memory per
device is the point.
"""

import jax

# Before anything initialises a backend: eight simulated CPU devices.
jax.config.update("jax_num_cpu_devices", 8)

import argparse  # noqa: E402
import datetime  # noqa: E402
import sys  # noqa: E402

import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jxent  # noqa: E402
from bench import report, timing  # noqa: E402

AXIS = "vocab"


def _mesh():
  devices = jax.devices()
  return jax.sharding.Mesh(devices, (AXIS,))


def implementations(mesh):
  """Name to `(x, y) -> mean loss` over vocabulary-sharded logits."""
  def sharded_local(x, y):
    return jxent.sharded.softmax_cross_entropy_with_integer_labels(
        x, y, AXIS, reduction="mean")

  def gathered_local(x, y):
    full = lax.all_gather(x, AXIS, axis=1, tiled=True)
    return jxent.softmax_cross_entropy_with_integer_labels(
        full, y, reduction="mean")

  specs = dict(mesh=mesh, in_specs=(P(None, AXIS), P()), out_specs=P())
  return {
      "sharded": jax.shard_map(sharded_local, **specs),
      "gspmd": lambda x, y: jxent.softmax_cross_entropy_with_integer_labels(
          x, y, reduction="mean"),
      "gathered": jax.shard_map(gathered_local, check_vma=False, **specs),
  }


def run_case(rows, vocab, reps):
  """Times every implementation on one shape; returns its result rows."""
  mesh = _mesh()
  kx, ky = jax.random.split(jax.random.key(0))
  x = jax.device_put(2 * jax.random.normal(kx, (rows, vocab), jnp.float32),
                     NamedSharding(mesh, P(None, AXIS)))
  y = jax.device_put(jax.random.randint(ky, (rows,), 0, vocab, jnp.int32),
                     NamedSharding(mesh, P()))
  out_rows, calls, ref = [], {}, None
  for name, loss in implementations(mesh).items():
    row = {"suite": "sharded", "impl": name, "rows": rows, "vocab": vocab,
           "devices": len(mesh.devices.flat), "dtype": "float32",
           "mode": "vjp", "logits_bytes_per_device": rows * vocab * 4
           // len(mesh.devices.flat)}
    out_rows.append(row)
    step = jax.jit(jax.value_and_grad(loss))
    compiled = step.lower(x, y).compile()
    row.update(timing.compiled_memory(compiled))
    row["all_gather_in_hlo"] = "all-gather" in compiled.as_text()
    value, grad = jax.block_until_ready(compiled(x, y))
    if ref is None:
      ref = (value, grad)
    else:
      row["loss_diff"] = float(abs(value - ref[0]))
      row["grad_max_abs_diff"] = float(jnp.max(jnp.abs(grad - ref[1])))
    row["status"] = "ok"
    calls[name] = (lambda c=compiled: c(x, y), jax.block_until_ready)
  for name, t in timing.time_interleaved(calls, reps=reps,
                                         max_total_s=30.0).items():
    next(r for r in out_rows if r["impl"] == name).update(t.summary())
  return out_rows


def markdown(results):
  meta = results["meta"]
  lines = [
      f"# jxent sharded bench: {meta['devices']} x {meta['device_kind']}, "
      f"{meta['date']}",
      "",
      f"- Machine: {meta['machine']}; jax {meta['jax']}. Simulated devices "
      "share the host's cores: read the times as relative only.",
      "- Mode: `jax.value_and_grad` of the mean integer-label loss under "
      "`jit`, logits split along the vocabulary over all devices.",
      "",
      "| rows x vocab | impl | median ms | temp MB per device | logits MB "
      "per device | all-gather in HLO |",
      "|---|---|---|---|---|---|",
  ]
  for r in results["rows"]:
    lines.append(
        f"| {r['rows']}x{r['vocab']} | {r['impl']} | "
        f"{r['median_s'] * 1e3:.3g} | {r['temp_bytes'] / 2**20:.1f} | "
        f"{r['logits_bytes_per_device'] / 2**20:.1f} | "
        f"{'yes' if r['all_gather_in_hlo'] else 'no'} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.sharded",
                              description=__doc__.splitlines()[0])
  p.add_argument("--shapes", default="1024x65536",
                 help="comma list of ROWSxVOCAB (vocab divisible by 8)")
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--out", help="output folder (default "
                 "bench/results/cpu-<date>/sharded)")
  args = p.parse_args(argv)
  date = datetime.datetime.now(datetime.UTC)
  device = jax.devices()[0]
  out = report.suite_dir(args.out, device, "sharded", date)
  results = {"meta": {
      "devices": len(jax.devices()), "device_kind": device.device_kind,
      "machine": timing.cpu_model(), "date": f"{date:%Y-%m-%d %H:%M} UTC",
      "jax": jax.__version__, "command": " ".join(sys.argv),
  }, "rows": []}
  for item in args.shapes.split(","):
    rows, vocab = (int(v) for v in item.lower().split("x"))
    results["rows"] += run_case(rows, vocab, args.reps)
  report.write_suite(results, markdown(results), out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
