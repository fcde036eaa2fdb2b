"""Parity with PyTorch, against values PyTorch computed once and committed.

`tests/torch_reference/reference.npz` holds PyTorch's losses and gradients
for every combination of the options jxent shares with
`torch.nn.functional.cross_entropy` (class-index and probability targets:
`weight`, `ignore_index`, `label_smoothing`, `reduction`; inputs [C],
[N, C] and [N, C, d1, d2], whose class axis PyTorch takes as 1, or 0 for
[C]: jxent's `axis`) and `binary_cross_entropy_with_logits` (`pos_weight`,
`reduction`), with the float32 inputs they were computed from. This suite
needs no torch: the file is regenerated, with torch installed, by
`python tests/torch_reference/generate.py`, whose docstring lists the cases.

One documented difference is asserted rather than compared: for a "mean"
over a batch whose every row is ignored, PyTorch gives NaN (the file
records it) and jxent gives 0 with a 0 gradient.
"""

import functools
import itertools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxent

REFERENCE = pathlib.Path(__file__).parent / "torch_reference" / "reference.npz"

# float32 on both sides, with different summation orders: on a CPU (jax
# 0.10.2, torch 2.13.0) they differ by at most 2.1e-7 relative to the value
# (beyond 1e-6 absolute), or 2.4e-7 absolute (beyond 1e-5 relative).
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_TOL = dict(rtol=1e-5, atol=1e-6)


@functools.cache
def reference() -> tuple[dict[str, np.ndarray], dict]:
  """(arrays, meta) from the committed file."""
  with np.load(REFERENCE, allow_pickle=False) as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(str(arrays.pop("meta")))
  return arrays, meta


CASES = reference()[1]["cases"]
CASE_BY_NAME = {c["name"]: c for c in CASES}


@functools.cache
def jxent_outputs(name):
  """`run_jxent` for the case called `name`, computed once."""
  arrays, _ = reference()
  return run_jxent(CASE_BY_NAME[name], arrays)


def run_jxent(case, arrays):
  """jxent's loss and gradients for a case, as the generator computed
  PyTorch's: the vjp of the loss with the stored cotangent for "none", with
  1 for "sum" and "mean"."""
  logits = jnp.asarray(arrays[case["logits"]])
  reduction = case["reduction"]
  if case["kind"] == "bce":
    pos_weight = case["pos_weight"]
    pos_weight = None if pos_weight is None else jnp.asarray(
        arrays[pos_weight])
    labels = jnp.asarray(arrays[case["target"]])
    fn = lambda x: jxent.sigmoid_binary_cross_entropy(
        x, labels, pos_weight=pos_weight, reduction=reduction)
    primals = (logits,)
  else:
    weight = case["weight"]
    options = dict(
        axis=case["axis"], label_smoothing=case["label_smoothing"],
        reduction=reduction,
        class_weights=None if weight is None else jnp.asarray(arrays[weight]))
    if case["kind"] == "int":
      labels = jnp.asarray(arrays[case["target"]].astype(np.int32))
      fn = lambda x: jxent.softmax_cross_entropy_with_integer_labels(
          x, labels, ignore_index=case["ignore_index"], **options)
      primals = (logits,)
    else:
      fn = lambda x, t: jxent.softmax_cross_entropy(x, t, **options)
      primals = (logits, jnp.asarray(arrays[case["target"]]))
  loss, vjp = jax.vjp(fn, *primals)
  cotangent = (jnp.asarray(arrays[case["cotangent"]]) if reduction == "none"
               else jnp.ones((), loss.dtype))
  grads = vjp(cotangent)
  out = {"loss": loss, "grad": grads[0]}
  if case["kind"] == "prob":
    out["target_grad"] = grads[1]
  return {k: np.asarray(v) for k, v in out.items()}


def compare(case, got, ref):
  """Asserts that jxent's outputs `got` agree with PyTorch's `ref`."""
  assert set(got) == set(ref)
  for key, value in got.items():
    expected = ref[key]
    assert value.shape == expected.shape, key
    assert value.dtype == np.float32, key
    if (key == "loss" and case.get("all_ignored")
        and case["reduction"] == "mean"):
      # PyTorch: 0/0. jxent documents 0 for an all-ignored mean.
      assert np.isnan(expected), "PyTorch's all-ignored mean is NaN"
      np.testing.assert_array_equal(value, 0.0)
      continue
    tol = LOSS_TOL if key == "loss" else GRAD_TOL
    np.testing.assert_allclose(value, expected, err_msg=key, **tol)


def stored(case, arrays):
  """PyTorch's outputs for `case`: the arrays named "<case>.<output>"."""
  split = (k.rsplit(".", 1) for k in arrays)
  return {s[1]: arrays[".".join(s)] for s in split
          if len(s) == 2 and s[0] == case["name"]}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_agrees_with_pytorch(case):
  arrays, _ = reference()
  compare(case, jxent_outputs(case["name"]), stored(case, arrays))


# --- the comparison can fail, and the file covers what it claims ---------

PROBES = [
    "int_4d_w1_ignore-class2_some_s0.1_mean",
    "int_2d_w1_ignore-m100_some_s1.0_none",
    "int_1d_w0_ignore-m100_all_s0.1_mean",
    "prob_4d_w1_s0.1_none",
    "bce_pos-full_none",
]


def _perturbed(ref, key, factor):
  """`ref` with the largest element of `ref[key]` moved by `factor` times
  the tolerance there (a NaN, PyTorch's all-ignored mean, becomes 0)."""
  tol = LOSS_TOL if key == "loss" else GRAD_TOL
  value = np.array(ref[key], np.float64)
  flat = value.reshape(-1)
  i = np.argmax(np.where(np.isnan(flat), np.inf, np.abs(flat)))
  flat[i] = 0.0 if np.isnan(flat[i]) else flat[i] + factor * (
      tol["atol"] + tol["rtol"] * abs(flat[i]))
  return dict(ref, **{key: value.astype(np.float32)})


@pytest.mark.parametrize("name", PROBES)
def test_a_perturbed_reference_fails(name):
  arrays, _ = reference()
  case, got = CASE_BY_NAME[name], jxent_outputs(name)
  ref = stored(case, arrays)
  for key in ref:
    # Ten times the tolerance fails; a tenth of it passes.
    with pytest.raises(AssertionError):
      compare(case, got, _perturbed(ref, key, 10))
    if not np.isnan(ref[key]).any():
      compare(case, got, _perturbed(ref, key, 0.1))


def test_the_reference_covers_every_combination():
  arrays, meta = reference()
  assert meta["command"] == "python tests/torch_reference/generate.py"
  assert meta["torch"]
  reductions = ("none", "sum", "mean")
  smoothing = (0.0, 0.1, 1.0)
  weights = (None, "weight")
  # (ignore_index, every row ignored) with 2 the class-index ignore_index.
  ignoring = ((None, False), (-100, False), (-100, True), (2, False),
              (2, True))
  shapes = {1: "1d", 2: "2d", 4: "4d"}
  expected = {
      ("int", ndim, w, ignore, all_ignored, s, r)
      for ndim, w, (ignore, all_ignored), s, r in itertools.product(
          shapes, weights, ignoring, smoothing, reductions)}
  expected |= {("prob", ndim, w, s, r) for ndim, w, s, r in
               itertools.product(shapes, weights, smoothing, reductions)}
  expected |= {("bce", pw, r) for pw, r in itertools.product(
      (None, "pos_weight_column", "pos_weight_full"), reductions)}
  found = []
  for case in CASES:
    logits, target = arrays[case["logits"]], arrays[case["target"]]
    assert logits.dtype == np.float32
    outputs = stored(case, arrays)
    assert set(outputs) == ({"loss", "grad", "target_grad"}
                            if case["kind"] == "prob" else {"loss", "grad"})
    if case["kind"] == "bce":
      found.append(("bce", case["pos_weight"], case["reduction"]))
      assert (logits == 0).any() and (np.abs(logits) >= 1e4).any()
      continue
    assert logits.shape[case["axis"]] == 5 and case["axis"] == min(
        1, logits.ndim - 1)
    weight = case["weight"]
    assert weight is None or arrays[weight].shape == (5,)
    key = (case["label_smoothing"], case["reduction"])
    if case["kind"] == "prob":
      assert target.shape == logits.shape and target.dtype == np.float32
      found.append(("prob", logits.ndim, weight, *key))
      continue
    ignore = case["ignore_index"]
    ignored = target == ignore
    assert target.shape == tuple(np.delete(logits.shape, case["axis"]))
    assert case["all_ignored"] == bool(ignored.all())
    if ignore is not None and not case["all_ignored"] and target.ndim:
      assert ignored.any()  # Some rows ignored, some kept.
    assert ((target >= 0) & (target < 5) | ignored).all()
    found.append(("int", logits.ndim, weight, ignore, case["all_ignored"],
                  *key))
  assert len(found) == len(set(found))
  assert set(found) == expected
