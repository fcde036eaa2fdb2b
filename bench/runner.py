"""The runner, written once for every suite of `bench.registry`.

For each suite, shape and dtype it draws the inputs; for each mode it
compiles every implementation, checks it against the reference
implementation, and times them all in rotating rounds
(`timing.time_interleaved`). It records one row per case and rewrites
results.json after every group, so a run cut short keeps what it finished.
"""

import dataclasses
import datetime
import importlib
import math
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import case, registry, report, timing

MODES = ("fwd", "vjp", "vjp_mean")
DTYPES = ("float32", "bfloat16")

# Inputs of shapes up to this many elements are drawn with numpy on the
# host, which needs no compilation; larger ones are drawn on the device.
HOST_DRAW_MAX_ELEMENTS = 2**24


@dataclasses.dataclass(frozen=True)
class Options:
  """A run's settings, checked by the command line before the run starts.

  Attributes:
    suites: The suites' names.
    shapes: The shapes for every suite; None for each suite's grid.
    dtypes: ``float32``, ``bfloat16``; None for each suite's.
    modes: ``fwd``, ``vjp``, ``vjp_mean``; None for each suite's.
    impls: The implementations to run; None for all.
    reference: The implementation ratios and differences are taken against.
    reps: Repetitions per case; None for the suite's (3 with `quick`).
    max_case_s: Seconds of repetitions per implementation: a group of N
      stops after N times this, once 3 rounds are done; None for the
      suite's (0.3 with `quick`).
    quick: The tiny grid, for tests and smoke runs.
    budget_s: Start no new case after this many seconds; None: no limit.
    bandwidth_mb: Size of the read-bandwidth probe in MiB; None: 4096 on
      accelerators, 256 on a CPU, 32 with `quick`.
    seed: Seed of the inputs.
  """

  suites: tuple[str, ...]
  shapes: tuple[registry.Shape, ...] | None = None
  dtypes: tuple[str, ...] | None = None
  modes: tuple[str, ...] | None = None
  impls: frozenset[str] | None = None
  reference: str = "jxent"
  reps: int | None = None
  max_case_s: float | None = None
  quick: bool = False
  budget_s: float | None = None
  bandwidth_mb: float | None = None
  seed: int = 0


def import_module(name: str):
  """Imports an implementation's module.

  Torch's OpenMP threads are told to sleep rather than spin while idle
  (``OMP_WAIT_POLICY=PASSIVE``, unless the environment says otherwise): on a
  small CPU, spinning torch threads and JAX's thread pool slow each other
  down about tenfold. This must happen before torch is first imported.

  Returns:
    ``(module, None)``, or ``(None, message)`` when the import fails, so
    the harness still runs the others (without jxent while it is broken).
  """
  if name == "torch":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    return importlib.import_module(name), None
  except Exception as e:  # absent or broken: report it, run the others
    return None, f"{type(e).__name__}: {e}"


def implementations(suite: registry.Suite, opts: Options, missing=()):
  """The suite's implementations a run includes, the reference first.

  Args:
    suite: The suite.
    opts: The run's options (``impls`` and ``reference``).
    missing: Modules that did not import; implementations needing one are
      left out.

  Returns:
    A list of `registry.Impl`.
  """
  impls = [i for i in suite.impls()
           if (opts.impls is None or i.name in opts.impls)
           and i.needs not in missing]
  return sorted(impls, key=lambda i: i.name != opts.reference)


def make_inputs(suite, shape, dtype: str, seed: int) -> tuple:
  """A case's inputs, seeded, on the device(s) the suite puts them on."""
  np_dtype = jnp.dtype(dtype)
  if math.prod(shape) <= HOST_DRAW_MAX_ELEMENTS:
    arrays = suite.inputs(registry.Draw(seed, host=True), shape, np_dtype)
  else:
    arrays = jax.jit(lambda: suite.inputs(registry.Draw(seed, host=False),
                                          shape, np_dtype))()
  arrays = suite.place(arrays) if suite.place else jax.device_put(arrays)
  return jax.block_until_ready(arrays)


def input_bytes(suite, shape, dtype: str) -> int:
  """The bytes of a case's inputs, worked out without drawing them."""
  arrays = jax.eval_shape(lambda: suite.inputs(
      registry.Draw(0, host=False), shape, jnp.dtype(dtype)))
  return sum(math.prod(a.shape) * a.dtype.itemsize
             for a in jax.tree.leaves(arrays))


@dataclasses.dataclass
class _Run:
  """What every group of a run needs."""

  opts: Options
  start: float
  device: object
  modules: dict
  read_gbps: float | None
  spec: float | None

  def over_budget(self) -> bool:
    return (self.opts.budget_s is not None
            and time.perf_counter() - self.start > self.opts.budget_s)


def _run_group(run: _Run, suite, rows, impls, mode, inputs):
  """Prepares, checks and times one suite, shape, dtype and mode.

  The jax implementations are timed in turn, one repetition each per round,
  so that a change of load on the machine hits them all alike; torch's are
  timed after them: on a CPU its thread pool keeps spinning after each call
  and would slow whichever jax call came next.

  Args:
    run: The run.
    suite: The suite.
    rows: The group's result rows, one per implementation, updated in place.
    impls: The implementations, the reference (if run) first.
    mode: ``"fwd"``, ``"vjp"`` or ``"vjp_mean"``.
    inputs: The case's arrays.
  """
  calls, ref = {}, None
  for row, impl in zip(rows, impls, strict=True):
    if run.over_budget():
      row["status"], row["error"] = "skipped", "budget"
      continue
    try:
      if impl.backend == "torch":
        call, sync, out, fields = case.prepare_torch(
            run.modules["torch"], suite, impl, mode, inputs, row["dtype"],
            run.device.platform)
      else:
        call, sync, out, fields = case.prepare_jax(suite, impl, mode, inputs,
                                                   run.device)
    except Exception as e:  # e.g. out of memory: record, go on
      row["status"] = "error"
      row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      continue
    row["status"] = "ok"
    row.update(fields)
    if impl.name == run.opts.reference:
      ref, ref_f32 = out, impl.accumulates_f32(row["dtype"])
    if ref is not None:  # the reference against itself: scale, finite
      case.agreement(row, out, ref,
                 ref_f32 and impl.accumulates_f32(row["dtype"]))
    del out
    calls[impl.name] = (call, sync)
  del ref
  backends = {impl.name: impl.backend for impl in impls}
  timings = {}
  try:
    for backend in ("jax", "torch"):
      some = {k: v for k, v in calls.items() if backends[k] == backend}
      if some:
        timings.update(timing.time_interleaved(
            some, reps=_reps(run.opts, suite),
            max_total_s=_max_case_s(run.opts, suite) * len(some)))
  except Exception as e:  # e.g. out of memory: record, go on
    for row in rows:
      if row.get("status") == "ok":
        row["status"] = "error"
        row["error"] = f"timing: {type(e).__name__}: {str(e)[:300]}"
    return
  by_name = {row["impl"]: row for row in rows}
  for name, t in timings.items():
    row = by_name[name]
    row.update(t.summary())
    row["times_s"] = t.times_s
    if row["bytes"] is not None:
      row["gbps"] = row["bytes"] / row["median_s"] / 1e9
      row["frac_read_bw"] = row["gbps"] / run.read_gbps
      row["frac_spec"] = row["gbps"] / run.spec if run.spec else None
  ref_row = by_name.get(run.opts.reference, {})
  for row in rows:
    for key, ref_key in (("vs_ref", "median_s"), ("temp_vs_ref", "temp_bytes")):
      if row.get(ref_key) is not None and ref_row.get(ref_key):
        row[key] = row[ref_key] / ref_row[ref_key]


def _reps(opts, suite):
  return opts.reps or (3 if opts.quick else suite.reps)


def _max_case_s(opts, suite):
  return opts.max_case_s or (0.3 if opts.quick else suite.max_case_s)


def grid(suite, opts: Options, platform_name: str):
  """The suite's shapes, dtypes and modes in a run."""
  key = "quick" if opts.quick else "cpu" if platform_name == "cpu" else "gpu"
  return (opts.shapes or suite.shapes[key], opts.dtypes or suite.dtypes[key],
          opts.modes or suite.modes)


def _new_rows(suite, mode, shape, dtype, impls, reference) -> list[dict]:
  """A group's rows before it runs: what the case is, one per impl."""
  ref = reference if any(i.name == reference for i in impls) else None
  nbytes = suite.min_bytes(mode, shape, dtype) if suite.min_bytes else None
  return [{
      "suite": suite.name, "mode": mode, "impl": impl.name, "dtype": dtype,
      **dict(zip(suite.dims, shape, strict=True)),
      "shape": "x".join(map(str, shape)), "backend": impl.backend,
      "bytes": nbytes, "reference": ref,
  } for impl in impls]


def run(opts: Options, out_dir: str, command: str) -> dict:
  """Runs the grid `opts` describe, writing results.json as it goes.

  Args:
    opts: The checked options.
    out_dir: The output folder, created here.
    command: The command line, for the record.

  Returns:
    The results: ``meta``, ``bandwidth``, ``rows``, ``complete``...
  """
  start = time.perf_counter()
  device = jax.devices()[0]
  suites = [registry.get(name) for name in opts.suites]
  needs = {i.needs for s in suites for i in implementations(s, opts)} - {None}
  modules, errors = {}, {}
  for name in sorted(needs):
    modules[name], errors[name] = import_module(name)
  missing = {name for name, m in modules.items() if m is None}
  meta = _meta(command, device, modules, errors)
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "results.json")

  bandwidth = {}
  probe_mb = opts.bandwidth_mb or (
      32 if opts.quick else timing.default_bandwidth_bytes(device.platform)
      / 2**20)
  if any(s.min_bytes for s in suites):
    _log(f"device: {device.device_kind} ({device.platform}); measuring read "
         f"bandwidth over {probe_mb:.0f} MiB")
    bandwidth = timing.measure_bandwidth(int(probe_mb * 2**20),
                                         reps=3 if opts.quick else 20)
    _log(f"read bandwidth {bandwidth['read_gbps']:.1f} GB/s, "
         f"copy {bandwidth['copy_gbps']:.1f} GB/s")
  results = {
      "meta": meta,
      "out_dir": out_dir,
      "reference": opts.reference,
      "bandwidth": bandwidth,
      "byte_model": {s.name: s.byte_model for s in suites},
      "suites": {s.name: s.describe() for s in suites},
      "tolerances": {
          kind: {f"{dtype}, {'f32' if f32 else 'bf16'} arithmetic": tol
                 for (dtype, f32), tol in table.items()}
          for kind, table in (("loss_rtol", case.LOSS_RTOL),
                              ("grad_rtol", case.GRAD_RTOL))},
      "implementations": {
          s.name: {i.name: i.code for i in implementations(s, opts, missing)}
          for s in suites},
      "rows": [],
      "complete": False,
  }
  r = _Run(opts, start, device, modules, bandwidth.get("read_gbps"),
           meta["spec_peak_gbps"])
  for suite in suites:
    impls = implementations(suite, opts, missing)
    shapes, dtypes, modes = grid(suite, opts, device.platform)
    for shape in shapes:
      for dtype in dtypes:
        here = [i for i in impls if not (i.upcasts and dtype == "float32"
                                         and i.name != opts.reference)]
        skip = "budget" if r.over_budget() else None
        inputs = None
        if skip is None:
          try:
            inputs = make_inputs(suite, shape, dtype, opts.seed)
          except Exception as e:  # e.g. out of memory: record, go on
            skip = f"inputs: {type(e).__name__}: {str(e)[:300]}"
        for mode in modes:
          rows = _new_rows(suite, mode, shape, dtype, here, opts.reference)
          if skip is not None:
            for row in rows:
              row["status"], row["error"] = "skipped", skip
          else:
            _run_group(r, suite, rows, here, mode, inputs)
          results["rows"].extend(rows)
          report.write_json(results, json_path)
          for row in rows:
            _log_row(row)
        del inputs
  if bandwidth and not opts.quick:
    # Again at the end: a shared machine's load may change during the run.
    # The better of the two is the device's read bandwidth.
    end = timing.measure_bandwidth(int(probe_mb * 2**20), reps=20)
    bandwidth["read_gbps_start"] = bandwidth["read_gbps"]
    bandwidth["read_gbps_end"] = end["read_gbps"]
    bandwidth["read_gbps"] = max(bandwidth["read_gbps"], end["read_gbps"])
    _log(f"read bandwidth at the end {end['read_gbps']:.1f} GB/s")
    for row in results["rows"]:
      if row.get("gbps") is not None:
        row["frac_read_bw"] = row["gbps"] / bandwidth["read_gbps"]
  meta["load_avg_end"] = _load_avg()
  results["complete"] = True
  results["wall_s"] = time.perf_counter() - start
  return results


def _version(module) -> str | None:
  return getattr(module, "__version__", "unknown") if module else None


def _git_commit() -> str | None:
  """The checkout's commit, with ``+dirty`` if the tree has changes."""
  def git(*cmd):
    return subprocess.run(["git", *cmd], capture_output=True, text=True,
                          timeout=10, check=False).stdout.strip()
  try:
    commit = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
  except (OSError, subprocess.SubprocessError):
    return None
  return (commit + ("+dirty" if dirty else "")) if commit else None


def _load_avg() -> list[float] | None:
  """The host's 1, 5 and 15 minute load averages, where the OS gives them."""
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def _meta(command: str, device, modules: dict, errors: dict) -> dict:
  cpu = timing.cpu_model()
  machine = f"{cpu}, {os.cpu_count()} logical CPUs"
  if device.platform != "cpu":
    machine = f"{jax.device_count()} x {device.device_kind}; host {machine}"
  jaxlib, _ = import_module("jaxlib")
  optax, _ = import_module("optax")
  return {
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
      "command": command,
      "platform": device.platform,
      "device_kind": device.device_kind,
      "device_slug": timing.device_slug(device),
      "device_count": jax.device_count(),
      "machine": machine,
      "cpu_model": cpu,
      "cpu_count": os.cpu_count(),
      "spec_peak_gbps": timing.spec_peak_gbps(device.device_kind),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _version(jaxlib),
      "optax": _version(optax),
      "numpy": np.__version__,
      "jxent": _version(modules.get("jxent")),
      "jxent_error": errors.get("jxent"),
      "torch": _version(modules.get("torch")),
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "git_commit": _git_commit(),
      "load_avg_start": _load_avg(),
  }


def _log_row(row: dict) -> None:
  name = (f"{row['suite']} {row['mode']} {row['dtype']} {row['shape']} "
          f"{row['impl']}")
  if row.get("status") != "ok":
    _log(f"{name}: {row.get('status')}: {row.get('error')}")
    return
  text = f"{name}: {row['median_s'] * 1e3:.3f} ms"
  if row.get("gbps") is not None:
    text += f", {row['gbps']:.1f} GB/s"
  if row.get("vs_ref") and row["impl"] != row["reference"]:
    text += f", x{row['vs_ref']:.2f} of {row['reference']}"
  _log(text)


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)

