"""Tile sweep of jxent's Pallas kernels: ``python -m bench.sweep``.

For each shape, each kernel (the forward `row_stats`, the backward
`logits_gradient`) is timed alone under every configuration of the grid
(tile width, warps, stages; for the forward kernel, its running sums per
tile or per lane) on integer labels: the median over --reps
rounds of the time per call of --calls calls made back to back (queued
without a sync between them, as in a training step), not one dispatch and
a sync. The fastest per (shape, kernel) is written, with the device's kind
and the dtype, to a JSON file in the form
`jxent._cross_entropy.triton.config.tuned` reads: point
$JXENT_KERNEL_CONFIGS at it, or copy it to
`jxent/_cross_entropy/triton/tuned.json` to make it the default. On a GPU
only; with --interpret it rehearses on a CPU (tiny shapes, Pallas'
interpreter: the timings mean nothing).

  python -m bench.sweep --out sweep.json
  python -m bench.sweep --interpret --shapes 8x1000 --blocks 64,128 --out /tmp/s.json
"""

import argparse
import datetime
import itertools
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing


def _fail(message: str):
  """One line on stderr and exit status 2, as the other bench commands."""
  print(f"bench.sweep: error: {message}", file=sys.stderr)
  raise SystemExit(2)


def _ints(text: str, what: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",")]
  except ValueError:
    _fail(f"{what} must be integers, got"
          f" {text!r}")
  if any(v < 1 or v & (v - 1) for v in values) and what != "stages":
    _fail(f"{what} must be powers of two,"
          f" got {text!r}")
  if any(v < 1 for v in values):
    _fail(f"{what} must be >= 1, got {text!r}")
  return values


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m bench.sweep",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--shapes", default="8192x32768,8192x131072,8192x262144",
                 help="comma list of ROWSxCLASSES")
  p.add_argument("--dtype", default="bfloat16",
                 choices=("bfloat16", "float16", "float32"))
  # The likeliest configurations first, so a budget cut loses the others.
  p.add_argument("--blocks", default="4096,8192,16384,32768,2048",
                 help="tile widths to try (powers of two), in order")
  p.add_argument("--warps", default="8,16,32,4",
                 help="warps to try, in order")
  p.add_argument("--stages", default="2,3", help="pipeline stages to try")
  p.add_argument("--lane-sums", default="0,1",
                 help="the forward kernel's running sums per tile (0) or per "
                      "lane (1), to try")
  p.add_argument("--reps", type=int, default=5,
                 help="timed rounds per case (the median is kept)")
  p.add_argument("--calls", type=int, default=20,
                 help="calls back to back in a round")
  p.add_argument("--budget-s", type=float, default=None,
                 help="start no new configuration after this many seconds")
  p.add_argument("--interpret", action="store_true",
                 help="Pallas' interpreter (a CPU rehearsal)")
  p.add_argument("--out", required=True, help="the JSON file to write")
  args = p.parse_args(argv)
  shapes = []
  for text in args.shapes.split(","):
    try:
      rows, classes = (int(v) for v in text.split("x"))
    except ValueError:
      _fail(f"a shape is ROWSxCLASSES, got"
          f" {text!r}")
    if rows < 1 or classes < 1:
      _fail(f"empty shape {text!r}")
    shapes.append((rows, classes))
  args.shapes = shapes
  args.blocks = _ints(args.blocks, "blocks")
  args.warps = _ints(args.warps, "warps")
  args.stages = _ints(args.stages, "stages")
  lane_sums = args.lane_sums.split(",")
  if any(v not in ("0", "1") for v in lane_sums):
    _fail(f"--lane-sums must be 0, 1 or 0,1, got {args.lane_sums!r}")
  args.lane_sums = [v == "1" for v in lane_sums]
  if args.reps < 1 or args.calls < 1:
    _fail(f"--reps and --calls must be >= 1, got"
          f" {args.reps} and {args.calls}")
  if not args.interpret and jax.default_backend() != "gpu":
    _fail("the kernels need a GPU; use"
          " --interpret to rehearse on a CPU")
  return args


def _programs(shape, dtype, config):
  """The jitted forward and backward kernels, and their inputs."""
  from jxent._cross_entropy import rows as _rows
  from jxent._cross_entropy import triton as _kernels
  from jxent._numerics import checks as _checks
  from jxent._numerics.options import parse_options
  rows, classes = shape
  key = jax.random.key(0)
  logits = jax.random.normal(key, shape, jnp.float32).astype(dtype)
  labels = jax.random.randint(key, (rows,), 0, classes)
  opts = parse_options()
  sorted_labels = _checks.sort_labels(labels, classes, None)

  def forward(x):  # the kernel alone, not the row step after it
    return _kernels.row_stats(x, None, opts, classes, config,
                              label_index=sorted_labels.class_index)

  stats = jax.jit(forward)(logits)
  result = _rows.row_step(stats, opts, classes, sorted_labels)

  def backward(x, shift, log_sumexp, coefficients):
    return _kernels.logits_gradient(
        x, None, shift, log_sumexp, coefficients, opts, config,
        label_index=sorted_labels.class_index)

  return {
      "row_stats": (jax.jit(forward), (logits,)),
      "logits_gradient": (jax.jit(backward), (
          logits, stats.shift, result.log_sumexp, result.coefficients)),
  }


def _time(fn, args, reps, calls):
  """Median over `reps` rounds of the time per call of `calls` calls made
  back to back, with one sync at the end of each round."""
  jax.block_until_ready(fn(*args))  # Compile and warm up.
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / calls)
  return float(np.median(times))


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  from jxent._cross_entropy import triton as _kernels
  start = time.perf_counter()
  dtype = jnp.dtype(args.dtype)
  rows_out, skipped = [], 0
  # Each configuration on every shape before the next configuration.
  for block, warps, lanes, stages, shape in itertools.product(
      args.blocks, args.warps, args.lane_sums, args.stages, args.shapes):
    if args.budget_s is not None and (
        time.perf_counter() - start > args.budget_s):
      skipped += 1
      continue
    config = _kernels.KernelConfig(block=block, num_warps=warps,
                                   num_stages=stages, lane_sums=lanes,
                                   interpret=args.interpret)
    try:
      programs = _programs(shape, dtype, config)
    except Exception as err:  # A configuration Triton refuses.
      rows_out.append(dict(shape=list(shape), block=block, num_warps=warps,
                           num_stages=stages, lane_sums=lanes,
                           error=str(err)[:200]))
      print(f"{shape} {config}: {str(err)[:100]}", file=sys.stderr)
      continue
    for kernel, (fn, fn_args) in programs.items():
      if lanes and kernel != "row_stats":
        continue  # Only the forward kernel has lane sums.
      try:
        seconds = _time(fn, fn_args, args.reps, args.calls)
        error = None
      except Exception as err:
        seconds, error = math.nan, str(err)[:200]
      # The bytes each kernel must move: the logits once (forward); the
      # logits once and the gradient once (backward).
      moved = math.prod(shape) * dtype.itemsize * (
          1 if kernel == "row_stats" else 2)
      rows_out.append(dict(
          shape=list(shape), kernel=kernel, block=block, num_warps=warps,
          num_stages=stages, lane_sums=lanes, median_s=seconds,
          gbps=moved / seconds / 1e9 if seconds == seconds else None,
          error=error))
      print(f"{kernel} {shape} block={block} warps={warps} stages={stages}"
            f" lane_sums={int(lanes)}:"
            f" {seconds * 1e3:.3f} ms", file=sys.stderr)
  device = jax.devices()[0]
  best = []
  for shape in args.shapes:
    for kernel in _kernels.config.KERNELS:
      timed = [r for r in rows_out if r.get("kernel") == kernel
               and r["shape"] == list(shape) and r.get("error") is None]
      if not timed:
        continue
      fastest = min(timed, key=lambda r: r["median_s"])
      best.append(dict(
          device_kind=device.device_kind,
          bucket=_kernels.config.bucket_of(shape[1]), dtype=dtype.name,
          kernel=kernel, block=fastest["block"],
          num_warps=fastest["num_warps"], num_stages=fastest["num_stages"],
          lane_sums=fastest["lane_sums"],
          median_s=fastest["median_s"], gbps=fastest["gbps"],
          shape=list(shape)))
  out = dict(
      date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      device_kind=device.device_kind, device=timing.device_slug(device),
      jax=jax.__version__, interpret=args.interpret, dtype=dtype.name,
      timing=(f"median_s: the kernel alone, per call, the median of "
              f"{args.reps} rounds of {args.calls} calls back to back"),
      skipped_for_budget=skipped, best=best, rows=rows_out)
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=1))
  for entry in best:
    print(f"best {entry['kernel']} {entry['shape']}: block={entry['block']}"
          f" warps={entry['num_warps']} stages={entry['num_stages']}"
          f" {entry['median_s'] * 1e3:.3f} ms")
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
