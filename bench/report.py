"""Writes a run's results: results.json, the markdown table and the plot."""

import io
import json
import math
import os
import statistics
from collections import Counter

from bench import cases, timing

TABLE_COLUMNS = (
    "suite", "mode", "dtype", "shape", "impl", "median ms", "IQR ms", "GB/s",
    "% read BW", "% spec", "temp MB", "peak MB", "time / jxent", "max abs diff",
)


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


def suite_dir(out: str | None, device, suite: str, date) -> str:
  """A side suite's folder: `out`, or `<device>-<date>/<suite>` under
  bench/results; created if missing."""
  out = out or os.path.join(
      "bench", "results", f"{timing.device_slug(device)}-{date:%Y-%m-%d}",
      suite)
  os.makedirs(out, exist_ok=True)
  return out


def write_suite(results: dict, table: str, out_dir: str) -> None:
  """Writes a side suite's results.json and table.md, and prints the table."""
  write_json(results, os.path.join(out_dir, "results.json"))
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(table)
  print(table)


def read_json(path: str) -> dict:
  """Reads a results.json written by `write_json`."""
  with open(path) as f:
    return json.load(f)


def _fmt(value, spec: str, scale: float = 1.0) -> str:
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


def _row_cells(row: dict) -> list[str]:
  shape = f"{row['rows']}x{row['classes']}"
  head = [row["suite"], row["mode"], row["dtype"], shape, row["impl"]]
  if row.get("status") != "ok":
    reason = row.get("error") or row.get("status", "")
    return head + [f"{row.get('status')}: {reason}"[:60]] + [""] * 8
  iqr = None
  if row.get("p75_s") is not None and row.get("p25_s") is not None:
    iqr = row["p75_s"] - row["p25_s"]
  peak = row.get("gpu_peak_delta_bytes")
  peak_cell = _mb(peak)
  if peak is not None and not row.get("gpu_peak_rose"):
    peak_cell = f"≤{peak_cell}"
  diff = row.get("loss_max_abs_diff")
  if row["impl"] == row.get("reference"):
    diff_cell = "ref"
  else:
    diff_cell = _fmt(diff, ".1e")
    if row["mode"] == "vjp" and row.get("grad_max_abs_diff") is not None:
      diff_cell += f" / {_fmt(row['grad_max_abs_diff'], '.1e')}"
  if row.get("agrees") is False:
    diff_cell += " (!)"
  return head + [
      _ms(row.get("median_s")),
      _ms(iqr),
      _fmt(row.get("gbps"), ".1f"),
      _fmt(row.get("frac_read_bw"), ".0f", 100),
      _fmt(row.get("frac_spec"), ".0f", 100),
      _mb(row.get("temp_bytes")),
      peak_cell,
      _fmt(row.get("vs_jxent"), ".2f"),
      diff_cell,
  ]


def _md_table(header, body) -> list[str]:
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(cells) + " |" for cells in body]
  return lines


def summary_rows(results: dict) -> list[list[str]]:
  """Peer time over jxent time, per suite, mode, dtype and peer, over shapes.

  Only the suite's `cases.BASELINE` peers are summarised. A ratio above 1
  means jxent is faster.

  Returns:
    Table cells: suite, mode, dtype, peer, min (at shape), geometric mean,
    max (at shape), shapes.
  """
  groups: dict[tuple, list[tuple[float, str]]] = {}
  for row in results["rows"]:
    ratio = row.get("vs_jxent")
    if row.get("status") != "ok" or ratio is None or row["impl"] == "jxent":
      continue
    if row["impl"] not in cases.BASELINE.get(row["suite"], ()):
      continue
    key = (row["suite"], row["mode"], row["dtype"], row["impl"])
    groups.setdefault(key, []).append((ratio, f"{row['rows']}x{row['classes']}"))
  out = []
  for key, values in groups.items():
    lo = min(values)
    hi = max(values)
    geo = math.exp(statistics.fmean(math.log(r) for r, _ in values))
    out.append(list(key) + [f"{lo[0]:.2f} ({lo[1]})", f"{geo:.2f}",
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
  bw = results.get("bandwidth", {})
  spec = meta.get("spec_peak_gbps")
  lines = [
      f"# jxent bench: {meta['device_kind']} ({meta['platform']}), {meta['date']}",
      "",
      f"- Machine: {meta.get('machine', '')}"
      + (f"; load average {meta['load_avg_start'][0]} at the start, "
         f"{(meta.get('load_avg_end') or ['?'])[0]} at the end"
         if meta.get("load_avg_start") else ""),
      f"- Versions: jax {meta.get('jax')}, jaxlib {meta.get('jaxlib')}, "
      f"optax {meta.get('optax')}, jxent {meta.get('jxent')}, "
      f"torch {meta.get('torch') or 'not installed'}, "
      f"Python {meta.get('python')}",
      f"- Command: `{meta.get('command')}`",
      f"- Measured read bandwidth: {_fmt(bw.get('read_gbps'), '.1f')} GB/s, "
      f"the better of a float32 full sum and row sum over "
      f"{_mb(bw.get('bytes'))} MB"
      + (f", measured at the start ({_fmt(bw['read_gbps_start'], '.1f')}) "
         f"and the end ({_fmt(bw['read_gbps_end'], '.1f')}) of the run"
         if bw.get("read_gbps_end") else "")
      + f"; a copy `x * 2` gave {_fmt(bw.get('copy_gbps'), '.1f')} GB/s. "
      f"Spec peak: {f'{spec:.0f} GB/s' if spec else 'none known'}.",
      "- Byte model: the forward pass reads the logits once (and the soft "
      "labels or `p` logits once); loss and gradient also write the gradient "
      "once, in the logits' dtype. GB/s = those bytes / median time.",
      "- `time / jxent` > 1: jxent is faster. `max abs diff`: per-row loss vs "
      "jxent (fwd), or mean loss / gradient vs jxent (vjp); (!) beyond "
      "tolerance.",
  ]
  if meta.get("jxent_error"):
    lines.append(f"- jxent failed to import: {meta['jxent_error']}")
  if not results.get("complete", True):
    lines.append("- **Incomplete run**: the table holds the cases finished.")
  summary = summary_rows(results)
  if summary:
    lines += ["", "## Peer time / jxent time over the shapes", ""]
    lines += _md_table(
        ("suite", "mode", "dtype", "peer", "min (shape)", "geomean",
         "max (shape)", "shapes"), summary)
  lines += ["", "## All cases", ""]
  lines += _md_table(TABLE_COLUMNS, [_row_cells(r) for r in results["rows"]])
  return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
  """Plots the fraction of measured read bandwidth against classes.

  One facet per suite and mode; one line per implementation (colour) and
  dtype (solid float32, dashed bfloat16). Each facet keeps the most frequent
  row count of its suite, named in its title, so the x axis is classes alone.

  Args:
    results: As written to results.json.
    path: Destination PNG.
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = [r for r in results["rows"]
          if r.get("status") == "ok" and r.get("frac_read_bw") is not None]
  suites = [s for s in cases.SUITES if any(r["suite"] == s for r in rows)]
  modes = [m for m in cases.MODES if any(r["mode"] == m for r in rows)]
  if not suites:
    return
  impls = list(dict.fromkeys(r["impl"] for r in rows))
  colours = {name: f"C{i}" for i, name in enumerate(impls)}
  styles = {"float32": "-", "bfloat16": "--"}
  fig, axes = plt.subplots(
      len(suites), len(modes), figsize=(4.2 * len(modes), 2.6 * len(suites)),
      squeeze=False, sharex=True)
  meta = results["meta"]
  for i, suite in enumerate(suites):
    counts = Counter(r["rows"] for r in rows if r["suite"] == suite)
    n_rows = max(counts, key=lambda n: (counts[n], n))
    for j, mode in enumerate(modes):
      ax = axes[i][j]
      sel = [r for r in rows
             if r["suite"] == suite and r["mode"] == mode and r["rows"] == n_rows]
      for impl in impls:
        for dtype, style in styles.items():
          pts = sorted((r["classes"], 100 * r["frac_read_bw"]) for r in sel
                       if r["impl"] == impl and r["dtype"] == dtype)
          if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, style, marker="o", ms=3, color=colours[impl],
                    lw=2.2 if impl == "jxent" else 1.2,
                    label=f"{impl} {dtype}")
      ax.set_xscale("log", base=2)
      ax.set_title(f"{suite} {mode}, {n_rows} rows", fontsize=9)
      ax.tick_params(labelsize=7)
      ax.grid(True, alpha=0.3)
      if j == 0:
        ax.set_ylabel("% of measured read BW", fontsize=8)
      if i == len(suites) - 1:
        ax.set_xlabel("classes", fontsize=8)
  handles, labels = {}, []
  for ax in axes.flat:
    for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
      if label not in handles:
        handles[label] = h
        labels.append(label)
  fig.legend([handles[k] for k in labels], labels, loc="lower center",
             ncol=min(4, len(labels)), fontsize=7, frameon=False)
  bw = results.get("bandwidth", {}).get("read_gbps")
  fig.suptitle(f"jxent bench, {meta['device_kind']}, {meta['date']}: "
               f"100% = {_fmt(bw, '.0f')} GB/s read", fontsize=10)
  legend_rows = math.ceil(len(labels) / 4)
  fig.tight_layout(rect=(0, 0.025 * legend_rows + 0.02, 1, 0.97))
  buf = io.BytesIO()
  fig.savefig(buf, dpi=80)
  plt.close(fig)
  # A 64-colour palette keeps the file small enough to commit (< 150 KB).
  from PIL import Image

  buf.seek(0)
  with Image.open(buf) as image:
    image.convert("RGB").quantize(colors=64).save(path, optimize=True)


def write_all(results: dict, out_dir: str, *, with_plot: bool = True) -> str:
  """Writes results.json, table.md and (unless told not to) bench.png.

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
    plot(results, os.path.join(out_dir, "bench.png"))
  return text
