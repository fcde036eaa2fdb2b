"""Tests of the benchmark harness (bench/): the --quick path, in-process.

The quick grid runs once per module (about 20 s on 2 CPU cores, compiles
included); torch is left out to keep it short and because it is optional.
"""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from bench import cases, report, timing
from bench.__main__ import main

# jxent against a peer whose arithmetic is float32 (float32 inputs, or
# bfloat16 inputs upcast first): relative to the largest |loss| (at least 1).
F32_LOSS_RTOL = 1e-5
# Gradients, relative to the largest |gradient|: float32 inputs, then bfloat16
# inputs (one bfloat16 step where the float32 result rounds the other way).
F32_GRAD_RTOL = {"float32": 1e-4, "bfloat16": 1e-2}
# jxent against optax on bfloat16 logits as they are (bfloat16 arithmetic).
BF16_LOSS_RTOL = 2e-2

QUICK_IMPLS = "jxent,optax,optax_f32,jax_nn,jax_nn_f32,naive"

ROW_KEYS = {
    "suite", "mode", "impl", "dtype", "rows", "classes", "status", "bytes",
    "median_s", "p25_s", "p75_s", "min_s", "max_s", "reps", "times_s", "gbps",
    "frac_read_bw", "frac_spec", "temp_bytes", "compile_s", "vs_jxent",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = tmp_path_factory.mktemp("bench")
  status = main(["--quick", "--impls", QUICK_IMPLS, "--out", str(out)])
  assert status == 0
  with open(out / "results.json") as f:
    # Strict JSON: NaN and infinities would raise.
    results = json.load(f, parse_constant=_reject_constant)
  return out, results


def _reject_constant(name):
  raise ValueError(f"results.json holds {name}")


def _rows(results, **match):
  return [r for r in results["rows"]
          if all(r[k] == v for k, v in match.items())]


def test_quick_writes_results_table_and_plot(quick):
  out, results = quick
  assert results["complete"] is True
  meta = results["meta"]
  for key in ("device_kind", "platform", "date", "command", "jax", "jaxlib",
              "optax", "machine"):
    assert meta[key], key
  assert meta["jxent_error"] is None
  assert results["bandwidth"]["read_gbps"] > 0
  assert "reads the logits once" in results["byte_model"]
  assert (out / "bench.png").stat().st_size > 0
  table = (out / "table.md").read_text()
  assert "| ce_int | vjp | bfloat16 |" in table


def test_quick_rows_are_complete_and_finite(quick):
  _, results = quick
  rows = results["rows"]
  # 4 suites x 2 modes x (jxent, the peer and naive in float32; the same and
  # the upcast peer in bfloat16).
  assert len(rows) == 4 * 2 * (3 + 4)
  for row in rows:
    assert row["status"] == "ok", row
    assert ROW_KEYS <= row.keys()
    assert row["min_s"] <= row["median_s"] <= row["max_s"]
    assert row["reps"] == len(row["times_s"]) >= 3
    assert row["gbps"] > 0
    # results.json rounds floats to 5 significant digits.
    assert math.isclose(row["frac_read_bw"] * results["bandwidth"]["read_gbps"],
                        row["gbps"], rel_tol=1e-3)
    assert row["finite"] is not False


@pytest.mark.parametrize("suite", cases.SUITES)
@pytest.mark.parametrize("mode", cases.MODES)
def test_jxent_agrees_with_peers(quick, suite, mode):
  """jxent vs optax (or jax.nn for entropy), as-is and upcast, per case."""
  _, results = quick
  as_is, upcast = cases.BASELINE[suite]
  for dtype in cases.DTYPES:
    [ref] = _rows(results, suite=suite, mode=mode, dtype=dtype, impl="jxent")
    peers = [as_is] if dtype == "float32" else [as_is, upcast]
    for name in peers:
      [row] = _rows(results, suite=suite, mode=mode, dtype=dtype, impl=name)
      f32 = dtype == "float32" or name == upcast
      rtol = F32_LOSS_RTOL if f32 else BF16_LOSS_RTOL
      scale = max(1.0, row["loss_ref_max_abs"])
      assert row["loss_max_abs_diff"] <= rtol * scale, row
      if mode == "vjp" and f32:
        assert (row["grad_max_abs_diff"]
                <= F32_GRAD_RTOL[dtype] * row["grad_ref_max_abs"]), row
      assert row["agrees"] is True
    assert ref["vs_jxent"] == 1.0


def test_from_json_rewrites_table(quick, tmp_path):
  _, results = quick
  path = tmp_path / "results.json"
  report.write_json(results, str(path))
  assert main(["--from-json", str(path), "--no-plot"]) == 0
  assert "## Peer time / jxent time" in (tmp_path / "table.md").read_text()


def test_byte_model():
  n, v = 8192, 262144
  assert cases.min_bytes("ce_int", "fwd", n, v, "float32") == n * v * 4 + 8 * n
  assert cases.min_bytes("ce_int", "vjp", n, v, "bfloat16") == 2 * n * v * 2 + 4 * n
  assert cases.min_bytes("ce_soft", "vjp", n, v, "bfloat16") == 3 * n * v * 2
  assert cases.min_bytes("kl", "fwd", n, v, "float32") == 2 * n * v * 4 + 4 * n
  assert cases.min_bytes("entropy", "fwd", n, v, "float32") == n * v * 4 + 4 * n


def test_parse_shapes():
  assert cases.parse_shapes("8192x32768, 8192X262144") == (
      (8192, 32768), (8192, 262144))
  with pytest.raises(ValueError, match="ROWSxCLASSES"):
    cases.parse_shapes("8192-32768")


@pytest.mark.parametrize(("kind", "gbps"), [
    ("NVIDIA H100 80GB HBM3", 3350.0),
    ("NVIDIA H200", 4800.0),
    ("NVIDIA H100 PCIe", 2000.0),
    ("NVIDIA GH200 480GB", None),
    ("cpu", None),
])
def test_spec_peak(kind, gbps):
  assert timing.spec_peak_gbps(kind) == gbps


def test_torch_is_optional():
  names = [i.name for i in cases.implementations("ce_int", jxent=None,
                                                 torch=None)]
  assert names == ["optax", "optax_f32", "naive"]


def test_linear_suite_runs_and_agrees(tmp_path):
  from bench import linear

  assert linear.main(["--shapes", "256x32x1000", "--dtypes", "float32",
                      "--reps", "2", "--out", str(tmp_path)]) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  rows = {r["impl"]: r for r in results["rows"]}
  assert set(rows) == {"jxent", "materialised", "chunked"}
  for name in ("materialised", "chunked"):
    assert rows[name]["loss_diff"] < 1e-5
    assert rows[name]["dw_max_abs_diff"] < 1e-5
  assert rows["jxent"]["temp_bytes"] < rows["materialised"]["temp_bytes"]
  assert "time / materialised" in (tmp_path / "table.md").read_text()


def test_sharded_suite_runs_on_8_devices(tmp_path):
  # A fresh process: the suite sets up its own 8 CPU devices.
  result = subprocess.run(
      [sys.executable, "-m", "bench.sharded", "--shapes", "64x1024",
       "--reps", "2", "--out", str(tmp_path)],
      cwd=pathlib.Path(__file__).resolve().parents[1], capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {r["impl"]: r for r in json.loads(
      (tmp_path / "results.json").read_text())["rows"]}
  assert rows["gspmd"]["loss_diff"] < 1e-5
  assert rows["gathered"]["grad_max_abs_diff"] < 1e-6
  assert not rows["sharded"]["all_gather_in_hlo"]
  assert rows["gathered"]["all_gather_in_hlo"]
