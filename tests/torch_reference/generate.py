"""Writes `reference.npz`: PyTorch's losses and gradients for the parity test.

`tests/test_torch_parity.py` compares jxent with the values in this file on
every run, so the suite checks parity with PyTorch without installing it.
This script is the only thing that needs torch. Regenerate the file (from
the repository root) after changing the cases below:

    pip install torch   # any CPU build; the file records the version
    python tests/torch_reference/generate.py          # rewrites reference.npz
    python tests/torch_reference/generate.py --check  # compares, writes nothing

The cases are the full product of the options that jxent and PyTorch share:

* `cross_entropy` with class-index targets: `weight` (none / per class) x
  `ignore_index` (none, -100, a class index) x which rows are ignored (some,
  all) x `label_smoothing` (0, 0.1, 1) x `reduction` (none, sum, mean) x
  input shape ([C] unbatched, [N, C], [N, C, d1, d2]; PyTorch's class axis,
  1, or 0 for [C]). PyTorch has no "no ignore_index": "none" calls it with
  its default, -100, on labels that hold no -100.
* `cross_entropy` with probability targets: `weight` x `label_smoothing` x
  `reduction` x shape.
* `binary_cross_entropy_with_logits`: `pos_weight` (none, per column, full)
  x `reduction`, with logits 0 and of magnitude up to 1e4.

Each case stores the loss and the gradient with respect to the logits (and,
for probability targets, the targets): of the loss for "sum" and "mean", of
`sum(loss * cotangent)` for "none", with a stored random cotangent. Inputs
are float32 and stored in the file (numpy does not promise the same random
streams across versions), so the test never regenerates them.

The file holds flat arrays and one JSON string, `meta`, describing the
cases; it loads with `np.load(..., allow_pickle=False)`. The script imports
neither jxent nor anything from the tests: the reference is PyTorch alone.
"""

import argparse
import io
import itertools
import json
import pathlib
import platform
import sys
import zipfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "reference.npz"
COMMAND = "python tests/torch_reference/generate.py"
SEED = 20261127
CLASSES = 5
IGNORED_CLASS = 2  # The class-index `ignore_index`.
# Batch shapes: the logits are [C], [N, C] and [N, C, d1, d2].
SHAPES = {"1d": (), "2d": (8,), "4d": (3, 3, 2)}
SMOOTHING = (0.0, 0.1, 1.0)
REDUCTIONS = ("none", "sum", "mean")
IGNORE = {"none": None, "m100": -100, "class2": IGNORED_CLASS}


def _class_axis(batch):
  """PyTorch's class dimension: 1, or 0 for an unbatched input [C]."""
  return 0 if not batch else 1


def _with_classes(a, batch):
  """[*batch, C] -> the layout PyTorch takes: classes on `_class_axis`."""
  return np.moveaxis(a, -1, _class_axis(batch))


def _logits(rng, batch):
  """float32 logits: random rows, one flat and one of scale 30 (if N > 2)."""
  x = rng.normal(scale=3.0, size=(*batch, CLASSES))
  if batch:
    x[0] = 0.0  # Every class equally likely.
    x[1] = rng.normal(scale=30.0, size=x[1].shape)  # Confident rows.
  return _with_classes(x, batch).astype(np.float32)


def _labels(rng, batch, ignore, rows):
  """int64 class-index targets; `rows` ("some" or "all") are ignored. An
  unbatched input's one row is kept for "some"."""
  y = rng.integers(0, CLASSES, size=batch)
  if ignore is None:
    return y
  if rows == "all":
    return np.full(batch, ignore)
  flat = y.reshape(-1)  # A view.
  if ignore == IGNORED_CLASS:
    flat[flat == IGNORED_CLASS] = 0  # The ignored class occurs only below.
  if batch:
    flat[[1, 3]] = ignore
  return y


def _probabilities(rng, batch):
  """float32 targets: one-hot, then summing to 0.5 (neither PyTorch nor
  jxent requires a sum of 1), then soft rows."""
  t = rng.dirichlet(np.ones(CLASSES), size=batch)  # [*batch, C]
  if batch:
    t[0] = 0.0
    t[0, ..., 3] = 1.0
    t[1] *= 0.5
  return _with_classes(t, batch).astype(np.float32)


def _bce_inputs(rng):
  x = rng.normal(scale=4.0, size=(6, 4))
  x[0] = 0.0
  x[1] = [-1e4, -100.0, 30.0, 1e4]
  x[2] = [1e4, 100.0, -30.0, -1e4]
  y = rng.uniform(size=(6, 4))
  y[:, 0] = rng.integers(0, 2, size=6)  # Hard labels in the first column.
  y[0] = [0.0, 1.0, 0.5, 1.0]
  y[1] = [0.0, 1.0, 1.0, 0.3]
  y[2] = [1.0, 0.0, 0.7, 0.0]
  return x.astype(np.float32), y.astype(np.float32)


def make_inputs():
  """All input arrays, by name, from `SEED`."""
  rng = np.random.default_rng(SEED)
  arrays = {"weight": rng.uniform(0.5, 2.0, size=CLASSES).astype(np.float32)}
  for shape, batch in SHAPES.items():
    arrays[f"logits_{shape}"] = _logits(rng, batch)
    arrays[f"cotangent_{shape}"] = rng.normal(size=batch).astype(np.float32)
    for ignore, rows in _ignore_modes():
      arrays[f"labels_{shape}_{ignore}_{rows}"] = _labels(
          rng, batch, IGNORE[ignore], rows).astype(np.int64)
    arrays[f"probs_{shape}"] = _probabilities(rng, batch)
  x, y = _bce_inputs(rng)
  arrays["bce_logits"], arrays["bce_labels"] = x, y
  arrays["bce_cotangent"] = rng.normal(size=x.shape).astype(np.float32)
  arrays["pos_weight_column"] = np.array([1.0, 3.0, 0.25, 2.0], np.float32)
  arrays["pos_weight_full"] = rng.uniform(0.1, 4.0, size=x.shape).astype(
      np.float32)
  return arrays


def _ignore_modes():
  yield "none", "some"
  for ignore in ("m100", "class2"):
    for rows in ("some", "all"):
      yield ignore, rows


def cases():
  """The case descriptions: which inputs and options, by name."""
  out = []
  for shape, weight, (ignore, rows), smoothing, reduction in itertools.product(
      SHAPES, (None, "weight"), _ignore_modes(), SMOOTHING, REDUCTIONS):
    out.append(dict(
        name=(f"int_{shape}_w{int(weight is not None)}_ignore-{ignore}"
              f"_{rows}_s{smoothing}_{reduction}"),
        kind="int", axis=_class_axis(SHAPES[shape]),
        logits=f"logits_{shape}",
        target=f"labels_{shape}_{ignore}_{rows}", weight=weight,
        ignore_index=IGNORE[ignore], all_ignored=rows == "all",
        label_smoothing=smoothing, reduction=reduction,
        cotangent=f"cotangent_{shape}"))
  for shape, weight, smoothing, reduction in itertools.product(
      SHAPES, (None, "weight"), SMOOTHING, REDUCTIONS):
    out.append(dict(
        name=(f"prob_{shape}_w{int(weight is not None)}_s{smoothing}"
              f"_{reduction}"),
        kind="prob", axis=_class_axis(SHAPES[shape]),
        logits=f"logits_{shape}", target=f"probs_{shape}",
        weight=weight, label_smoothing=smoothing, reduction=reduction,
        cotangent=f"cotangent_{shape}"))
  for pos_weight, reduction in itertools.product(
      (None, "pos_weight_column", "pos_weight_full"), REDUCTIONS):
    label = pos_weight.removeprefix("pos_weight_") if pos_weight else "none"
    out.append(dict(
        name=f"bce_pos-{label}_{reduction}", kind="bce",
        logits="bce_logits", target="bce_labels", pos_weight=pos_weight,
        reduction=reduction, cotangent="bce_cotangent"))
  return out


def run_torch(case, arrays):
  """PyTorch's loss and gradients for one case, as float32 numpy arrays."""
  import torch
  import torch.nn.functional as F

  logits = torch.tensor(arrays[case["logits"]], requires_grad=True)
  target = torch.tensor(arrays[case["target"]])
  if case["kind"] == "prob":
    target.requires_grad_(True)
  if case["kind"] == "bce":
    pos_weight = case["pos_weight"]
    loss = F.binary_cross_entropy_with_logits(
        logits, target, reduction=case["reduction"],
        pos_weight=None if pos_weight is None else torch.tensor(
            arrays[pos_weight]))
  else:
    weight = case["weight"]
    ignore_index = case.get("ignore_index")
    loss = F.cross_entropy(
        logits, target,
        weight=None if weight is None else torch.tensor(arrays[weight]),
        # PyTorch always ignores some index (-100 by default): for "none",
        # the labels hold no -100.
        ignore_index=-100 if ignore_index is None else ignore_index,
        label_smoothing=case["label_smoothing"],
        reduction=case["reduction"])
  if case["reduction"] == "none":
    loss.backward(torch.tensor(arrays[case["cotangent"]]))
  else:
    loss.backward()
  out = {"loss": loss.detach().numpy(), "grad": logits.grad.numpy()}
  if case["kind"] == "prob":
    out["target_grad"] = target.grad.numpy()
  return {k: np.asarray(v, np.float32) for k, v in out.items()}


def build():
  """(arrays, meta): everything `reference.npz` holds."""
  import torch

  torch.use_deterministic_algorithms(True)
  arrays = make_inputs()
  all_cases = cases()
  for case in all_cases:
    for key, value in run_torch(case, arrays).items():
      arrays[f"{case['name']}.{key}"] = value
  meta = dict(
      command=COMMAND, seed=SEED, torch=torch.__version__,
      numpy=np.__version__, python=platform.python_version(),
      machine=platform.machine(),
      note=("PyTorch's float32 CPU results. For a mean over a batch whose"
            " every row is ignored, PyTorch gives NaN (recorded here) and"
            " jxent documents 0."),
      cases=all_cases)
  return arrays, meta


def save(path, arrays, meta):
  """Writes an .npz that `np.load` reads, byte for byte the same for the
  same contents (`np.savez` stamps each member with the time)."""
  arrays = dict(arrays, meta=np.array(json.dumps(meta, indent=1)))
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for name in sorted(arrays):
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.asarray(arrays[name]),
                                allow_pickle=False)
      info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      info.compress_type = zipfile.ZIP_DEFLATED
      z.writestr(info, buffer.getvalue())


def check(path=OUT):
  """Compares a fresh build with `path`; returns a list of differences."""
  arrays, meta = build()
  with np.load(path, allow_pickle=False) as f:
    stored = {k: f[k] for k in f.files}
  problems = []
  old_cases = json.loads(str(stored.pop("meta")))["cases"]
  if old_cases != meta["cases"]:
    problems.append("the cases differ")
  if set(stored) != set(arrays):
    problems.append(f"the arrays differ: {set(stored) ^ set(arrays)}")
  for key in sorted(set(stored) & set(arrays)):
    a, b = stored[key], arrays[key]
    exact = "." not in key  # Inputs must be identical; outputs close.
    if a.shape != b.shape or a.dtype != b.dtype or not (
        np.array_equal(a, b, equal_nan=True) if exact else
        np.allclose(a, b, rtol=1e-6, atol=1e-7, equal_nan=True)):
      problems.append(f"{key} differs")
  return problems


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--check", action="store_true",
                      help="compare with the committed file; write nothing")
  parser.add_argument("--out", type=pathlib.Path, default=OUT)
  args = parser.parse_args(argv)
  if args.check:
    problems = check(args.out)
    for problem in problems:
      print(problem, file=sys.stderr)
    print(f"{args.out}: {'differs' if problems else 'up to date'}")
    return 1 if problems else 0
  arrays, meta = build()
  save(args.out, arrays, meta)
  print(f"wrote {args.out}: {len(meta['cases'])} cases, torch"
        f" {meta['torch']}, {args.out.stat().st_size} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
