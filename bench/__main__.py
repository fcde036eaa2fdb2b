"""Runs the benchmark grid on the default JAX device: ``python -m bench``.

Examples::

  python -m bench --quick
  python -m bench --suite ce_int --shapes 8192x32768,8192x262144 --dtypes bfloat16
  python -m bench --suite linear_ce,linear_kl   # python -m bench.linear: all
  python -m bench --from-json bench/results/cpu-2026-11-26/results.json

Without ``--out``, a run writes to ``bench/runs/<device>-<UTC time>/``, which
git ignores, so it never overwrites the committed ``bench/results/``. To
commit a run, name its folder with ``--out``; a folder that already holds a
results.json is refused unless ``--force`` is given. ``--from-json`` redraws
a run's table.md and bench.png in the same way: into a new folder under
``bench/runs/``, or ``--out``; only ``--force`` without ``--out`` rewrites
them beside the file. A bad argument (an output folder that cannot be
made, a shape that cannot fit in memory, a ``--reference`` that cannot be
imported) gives one line on stderr and exit status 2, before anything runs
or is written.
"""

import argparse
import datetime
import math
import os
import re
import sys
import tempfile

from bench import report

RUNS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs")
# A size beyond int32 cannot index an array dimension (nor be a label).
MAX_SIZE = 2**31 - 1


class _Parser(argparse.ArgumentParser):
  """Reports a bad argument in one line on stderr, with exit status 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(low: int):
  def parse(text):
    try:
      value = int(text)
    except ValueError:
      value = None
    if value is None or value < low:
      raise argparse.ArgumentTypeError(
          f"expected an integer >= {low}, got {text!r}")
    return value
  return parse


def _positive_float(text):
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not (math.isfinite(value) and value > 0):
    raise argparse.ArgumentTypeError(
        f"expected a positive number, got {text!r}")
  return value


def _names(text):
  names = tuple(t.strip() for t in text.split(",") if t.strip())
  if not names:
    raise argparse.ArgumentTypeError(f"expected a comma list, got {text!r}")
  return names


def _shapes(text):
  shapes = []
  for item in _names(text):
    if not re.fullmatch(r"\d+(\s*[xX*]\s*\d+)+", item):
      raise argparse.ArgumentTypeError(
          f"bad shape {item!r}: expected sizes joined by x, e.g. 8192x32768")
    shape = tuple(int(v) for v in re.split(r"\s*[xX*]\s*", item))
    if min(shape) < 1:
      raise argparse.ArgumentTypeError(
          f"bad shape {item!r}: every size must be at least 1")
    if max(shape) > MAX_SIZE:
      raise argparse.ArgumentTypeError(
          f"bad shape {item!r}: every size must be at most 2**31 - 1")
    shapes.append(shape)
  return tuple(shapes)


def _file(text):
  if not os.path.isfile(text):
    raise argparse.ArgumentTypeError(f"no such file: {text!r}")
  return text


def _parser(prog: str, suite: tuple[str, ...] | None) -> _Parser:
  p = _Parser(
      prog=prog, description="Benchmark jxent against its peers on the "
      "default JAX device.",
      epilog="Without --out, results go to bench/runs/<device>-<UTC time>/ "
      "(ignored by git), and --from-json's to bench/runs/<folder of the "
      "file>-<UTC time>/.")
  p.add_argument("--suite", type=_names, default=suite,
                 help="comma list of suites (--list names them), or 'all' "
                      "(default: "
                      f"{','.join(suite) if suite else 'the suites on logits'})")
  p.add_argument("--list", action="store_true",
                 help="list the suites and their implementations, and exit")
  p.add_argument("--shapes", type=_shapes,
                 help="comma list of sizes joined by x, for every suite: "
                      "ROWSxCLASSES (TOKENSxDIMxVOCAB for the linear "
                      "suites), e.g. "
                      "8192x32768,8192x262144 (default: a grid per suite and "
                      "platform)")
  p.add_argument("--dtypes", type=_names,
                 help="comma list of float32, bfloat16 (default: per suite)")
  p.add_argument("--modes", type=_names,
                 help="comma list of fwd (loss), vjp (loss and gradient, "
                      "the rows' mean taken outside) and vjp_mean (the same, "
                      "jxent's mean taken inside with reduction='mean') "
                      "(default: per suite)")
  p.add_argument("--impls", type=_names,
                 help="comma list of implementations to run, e.g. "
                      "jxent,optax (default: all)")
  p.add_argument("--reference",
                 help="the implementation that time ratios and max abs diff "
                      "are taken against; refused if its module (torch) "
                      "does not import (default: jxent)")
  p.add_argument("--reps", type=_int_at_least(1),
                 help="repetitions per case (default: the suite's, 10 for "
                      "most; --quick 3)")
  p.add_argument("--max-case-s", type=_positive_float,
                 help="seconds of repetitions per implementation: a group "
                      "of N stops after N times this, once 3 rounds are done "
                      "(default: the suite's, 2 for most; --quick 0.3)")
  p.add_argument("--quick", action="store_true",
                 help="tiny grid, for tests and smoke runs (< 1 min on 2 CPUs)")
  p.add_argument("--out", help="output folder, made if needed (default: "
                               "bench/runs/<device>-<UTC time>)")
  p.add_argument("--force", action="store_true",
                 help="write into an --out folder that holds a "
                      "results.json; with --from-json and no --out, rewrite "
                      "the files beside RESULTS_JSON")
  p.add_argument("--no-plot", action="store_true", help="skip bench.png")
  p.add_argument("--budget-s", type=_positive_float,
                 help="start no new case after this many seconds; the rest "
                      "are listed as skipped")
  p.add_argument("--bandwidth-mb", type=_positive_float,
                 help="size of the read-bandwidth probe in MiB (default 4096 "
                      "on accelerators, 256 on CPU, 32 with --quick)")
  p.add_argument("--seed", type=_int_at_least(0), default=0,
                 help="seed of the inputs (default 0)")
  p.add_argument("--strict", action="store_true",
                 help="exit 1 if a case fails or disagrees with the reference")
  p.add_argument("--from-json", type=_file, metavar="RESULTS_JSON",
                 help="run nothing: redraw table.md and bench.png (with a "
                      "copy of results.json) from a run's results.json, "
                      "into a new folder under bench/runs/, or --out; "
                      "--force alone rewrites them beside RESULTS_JSON")
  return p


def _check(p: _Parser, args):
  """Checks the options against the registry; returns them and the folder."""
  # Imported once the flags parse: a bad flag is refused without waiting
  # for JAX to load.
  from bench import registry, runner, timing

  known = registry.suites()
  if args.suite is None:
    names = tuple(n for n, s in known.items() if s.default)
  elif args.suite == ("all",):
    names = tuple(known)
  else:
    names = args.suite
  for flag, given, allowed in (
      ("--suite", names, known), ("--dtypes", args.dtypes, runner.DTYPES),
      ("--modes", args.modes, runner.MODES)):
    bad = [n for n in given or () if n not in allowed]
    if bad:
      p.error(f"{flag}: unknown {', '.join(bad)}; expected some of "
              f"{', '.join(allowed)}")
  suites = [known[n] for n in names]
  impls = list(dict.fromkeys(i.name for s in suites for i in s.impls()))
  bad = [n for n in args.impls or () if n not in impls]
  if bad:
    p.error(f"--impls: unknown {', '.join(bad)}; expected some of "
            f"{', '.join(impls)}")
  reference = args.reference or "jxent"
  needs = set()
  for s in suites:
    impl = {i.name: i for i in s.impls()}.get(reference)
    if impl is None:
      p.error(f"--reference: suite {s.name} has no implementation "
              f"{reference}")
    needs.add(impl.needs)
  if args.impls and reference not in args.impls:
    p.error(f"--reference: {reference} is not among --impls")
  # Without its module, a reference would leave every ratio blank. The
  # default, jxent, runs even so: the report says why jxent did not import.
  for name in sorted(needs - {None}) if args.reference else ():
    module, error = runner.import_module(name)
    if module is None:
      p.error(f"--reference: {reference} needs {name}, which does not "
              f"import ({error}); install it or name another reference")
  for s in suites:
    for shape in args.shapes or ():
      if len(shape) != len(s.dims):
        p.error(f"--shapes: suite {s.name} takes "
                f"{'x'.join(d.upper() for d in s.dims)}, got "
                f"{'x'.join(map(str, shape))}")
  import jax

  # Simulated CPU devices (the sharded suite) must be set before JAX starts.
  devices = max(s.cpu_devices for s in suites)
  if devices > 1 and jax.config.jax_num_cpu_devices < devices:
    try:
      jax.config.update("jax_num_cpu_devices", devices)
    except RuntimeError:  # JAX has started: run on the devices it has
      pass
  opts = runner.Options(
      suites=names, shapes=args.shapes, dtypes=args.dtypes, modes=args.modes,
      impls=frozenset(args.impls) if args.impls else None,
      reference=reference, reps=args.reps, max_case_s=args.max_case_s,
      quick=args.quick, budget_s=args.budget_s,
      bandwidth_mb=args.bandwidth_mb, seed=args.seed)
  device = jax.devices()[0]
  for s in suites:
    shapes, _, _ = runner.grid(s, opts, device.platform)
    for shape in shapes if s.check_shape else ():
      why = s.check_shape(shape)
      if why:
        p.error(f"--shapes: suite {s.name}: {why}")
  _check_memory(p, suites, opts, device)
  out = _out_dir(p, args, timing.device_slug(device))
  return opts, out


def _check_memory(p: _Parser, suites, opts, device) -> None:
  """Refuses a shape of --shapes whose inputs cannot fit in memory.

  A case holds its inputs and about as much again (the gradient, the
  temporaries), so inputs beyond half the device's memory cannot run; on a
  CPU, trying aborts the process. The default grids are not checked: there
  a case too big for a small device is recorded as skipped.
  """
  from bench import runner, timing

  memory = timing.memory_bytes(device)
  for s in suites if opts.shapes else ():
    _, dtypes, _ = runner.grid(s, opts, device.platform)
    for shape in opts.shapes:
      text = "x".join(map(str, shape))
      try:
        nbytes = max(runner.input_bytes(s, shape, d) for d in dtypes)
      except Exception as e:  # Sizes JAX cannot even describe.
        reason = (str(e) or type(e).__name__).splitlines()[0][:200]
        p.error(f"--shapes: suite {s.name}: no inputs of shape {text} "
                f"({reason})")
      if memory and nbytes > memory // 2:
        p.error(f"--shapes: suite {s.name}: the inputs of shape {text} take "
                f"{nbytes / 2**30:.3g} GiB, more than half of the "
                f"{memory / 2**30:.3g} GiB of {device.platform} memory")


def _out_dir(p: _Parser, args, name: str, beside: str | None = None) -> str:
  """`--out`, checked, or a new folder under `RUNS` named `name` and the time.

  Args:
    p: The parser, which reports a refusal.
    args: The parsed flags.
    name: The start of a new folder's name.
    beside: The folder `--force` without `--out` writes to (--from-json's);
      None: `--force` matters only with `--out`.

  Returns:
    A folder that can be made and written to, refused otherwise.
  """
  if args.out is None and not (args.force and beside):
    now = datetime.datetime.now(datetime.UTC)
    base = os.path.join(RUNS, f"{name}-{now:%Y%m%d-%H%M%S}")
    out, n = base, 1
    while os.path.exists(out):
      n += 1
      out = f"{base}-{n}"
    problem = _cannot_write(out)
    if problem:
      p.error(f"cannot write {out} ({problem}); name a folder with --out")
    return out
  out = beside if args.out is None else args.out
  if os.path.exists(out) and not os.path.isdir(out):
    p.error(f"--out: {out} is a file, not a folder")
  if os.path.exists(os.path.join(out, "results.json")) and not args.force:
    p.error(f"--out: {out} already holds a results.json; name another "
            "folder or pass --force to overwrite it")
  problem = _cannot_write(out)
  if problem:
    p.error(f"--out: cannot write {out} ({problem})")
  return out


def _cannot_write(folder: str) -> str | None:
  """Why `folder` cannot be made (with its parents) and written to, or None.

  Tried for real: a folder the system refuses (in /proc, on a read-only
  disk) passes any look at permissions. What is made to find out is
  removed again.
  """
  new, head = [], os.path.abspath(folder)
  while not os.path.exists(head):
    new.append(head)
    head = os.path.dirname(head)
  try:
    for path in reversed(new):
      os.mkdir(path)
    with tempfile.TemporaryFile(dir=folder):
      pass
  except OSError as e:
    return e.strerror or type(e).__name__
  finally:
    for path in new:  # The deepest first.
      try:
        os.rmdir(path)
      except OSError:
        pass
  return None


def main(argv=None, *, prog: str = "python -m bench",
         suite: str | tuple[str, ...] | None = None) -> int:
  """Entry point of ``python -m bench`` and its aliases.

  Args:
    argv: The arguments, without the program name; None for ``sys.argv``.
    prog: The command's name, for messages and the record.
    suite: The suite, or suites, run without ``--suite`` (``bench.linear``,
      ``bench.sharded``); None for the default suites.

  Returns:
    The exit status: 0, or 1 under ``--strict`` when a case failed or
    disagreed with the reference. Bad arguments exit with status 2.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  p = _parser(prog, (suite,) if isinstance(suite, str) else suite)
  args = p.parse_args(argv)
  if args.list:
    from bench import registry

    for s in registry.suites().values():
      print(f"{s.name}: {s.title}; shapes {'x'.join(d.upper() for d in s.dims)}"
            f"{'' if s.default else '; only with --suite'}")
      for impl in s.impls():
        print(f"  {impl.name}: {impl.code}")
    return 0
  if args.from_json:
    try:
      results = report.read_json(args.from_json)
    except (OSError, ValueError) as e:
      p.error(f"--from-json: {e}")
    source = os.path.dirname(os.path.abspath(args.from_json))
    out_dir = _out_dir(p, args, os.path.basename(source), beside=source)
  else:
    opts, out_dir = _check(p, args)
    from bench import runner

    results = runner.run(opts, out_dir, " ".join([prog, *argv]))
  text = report.write_all(results, out_dir, with_plot=not args.no_plot)
  print(text)
  print(f"wrote {out_dir}", file=sys.stderr)
  bad = report.failures(results)
  for line in bad:
    print(f"FAIL {line}", file=sys.stderr)
  return 1 if (args.strict and bad) else 0


if __name__ == "__main__":
  sys.exit(main())
