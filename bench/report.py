"""Writes a run's results: results.json, the markdown table and the plot."""

import json
import math
import os
import statistics

# What every row of a results.json holds, even in old files.
_ROW_KEYS = frozenset({"suite", "impl", "mode", "dtype"})
# Old results.json files name a row's sizes, not its shape.
_LEGACY_DIMS = (("tokens", "dim", "vocab"), ("rows", "classes"),
                ("rows", "vocab"))


def _clean(value):
  """Replaces NaN and infinities by None, recursively, so the JSON is valid,
  and rounds floats to 5 significant digits (timings are not more precise)."""
  if isinstance(value, float):
    return float(f"{value:.5g}") if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def write_json(results: dict, path: str) -> None:
  """Writes `results` to `path` atomically, as strict JSON (no NaN).

  Args:
    results: The run's ``meta``, ``bandwidth``, ``rows``...
    path: Destination file.
  """
  results = _clean(results)
  head = {k: v for k, v in results.items() if k != "rows"}
  text = json.dumps(head, indent=1, allow_nan=False)
  # One line per row keeps the file small and easy to diff.
  rows = ",\n".join("  " + json.dumps(r, allow_nan=False)
                     for r in results.get("rows", []))
  text = text[:-2] + ',\n "rows": [\n' + rows + "\n ]\n}\n"
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def read_json(path: str) -> dict:
  """Reads a results.json written by `write_json`.

  Raises:
    ValueError: If the file is not JSON, or holds no ``meta`` and ``rows``.
    OSError: If it cannot be read.
  """
  with open(path) as f:
    try:
      results = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ValueError(f"{path} is not JSON: {e}") from None
  if (not isinstance(results, dict) or not isinstance(results.get("meta"), dict)
      or not isinstance(results.get("rows"), list)
      or not all(isinstance(r, dict) and _ROW_KEYS <= r.keys()
                 for r in results["rows"])):
    raise ValueError(f"{path} is not a bench results.json: it needs meta, "
                     f"and rows with {', '.join(sorted(_ROW_KEYS))}")
  return results


def reference(results: dict) -> str:
  """The implementation the run's ratios are taken against."""
  return results.get("reference") or "jxent"


def _ratio(row: dict):
  return row.get("vs_ref", row.get("vs_jxent"))


def shape_of(row: dict) -> str:
  if row.get("shape"):
    return row["shape"]
  for dims in _LEGACY_DIMS:
    if all(d in row for d in dims):
      return "x".join(str(row[d]) for d in dims)
  return "?"


def suite_info(results: dict) -> dict:
  """Each suite's title, summarised implementations and note, from the run
  or, for a file written before they were recorded, the registry."""
  if "suites" in results:
    return results["suites"]
  from bench import registry

  return {name: s.describe() for name, s in registry.suites().items()}


def fmt(value, spec: str, scale: float = 1.0) -> str:
  if value is None:
    return "–"
  if isinstance(value, float) and not math.isfinite(value):
    return "nan"
  return format(value * scale, spec)


def _ms(value) -> str:
  if value is None:
    return "–"
  ms = value * 1e3
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def _mb(value) -> str:
  return "–" if value is None else f"{value / 2**20:.1f}"


def _columns(ref: str, notes: bool) -> tuple[str, ...]:
  return ("suite", "mode", "dtype", "shape", "impl", "median ms", "IQR ms",
          "GB/s", "% read BW", "% spec", "temp MB", "peak MB",
          f"time / {ref}", "max abs diff",
          *(("notes",) if notes else ()))


def _row_cells(row: dict, notes: bool) -> list[str]:
  head = [row["suite"], row["mode"], row["dtype"], shape_of(row), row["impl"]]
  tail = [row.get("notes") or ""] if notes else []
  if row.get("status", "ok") != "ok":
    reason = row.get("error") or row.get("status", "")
    return head + [f"{row.get('status')}: {reason}"[:60]] + [""] * 8 + tail
  iqr = None
  if row.get("p75_s") is not None and row.get("p25_s") is not None:
    iqr = row["p75_s"] - row["p25_s"]
  peak = row.get("gpu_peak_delta_bytes")
  peak_cell = _mb(peak)
  if peak is not None and not row.get("gpu_peak_rose"):
    peak_cell = f"≤{peak_cell}"
  if row["impl"] == row.get("reference"):
    diff_cell = "ref"
  else:
    diff_cell = fmt(row.get("loss_max_abs_diff", row.get("loss_diff")),
                     ".1e")
    if row["mode"] != "fwd" and row.get("grad_max_abs_diff") is not None:
      diff_cell += f" / {fmt(row['grad_max_abs_diff'], '.1e')}"
  if row.get("agrees") is False:
    diff_cell += " (!)"
  return head + [
      _ms(row.get("median_s")),
      _ms(iqr),
      fmt(row.get("gbps"), ".1f"),
      fmt(row.get("frac_read_bw"), ".0f", 100),
      fmt(row.get("frac_spec"), ".0f", 100),
      _mb(row.get("temp_bytes")),
      peak_cell,
      fmt(_ratio(row), ".2f"),
      diff_cell,
  ] + tail


def _md_table(header, body) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return lines


def geomean(values) -> float:
  return math.exp(statistics.fmean(math.log(v) for v in values))


def speedups(results: dict) -> dict[tuple, list[tuple[float, str]]]:
  """Peer time over reference time, per suite, mode, dtype and peer.

  Only each suite's summarised implementations count: jxent's own and the
  peers as users run them (`registry.Suite.summarised`). A ratio
  above 1 means the reference is faster.

  Returns:
    ``(suite, mode, dtype, peer)`` to a list of ``(ratio, shape)``.
  """
  suites = suite_info(results)
  groups: dict[tuple, list[tuple[float, str]]] = {}
  for row in results["rows"]:
    ratio = _ratio(row)
    summarised = suites.get(row["suite"], {}).get("summarised", ())
    if (row.get("status") != "ok" or not ratio
        or row["impl"] == row.get("reference")
        or row["impl"] not in summarised):
      continue
    key = (row["suite"], row["mode"], row["dtype"], row["impl"])
    groups.setdefault(key, []).append((ratio, shape_of(row)))
  return groups


def summary_rows(results: dict) -> list[list[str]]:
  """`speedups` as table cells: suite, mode, dtype, peer, min (at shape),
  geometric mean, max (at shape), shapes."""
  out = []
  for key, values in speedups(results).items():
    lo, hi = min(values), max(values)
    out.append(list(key) + [f"{lo[0]:.2f} ({lo[1]})",
                            f"{geomean(r for r, _ in values):.2f}",
                            f"{hi[0]:.2f} ({hi[1]})", str(len(values))])
  return out


def markdown(results: dict) -> str:
  """The run as markdown: where it ran, the bandwidths, a summary, the table.

  Args:
    results: As written to results.json.

  Returns:
    Markdown text.
  """
  meta = results["meta"]
  ref = reference(results)
  bw = results.get("bandwidth") or {}
  spec = meta.get("spec_peak_gbps")
  load = meta.get("load_avg_start")
  lines = [
      f"# jxent bench: {meta.get('device_kind')} ({meta.get('platform')}), "
      f"{meta.get('date')}",
      "",
      f"- Machine: {meta.get('machine', '')}"
      + (f"; load average {load[0]} at the start, "
         f"{(meta.get('load_avg_end') or ['?'])[0]} at the end" if load else ""),
      f"- Versions: jax {meta.get('jax')}, jaxlib {meta.get('jaxlib')}, "
      f"optax {meta.get('optax')}, jxent {meta.get('jxent')}, "
      f"torch {meta.get('torch') or 'not installed'}, "
      f"Python {meta.get('python')}",
      f"- Command: `{meta.get('command')}`",
  ]
  if bw.get("read_gbps"):
    lines.append(
        f"- Measured read bandwidth: {fmt(bw['read_gbps'], '.1f')} GB/s, "
        f"the better of a float32 full sum and row sum over "
        f"{_mb(bw.get('bytes'))} MB"
        + (f", measured at the start ({fmt(bw['read_gbps_start'], '.1f')}) "
           f"and the end ({fmt(bw['read_gbps_end'], '.1f')}) of the run"
           if bw.get("read_gbps_end") else "")
        + f"; a copy `x * 2` gave {fmt(bw.get('copy_gbps'), '.1f')} GB/s. "
        f"Spec peak: {f'{spec:.0f} GB/s' if spec else 'none known'}.")
    lines.append(
        "- GB/s: the fewest bytes a case must move (the byte model below, "
        "counted at the input dtype, so an upcast is that implementation's "
        "own cost) over the median time.")
  lines.append(
      f"- Reference `{ref}`: `time / {ref}` divides an implementation's "
      f"median time by {ref}'s in the same case: above 1, {ref} is faster. "
      f"`max abs diff`: per-row loss against {ref} (fwd), or mean loss / "
      "gradient against it (vjp); (!) beyond tolerance.")
  if meta.get("jxent_error"):
    lines.append(f"- jxent failed to import: {meta['jxent_error']}")
  if not results.get("complete", True):
    lines.append("- **Incomplete run**: the table holds the cases finished.")
  suites = suite_info(results)
  byte_model = results.get("byte_model")
  present = list(dict.fromkeys(r["suite"] for r in results["rows"]))
  if present:
    lines += ["", "## Suites", ""]
    for name in present:
      info = suites.get(name, {})
      text = f"- `{name}`: {info.get('title', '')}."
      if isinstance(byte_model, dict) and byte_model.get(name):
        text += f" Byte model: {byte_model[name]}."
      if info.get("note"):
        text += f" {info['note']}"
      lines.append(text)
  summary = summary_rows(results)
  if summary:
    lines += ["", f"## Peer time / {ref} time over the shapes", ""]
    lines += _md_table(
        ("suite", "mode", "dtype", "peer", "min (shape)", "geomean",
         "max (shape)", "shapes"), summary)
  notes = any(r.get("notes") for r in results["rows"])
  lines += ["", "## All cases", ""]
  lines += _md_table(_columns(ref, notes),
                     [_row_cells(r, notes) for r in results["rows"]])
  return "\n".join(lines) + "\n"


def failures(results: dict) -> list[str]:
  """Cases that failed or disagree with the reference beyond tolerance."""
  bad = []
  for row in results["rows"]:
    name = f"{row['suite']} {row['mode']} {row['dtype']} {shape_of(row)} {row['impl']}"
    if row.get("status") == "error":
      bad.append(f"{name}: {row.get('error')}")
    elif row.get("agrees") is False:
      bad.append(f"{name}: max abs diff {row.get('loss_max_abs_diff')} "
                 f"(loss), {row.get('grad_max_abs_diff')} (grad)")
  if results["meta"].get("jxent_error"):
    bad.append(f"jxent import: {results['meta']['jxent_error']}")
  return bad


def write_all(results: dict, out_dir: str, *, with_plot: bool = True) -> str:
  """Writes results.json, table.md and (unless told not to) bench.png.

  bench.png is drawn only for suites with a byte model.

  Args:
    results: The run.
    out_dir: Destination folder, created if needed.
    with_plot: Whether to draw bench.png.

  Returns:
    The markdown text.
  """
  os.makedirs(out_dir, exist_ok=True)
  write_json(results, os.path.join(out_dir, "results.json"))
  text = markdown(results)
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(text)
  if with_plot:
    from bench import plot

    plot.plot(results, os.path.join(out_dir, "bench.png"))
  return text
