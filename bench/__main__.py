"""Runs the benchmark grid on the default JAX device: ``python -m bench``.

Examples::

  python -m bench --quick
  python -m bench --suite ce_int --shapes 8192x32768,8192x262144 --dtypes bfloat16
  python -m bench --from-json bench/results/cpu-2026-11-26/results.json
"""

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import cases, report, timing


def parse_args(argv=None) -> argparse.Namespace:
  """Parses the command line.

  Args:
    argv: The arguments, without the program name; None for ``sys.argv``.

  Returns:
    The options.
  """
  p = argparse.ArgumentParser(
      prog="python -m bench",
      description="Benchmark jxent against optax, a naive formula and torch "
                  "(if installed) on the default JAX device.")
  p.add_argument("--suite", default="all",
                 help=f"comma list of {','.join(cases.SUITES)}, or 'all'")
  p.add_argument("--shapes", default=None,
                 help="comma list of ROWSxCLASSES for every suite, e.g. "
                      "8192x32768,8192x262144 (default: a grid per platform)")
  p.add_argument("--dtypes", default="float32,bfloat16",
                 help="comma list of float32,bfloat16")
  p.add_argument("--modes", default="fwd,vjp",
                 help="comma list of fwd (loss) and vjp (loss and gradient)")
  p.add_argument("--impls", default="all",
                 help="comma list of implementations to run (jxent, optax, "
                      "optax_f32, jax_nn, jax_nn_f32, naive, torch), or 'all'")
  p.add_argument("--reps", type=int, default=None,
                 help="repetitions per case (default 10, --quick 3)")
  p.add_argument("--max-case-s", type=float, default=None,
                 help="seconds of repetitions per implementation: a group "
                      "of N stops after N times this, once 3 rounds are done "
                      "(default 2, --quick 0.3)")
  p.add_argument("--quick", action="store_true",
                 help="tiny grid, for tests and smoke runs (< 1 min on 2 CPUs)")
  p.add_argument("--out", default=None,
                 help="output folder (default OUT_ROOT/<device-kind>-<date>)")
  p.add_argument("--out-root", default=os.path.join("bench", "results"),
                 help="parent of the default output folder")
  p.add_argument("--no-plot", action="store_true", help="skip bench.png")
  p.add_argument("--budget-s", type=float, default=None,
                 help="start no new case after this many seconds; the rest "
                      "are listed as skipped")
  p.add_argument("--bandwidth-mb", type=float, default=None,
                 help="size of the read-bandwidth probe in MiB (default 4096 "
                      "on accelerators, 256 on CPU, 32 with --quick)")
  p.add_argument("--seed", type=int, default=0, help="seed of the inputs")
  p.add_argument("--strict", action="store_true",
                 help="exit 1 if a case fails or disagrees with jxent")
  p.add_argument("--from-json", default=None, metavar="RESULTS_JSON",
                 help="only rewrite table.md and bench.png from a results.json")
  return p.parse_args(argv)


def _split(text: str, allowed, what: str) -> list[str]:
  if text == "all":
    return list(allowed)
  items = [t.strip() for t in text.split(",") if t.strip()]
  bad = [t for t in items if allowed is not None and t not in allowed]
  if bad:
    raise SystemExit(f"unknown {what} {bad}; expected some of {list(allowed)}")
  return items


def _version(module_name: str) -> str | None:
  try:
    module = __import__(module_name)
  except Exception:  # absent or broken
    return None
  return getattr(module, "__version__", "unknown")


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


def _meta(argv, device, jxent, jxent_error, torch) -> dict:
  platform_name = device.platform
  cpu = timing.cpu_model()
  if platform_name == "cpu":
    machine = f"{cpu}, {os.cpu_count()} logical CPUs"
  else:
    machine = (f"{jax.device_count()} x {device.device_kind}; host {cpu}, "
               f"{os.cpu_count()} logical CPUs")
  return {
      "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
      "command": " ".join(["python -m bench", *argv]),
      "argv": list(argv),
      "platform": platform_name,
      "device_kind": device.device_kind,
      "device_slug": timing.device_slug(device),
      "device_count": jax.device_count(),
      "machine": machine,
      "cpu_model": cpu,
      "cpu_count": os.cpu_count(),
      "spec_peak_gbps": timing.spec_peak_gbps(device.device_kind),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": _version("jaxlib"),
      "optax": optax.__version__,
      "numpy": np.__version__,
      "jxent": getattr(jxent, "__version__", None) if jxent else None,
      "jxent_error": jxent_error,
      "torch": getattr(torch, "__version__", None) if torch else None,
      "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
      "git_commit": _git_commit(),
      "load_avg_start": _load_avg(),
  }


def _load_avg() -> list[float] | None:
  """The host's 1, 5 and 15 minute load averages, where the OS gives them."""
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


@jax.jit
def _diff(a, b):
  """Max |a - b|, max |b| and whether a is finite, in float32."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  return jnp.max(jnp.abs(a - b)), jnp.max(jnp.abs(b)), jnp.all(jnp.isfinite(a))


def _host_diff(a, b):
  """`_diff` on the host, for small arrays (no compilation) and torch."""
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  return (float(np.max(np.abs(a - b))), float(np.max(np.abs(b))),
          bool(np.all(np.isfinite(a))))


def _agreement(row: dict, out, ref, impl: cases.Impl) -> None:
  """Adds the max abs difference of `out` from the reference's `ref` to `row`."""
  loss, grad = (out, None) if row["mode"] == "fwd" else out
  ref_loss, ref_grad = (ref, None) if row["mode"] == "fwd" else ref
  def diff(a, b):
    if impl.backend == "jax" and np.size(a) > 2**22:
      return _diff(a, b)
    return _host_diff(a, b)

  d, scale, finite = (float(v) for v in diff(loss, ref_loss))
  row["loss_max_abs_diff"] = d
  row["loss_ref_max_abs"] = scale
  row["finite"] = bool(finite)
  key = (row["dtype"], impl.accumulates_f32(row["dtype"]))
  agrees = bool(finite) and d <= cases.LOSS_RTOL[key] * max(scale, 1.0)
  if grad is not None and ref_grad is not None:
    g, gscale, gfinite = (float(v) for v in diff(grad, ref_grad))
    row["grad_max_abs_diff"] = g
    row["grad_ref_max_abs"] = gscale
    row["finite"] = row["finite"] and bool(gfinite)
    agrees = agrees and bool(gfinite) and g <= cases.GRAD_RTOL[key] * gscale
  row["agrees"] = agrees


def _prepare_jax(impl, mode, x, extra, device):
  """Compiles a jax case and runs it once, for memory and agreement.

  Returns:
    ``(call, sync, out, fields)``: a call that runs the case again, how to
    wait for its output, the first output, and the row's compile and memory
    fields.
  """
  if mode == "fwd":
    fn = impl.fn
  else:
    fn = jax.value_and_grad(lambda x, *e: impl.fn(x, *e).mean())
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(x, *extra).compile()
  fields = {"compile_s": time.perf_counter() - t0}
  fields.update(timing.compiled_memory(compiled))
  before = timing.device_memory(device)
  out = jax.block_until_ready(compiled(x, *extra))
  after = timing.device_memory(device)
  if before and after:
    fields["gpu_live_before_bytes"] = before["bytes_in_use"]
    fields["gpu_peak_bytes"] = after["peak_bytes_in_use"]
    fields["gpu_peak_delta_bytes"] = (after["peak_bytes_in_use"]
                                      - before["bytes_in_use"])
    fields["gpu_peak_rose"] = (after["peak_bytes_in_use"]
                               > before["peak_bytes_in_use"])

  def call():
    return compiled(x, *extra)

  return call, jax.block_until_ready, out, fields


def _prepare_torch(torch, impl, mode, x, extra, dtype, platform_name):
  """Copies a case's inputs to torch and runs it once, eagerly.

  Returns:
    ``(call, sync, out, fields)`` as `_prepare_jax`, with the output on the
    host as numpy (the gradient only if it has at most 2**27 elements).
  """
  use_cuda = platform_name == "gpu" and torch.cuda.is_available()
  dev = "cuda" if use_cuda else "cpu"
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

  def to_torch(a):
    arr = np.asarray(jax.device_get(a))
    if np.issubdtype(arr.dtype, np.integer):
      return torch.from_numpy(arr.astype(np.int64)).to(dev)
    return torch.from_numpy(arr.astype(np.float32)).to(dev, tdtype)

  tx = to_torch(x)
  textra = [to_torch(e) for e in extra]
  if mode == "fwd":
    def call():
      with torch.no_grad():
        return impl.fn(tx, *textra)
  else:
    tx.requires_grad_(True)

    def call():
      tx.grad = None
      loss = impl.fn(tx, *textra).mean()
      loss.backward()
      return loss.detach(), tx.grad

  def sync(_):
    if use_cuda:
      torch.cuda.synchronize()

  out = call()
  sync(out)

  def to_np(v):
    return v.detach().float().cpu().numpy()

  if mode == "fwd":
    host = to_np(out)
  else:
    loss, grad = out
    host = (to_np(loss), to_np(grad) if grad.numel() <= 2**27 else None)
  fields = {"compile_s": None, "temp_bytes": None, "output_bytes": None,
            "torch_device": dev}
  return call, sync, host, fields


def _run_group(rows, impls, mode, x, extra, ctx):
  """Prepares, checks and times one suite, shape, dtype and mode.

  The jax implementations are timed in turn, one repetition each per round,
  so that a change of load on the machine hits them all alike; torch's is
  timed after them.

  Args:
    rows: The group's result rows, one per implementation, updated in place.
    impls: The implementations, jxent (the reference) first.
    mode: ``"fwd"`` or ``"vjp"``.
    x: The logits.
    extra: The suite's other inputs.
    ctx: The run's settings (`run`).
  """
  calls = {}
  ref = None
  for row, impl in zip(rows, impls, strict=True):
    if row.get("status") == "skipped":
      continue
    if _over_budget(ctx["args"], ctx["start"]):
      row["status"], row["error"] = "skipped", "budget"
      continue
    try:
      if impl.backend == "torch":
        call, sync, out, fields = _prepare_torch(
            ctx["torch"], impl, mode, x, extra, row["dtype"], ctx["platform"])
      else:
        call, sync, out, fields = _prepare_jax(impl, mode, x, extra,
                                               ctx["device"])
    except Exception as e:  # e.g. out of memory: record, go on
      row["status"] = "error"
      row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      continue
    row["status"] = "ok"
    row.update(fields)
    if impl.name == "jxent":
      ref = out
    if ref is not None:
      _agreement(row, out, ref, impl)  # jxent against itself: scale, finite
    del out
    calls[impl.name] = (call, sync)
  del ref
  if not calls:
    return
  # torch is timed on its own, after the jax implementations: on a CPU its
  # thread pool keeps spinning after each call and would slow whichever jax
  # call came next (and jax's pool would slow torch's).
  backends = {impl.name: impl.backend for impl in impls}
  try:
    timings = {}
    for backend in ("jax", "torch"):
      some = {k: v for k, v in calls.items() if backends[k] == backend}
      if some:
        timings.update(timing.time_interleaved(
            some, reps=ctx["reps"],
            max_total_s=ctx["max_case_s"] * len(some)))
  except Exception as e:  # e.g. out of memory: record, go on
    for row in rows:
      if row.get("status") == "ok":
        row["status"] = "error"
        row["error"] = f"timing: {type(e).__name__}: {str(e)[:300]}"
    return
  by_name = {row["impl"]: row for row in rows}
  ref_median = None
  if "jxent" in timings:
    ref_median = timings["jxent"].summary()["median_s"]
  for name, t in timings.items():
    row = by_name[name]
    row.update(t.summary())
    row["times_s"] = t.times_s
    row["gbps"] = row["bytes"] / row["median_s"] / 1e9
    row["frac_read_bw"] = row["gbps"] / ctx["read_gbps"]
    row["frac_spec"] = row["gbps"] / ctx["spec"] if ctx["spec"] else None
    row["vs_jxent"] = row["median_s"] / ref_median if ref_median else None


def run(args: argparse.Namespace, argv) -> dict:
  """Runs the grid the options describe and writes the results as it goes.

  Args:
    args: From `parse_args`.
    argv: The arguments as given, for the record.

  Returns:
    The results: ``meta``, ``bandwidth``, ``byte_model``, ``tolerances``,
    ``rows`` and ``complete``.
  """
  start = time.perf_counter()
  device = jax.devices()[0]
  platform_name = device.platform
  suites = _split(args.suite, cases.SUITES, "suite")
  dtypes = _split(args.dtypes, cases.DTYPES, "dtype")
  modes = _split(args.modes, cases.MODES, "mode")
  impl_filter = set(_split(args.impls, cases.IMPLS, "implementation"))
  jxent, jxent_error = cases.import_jxent()
  torch = cases.import_torch() if "torch" in impl_filter else None
  reps = args.reps or (3 if args.quick else 10)
  max_case_s = args.max_case_s or (0.3 if args.quick else 2.0)
  meta = _meta(argv, device, jxent, jxent_error, torch)
  out_dir = args.out or os.path.join(
      args.out_root, f"{meta['device_slug']}-{meta['date'][:10]}")
  os.makedirs(out_dir, exist_ok=True)
  json_path = os.path.join(out_dir, "results.json")

  probe_mb = args.bandwidth_mb or (
      32 if args.quick else timing.default_bandwidth_bytes(platform_name) / 2**20)
  _log(f"device: {device.device_kind} ({platform_name}); measuring read "
       f"bandwidth over {probe_mb:.0f} MiB")
  bandwidth = timing.measure_bandwidth(int(probe_mb * 2**20),
                                       reps=reps if args.quick else 20)
  _log(f"read bandwidth {bandwidth['read_gbps']:.1f} GB/s, "
       f"copy {bandwidth['copy_gbps']:.1f} GB/s")
  spec = meta["spec_peak_gbps"]
  results = {
      "meta": meta,
      "out_dir": out_dir,
      "bandwidth": bandwidth,
      "byte_model": cases.min_bytes.__doc__.split("Args:")[0].strip(),
      "tolerances": {
          kind: {f"{dtype}, {'f32' if f32 else 'bf16'} arithmetic": tol
                 for (dtype, f32), tol in table.items()}
          for kind, table in (("loss_rtol", cases.LOSS_RTOL),
                              ("grad_rtol", cases.GRAD_RTOL))},
      "implementations": {
          suite: {i.name: i.code
                  for i in cases.implementations(suite, jxent=jxent,
                                                 torch=torch)
                  if i.name in impl_filter}
          for suite in suites},
      "rows": [],
      "complete": False,
  }

  ctx = {"args": args, "start": start, "device": device, "torch": torch,
         "platform": platform_name, "reps": reps, "max_case_s": max_case_s,
         "read_gbps": bandwidth["read_gbps"], "spec": spec}
  for suite in suites:
    impls = cases.implementations(suite, jxent=jxent, torch=torch)
    impls = [i for i in impls if i.name in impl_filter]
    shapes = (cases.parse_shapes(args.shapes) if args.shapes
              else cases.default_shapes(suite, platform_name, args.quick))
    for n_rows, n_classes in shapes:
      for dtype in dtypes:
        here = [i for i in impls if not (i.upcasts and dtype == "float32")]
        skip = "budget" if _over_budget(args, start) else None
        x = extra = None
        if skip is None:
          try:
            x, extra = cases.make_inputs(suite, n_rows, n_classes, dtype,
                                         args.seed)
            jax.block_until_ready((x, extra))
          except Exception as e:  # e.g. out of memory: record, go on
            skip = f"inputs: {type(e).__name__}: {str(e)[:300]}"
        for mode in modes:
          rows = [{
              "suite": suite, "mode": mode, "impl": impl.name, "dtype": dtype,
              "rows": n_rows, "classes": n_classes, "backend": impl.backend,
              "bytes": cases.min_bytes(suite, mode, n_rows, n_classes, dtype),
              "reference": "jxent" if jxent is not None else None,
          } for impl in here]
          if skip is not None:
            for row in rows:
              row["status"], row["error"] = "skipped", skip
          else:
            _run_group(rows, here, mode, x, extra, ctx)
          results["rows"].extend(rows)
          report.write_json(results, json_path)
          for row in rows:
            _log_row(row)
        del x, extra
  if not args.quick:
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


def _over_budget(args, start: float) -> bool:
  return (args.budget_s is not None
          and time.perf_counter() - start > args.budget_s)


def _log_row(row: dict) -> None:
  name = (f"{row['suite']} {row['mode']} {row['dtype']} "
          f"{row['rows']}x{row['classes']} {row['impl']}")
  if row.get("status") != "ok":
    _log(f"{name}: {row.get('status')}: {row.get('error')}")
    return
  ratio = row.get("vs_jxent")
  _log(f"{name}: {row['median_s'] * 1e3:.3f} ms, {row['gbps']:.1f} GB/s"
       + (f", x{ratio:.2f} of jxent" if ratio else ""))


def _log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


def failures(results: dict) -> list[str]:
  """Cases that failed or disagree with jxent beyond tolerance."""
  bad = []
  for row in results["rows"]:
    name = (f"{row['suite']} {row['mode']} {row['dtype']} "
            f"{row['rows']}x{row['classes']} {row['impl']}")
    if row.get("status") == "error":
      bad.append(f"{name}: {row.get('error')}")
    elif row.get("agrees") is False:
      bad.append(f"{name}: max abs diff {row.get('loss_max_abs_diff')} "
                 f"(loss), {row.get('grad_max_abs_diff')} (grad)")
  if results["meta"].get("jxent_error"):
    bad.append(f"jxent import: {results['meta']['jxent_error']}")
  return bad


def main(argv=None) -> int:
  """Entry point of ``python -m bench``.

  Args:
    argv: The arguments, without the program name; None for ``sys.argv``.

  Returns:
    The exit status: 0, or 1 under ``--strict`` when a case failed or
    disagreed with jxent.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.from_json:
    results = report.read_json(args.from_json)
    out_dir = os.path.dirname(os.path.abspath(args.from_json))
  else:
    results = run(args, argv)
    out_dir = results["out_dir"]
  text = report.write_all(results, out_dir, with_plot=not args.no_plot)
  print(text)
  _log(f"wrote {out_dir}")
  bad = failures(results)
  for line in bad:
    _log(f"FAIL {line}")
  return 1 if (args.strict and bad) else 0


if __name__ == "__main__":
  sys.exit(main())
