"""bench.png: each implementation's share of the measured read bandwidth."""

import io
from collections import Counter

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from bench import report

_DTYPE_STYLE = {  # solid line and filled circles, or dashed and open squares
    "float32": {"ls": "-", "marker": "o", "label": "float32: solid, ●"},
    "bfloat16": {"ls": "--", "marker": "s", "mfc": "white",
                 "label": "bfloat16: dashed, □"},
}
_COLOURS = ("#1f5fbf", "#e07b00", "#2ca02c", "#d62728", "#8c4fc9", "#8c564b",
            "#17becf", "#e377c2")
_SHORT = {"float32": "f32", "bfloat16": "bf16"}


def _headline(groups: dict) -> str:
  """``peer ×g f32, ×g bf16; ...`` from `speedups` entries of one facet."""
  by_peer: dict[str, list[str]] = {}
  for (_, _, dtype, peer), values in groups.items():
    by_peer.setdefault(peer, []).append(
        f"×{report.geomean(r for r, _ in values):.2f} {_SHORT.get(dtype, dtype)}")
  return "; ".join(f"{peer} {', '.join(v)}" for peer, v in by_peer.items())


def plot(results: dict, path: str) -> bool:
  """Writes `figure` to `path` as a PNG, if there is one.

  Returns:
    Whether a plot was written: not when no row has a byte model.
  """
  fig = figure(results)
  if fig is None:
    return False
  buf = io.BytesIO()
  fig.savefig(buf, dpi=80)
  # A 64-colour palette keeps the file small enough to commit (< 150 KB);
  # the octree method keeps colours that cover few pixels distinct.
  buf.seek(0)
  with Image.open(buf) as image:
    image.convert("RGB").quantize(
        colors=64, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
  return True


def figure(results: dict) -> Figure | None:
  """Plots the fraction of measured read bandwidth against the last size.

  One facet per suite with a byte model and mode; one colour per
  implementation, one line style and marker per dtype. Each facet keeps the
  most frequent leading sizes (rows) of its suite, named in its title, so
  the x axis is classes alone. Titles give the reference's speed-up over
  each summarised implementation (peer time / reference time, geometric mean over the
  run's shapes), per dtype; the figure's title gives it over every case.

  Args:
    results: As written to results.json.

  Returns:
    The figure, or None when no row has a byte model.
  """
  rows = [r for r in results["rows"]
          if r.get("status") == "ok" and r.get("frac_read_bw") is not None]
  if not rows:
    return None
  ref = report.reference(results)
  suites = list(dict.fromkeys(r["suite"] for r in rows))
  modes = [m for m in ("fwd", "vjp", "vjp_mean")
           if any(r["mode"] == m for r in rows)]
  impls = sorted(dict.fromkeys(r["impl"] for r in rows),
                 key=lambda n: n != ref)
  colours = {name: _COLOURS[i % len(_COLOURS)] for i, name in enumerate(impls)}
  ratios = report.speedups(results)
  info = report.suite_info(results)
  fig = Figure(figsize=(5.2 * len(modes), 2.4 * len(suites) + 1.3),
               layout="constrained")
  axes = fig.subplots(len(suites), len(modes), squeeze=False)
  for i, suite in enumerate(suites):
    counts = Counter(report.shape_of(r).rsplit("x", 1)[0] for r in rows
                     if r["suite"] == suite)
    lead = max(counts, key=lambda n: (counts[n], n))
    for j, mode in enumerate(modes):
      ax = axes[i][j]
      sel = [r for r in rows if r["suite"] == suite and r["mode"] == mode
             and report.shape_of(r).rsplit("x", 1)[0] == lead]
      for impl in impls:
        for dtype in dict.fromkeys(r["dtype"] for r in sel):
          pts = sorted((int(report.shape_of(r).rsplit("x", 1)[1]),
                        100 * r["frac_read_bw"]) for r in sel
                       if r["impl"] == impl and r["dtype"] == dtype)
          if not pts:
            continue
          style = {k: v for k, v in _DTYPE_STYLE.get(
              dtype, {"ls": ":", "marker": "^"}).items() if k != "label"}
          xs, ys = zip(*pts, strict=True)
          ax.plot(xs, ys, color=colours[impl], ms=5, mew=1.2,
                  lw=2.2 if impl == ref else 1.2, **style)
      ax.set_xscale("log", base=2)
      headline = _headline({k: v for k, v in ratios.items()
                            if k[:2] == (suite, mode)})
      ax.set_title(f"{suite} {mode}, {lead} rows"
                   + (f"\n{ref} speed-up: {headline}" if headline else ""),
                   fontsize=8)
      ax.tick_params(labelsize=7)
      ax.grid(True, alpha=0.3)
      if j == 0:
        ax.set_ylabel("% of read BW, higher is better", fontsize=7.5)
      if i == len(suites) - 1:
        ax.set_xlabel(info.get(suite, {}).get("dims", ["classes"])[-1],
                      fontsize=8)
  handles = [Line2D([], [], color=colours[n], lw=2.2 if n == ref else 1.2,
                    label=n) for n in impls]
  handles += [Line2D([], [], color="0.35", ms=5, **style)
              for dtype, style in _DTYPE_STYLE.items()
              if any(r["dtype"] == dtype for r in rows)]
  fig.legend(handles=handles, loc="outside lower center",
             ncol=min(5, len(handles)), fontsize=7.5, frameon=False,
             title=f"Speed-up = peer time / {ref} time, geometric mean over "
                   f"the run's shapes: above 1, {ref} is faster.",
             title_fontsize=7.5)
  meta = results["meta"]
  bw = (results.get("bandwidth") or {}).get("read_gbps")
  overall = {}
  for (_, _, _, peer), values in ratios.items():
    overall.setdefault(peer, []).extend(r for r, _ in values)
  title = (f"jxent bench, {meta.get('device_kind')}, {meta.get('date')}: "
           f"100% = {report.fmt(bw, '.0f')} GB/s measured read bandwidth")
  if overall:
    title += (f"\n{ref} speed-up over all cases: " + ", ".join(
        f"×{report.geomean(v):.2f} vs {peer}" for peer, v in overall.items()))
  fig.suptitle(title, fontsize=9.5)
  return fig
