"""The GPU benchmark in one Python process: ``bash bench/gpu.sh`` runs it.

    python -m bench.gpu [--out FOLDER] [--total-s 285] [--sweep]

One process, so that JAX starts and finds the GPU once. The stages run in
order, each with a share of one deadline, and start no new case past it:

1. ``bf16``: the four suites on logits in bfloat16, jxent (its default, XLA
   alone, the Pallas kernels) against optax (jax.nn for the entropy) as
   users call it and upcast to float32; fwd, vjp and vjp_mean; --strict.
2. ``linear``: the linear suites at 8192 x 2304 x 256000 bfloat16 against
   the materialised logits (float32, and bfloat16 upcast inside the loss)
   and token chunks; --strict.
3. ``rest``: float32, and the other peers (the naive formula, PyTorch
   through DLPack) in both dtypes, in whatever time is left.

The kernels take the committed ``tuned.json``; with ``--sweep`` a tile
sweep (`bench.sweep`) runs first, writes ``sweep.json``, and the stages take
that instead.

Writes ``FOLDER/<device-kind>-<date>/`` (FOLDER: --out, default
bench/runs): ``bf16/``, ``linear/`` and ``rest/``, each with results.json
and table.md, and sweep.json with --sweep; bench/gpu.sh adds its log,
gpu.log. That is at most 8 files, two folders down: what the device tool
brings back from $OUT. A stage's tables can be rewritten from its
results.json (``python -m bench --from-json``), with the plot.

Environment (for a rehearsal on a CPU, say; see bench/gpu.sh):
  JXENT_BENCH_SHAPES   the logits suites' shapes (ROWSxCLASSES, comma list)
  JXENT_LINEAR_SHAPES  the linear suites' shape (TOKENSxDIMxVOCAB)
  JXENT_SWEEP_ARGS     the sweep's arguments instead of its GPU defaults
  JXENT_BENCH_INTERPRET=1  the Pallas kernels in interpret mode, anywhere
"""

import argparse
import contextlib
import datetime
import os
import sys
import time

# Stage 1's implementations: jxent's and the baseline peers of each suite.
BF16_IMPLS = ("jxent", "jxent_xla", "jxent_triton", "optax", "optax_f32",
              "jax_nn", "jax_nn_f32")
# Stage 3's: jxent and the peers as users call them, the naive formula and
# PyTorch (in bfloat16 beside jxent and optax again, for side-by-side ratios).
REST_IMPLS = ("jxent", "optax", "jax_nn", "naive", "torch")

# Seconds kept back from the deadline for the later stages, and the margin
# within which a stage starts no new case (the largest GPU case of a suite
# on logits compiles and times its implementations in a few seconds; a
# linear suite compiles four programs of some 100 ms each).
LINEAR_RESERVE_S = 100
REST_RESERVE_S = 30
LOGITS_MARGIN_S = 20
LINEAR_MARGIN_S = 40
SWEEP_SHARE = 0.2


def _log(message: str) -> None:
  print(f"=== {message}", file=sys.stderr, flush=True)


class Deadline:
  """Seconds left to one overall deadline, from the process's start."""

  def __init__(self, total_s: float, start: float | None = None):
    self.start = time.monotonic() if start is None else start
    self.total_s = total_s

  def left(self) -> float:
    return self.total_s - (time.monotonic() - self.start)


def results_folder(root: str) -> str:
  """``root/<device-kind>-<date>``, never an earlier run's folder."""
  import jax

  from bench import timing

  device = jax.devices()[0]
  now = datetime.datetime.now(datetime.UTC)
  out = os.path.join(root, f"{timing.device_slug(device)}-{now:%Y-%m-%d}")
  if os.path.exists(out):
    out += f"-{now:%H%M%S}"
  return out


def _offered(names: tuple[str, ...]) -> str:
  """The implementations among `names` that the suites offer here (jxent's
  kernel variants only on a GPU, or with JXENT_BENCH_INTERPRET=1)."""
  from bench import registry

  here = {i.name for s in registry.suites().values() for i in s.impls()}
  return ",".join(n for n in names if n in here)


def stage_argv(stage: str, out: str, budget_s: float) -> list[str]:
  """The command line (`bench.__main__.main`'s argv) of a stage."""
  shapes = os.environ.get("JXENT_BENCH_SHAPES")
  linear_shapes = os.environ.get("JXENT_LINEAR_SHAPES")
  # A few repetitions of a GPU case take milliseconds; compiling takes the
  # time, so each implementation is timed for at most 0.3 s (3 rounds).
  common = ["--out", out, "--no-plot", "--budget-s", f"{max(budget_s, 1):.0f}",
            "--max-case-s", "0.3"]
  if stage == "bf16":
    return [*common, "--dtypes", "bfloat16", "--modes", "fwd,vjp,vjp_mean",
            "--impls", _offered(BF16_IMPLS), "--strict",
            *(["--shapes", shapes] if shapes else [])]
  if stage == "linear":
    return [*common[:-2], "--strict", "--max-case-s", "2",
            *(["--shapes", linear_shapes] if linear_shapes else [])]
  if stage == "rest":
    return [*common, "--dtypes", "float32,bfloat16", "--modes", "fwd,vjp",
            "--impls", _offered(REST_IMPLS),
            *(["--shapes", shapes] if shapes else [])]
  raise ValueError(f"no stage {stage!r}")


def _stage(name: str, run, argv: list[str]) -> int:
  """Runs one stage in this process; its tables go to the log's stdout."""
  _log(f"{name}: {' '.join(argv)}")
  t0 = time.monotonic()
  try:
    status = run(argv)
  except SystemExit as e:  # bad arguments: argparse exits
    status = e.code if isinstance(e.code, int) else 1
  except Exception as e:  # noqa: BLE001 - one stage's crash ends only it
    _log(f"{name}: {type(e).__name__}: {e}")
    status = 1
  _log(f"{name}: exit {status} after {time.monotonic() - t0:.0f} s")
  return status


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.gpu",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT") or "bench/runs",
                 help="parent of the results folder (default: $OUT, else "
                      "bench/runs)")
  p.add_argument("--total-s", type=float, default=285.0,
                 help="the deadline, in seconds from the start "
                      "(default: %(default)s)")
  p.add_argument("--sweep", action="store_true",
                 help="sweep the kernels' tiles first and use the sweep")
  args = p.parse_args(argv)
  deadline = Deadline(args.total_s)
  # JAX takes GPU memory as it needs it, not 75% of it at the start:
  # PyTorch, in this process, needs its share (set before JAX starts).
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

  import jax

  from bench import linear, sweep
  from bench.__main__ import main as bench_main

  _log(f"jax {jax.__version__}, devices {jax.devices()}, kind "
       f"{jax.devices()[0].device_kind!r}")
  folder = results_folder(args.out)
  os.makedirs(folder, exist_ok=True)
  _log(f"results folder: {folder}")  # bench/gpu.sh reads this line
  status = 0

  if args.sweep:
    sweep_args = os.environ.get("JXENT_SWEEP_ARGS", "").split()
    budget = max(10.0, SWEEP_SHARE * deadline.left())
    path = os.path.join(folder, "sweep.json")
    status |= _stage("sweep", sweep.main, [
        "--out", path, "--budget-s", f"{budget:.0f}", *sweep_args]) != 0
    if os.path.exists(path):
      os.environ["JXENT_KERNEL_CONFIGS"] = path

  def linear_run(argv):
    return bench_main(argv, prog="python -m bench.linear",
                      suite=tuple(linear.NAMES))

  plan = (
      ("bf16", bench_main, LINEAR_RESERVE_S + REST_RESERVE_S,
       LOGITS_MARGIN_S),
      ("linear", linear_run, REST_RESERVE_S, LINEAR_MARGIN_S),
      ("rest", bench_main, 0, LOGITS_MARGIN_S),
  )
  for name, run, reserve, margin in plan:
    budget = deadline.left() - reserve - margin
    if budget < 1:
      _log(f"{name}: skipped, {deadline.left():.0f} s left")
      status = 1
      continue
    # The stage's tables, printed to stdout, go to the log with the rest.
    with contextlib.redirect_stdout(sys.stderr):
      code = _stage(name, run, stage_argv(
          name, os.path.join(folder, name), budget))
    status |= code != 0
  _log(f"done, exit {status}; results in {folder}")
  return int(status)


if __name__ == "__main__":
  sys.exit(main())
