"""Tests of the benchmark harness (bench/): the registry, the runner, the
report and the command line.

The quick grid runs once per module (about 15 s on 2 CPU cores, compiles
included); torch is left out to keep it short and because it is optional.
"""

import dataclasses
import json
import math
import pathlib
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from bench import registry, report, runner, timing
from bench.__main__ import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

# jxent against a peer whose arithmetic is float32 (float32 inputs, or
# bfloat16 inputs upcast first): relative to the largest |loss| (at least 1).
F32_LOSS_RTOL = 1e-5
# Gradients, relative to the largest |gradient|: float32 inputs, then bfloat16
# inputs (one bfloat16 step where the float32 result rounds the other way).
F32_GRAD_RTOL = {"float32": 1e-4, "bfloat16": 1e-2}
# jxent against optax on bfloat16 logits as they are (bfloat16 arithmetic).
BF16_LOSS_RTOL = 2e-2

QUICK_IMPLS = "jxent,optax,optax_f32,jax_nn,jax_nn_f32,naive"
LOGIT_SUITES = ("ce_int", "ce_soft", "entropy", "kl")

ROW_KEYS = {
    "suite", "mode", "impl", "dtype", "rows", "classes", "shape", "status",
    "bytes", "reference", "median_s", "p25_s", "p75_s", "min_s", "max_s",
    "reps", "times_s", "gbps", "frac_read_bw", "frac_spec", "temp_bytes",
    "compile_s", "vs_ref",
}

# A tiny case for the runs that test the registry and the command line.
TINY = ["--shapes", "8x16", "--dtypes", "float32", "--reps", "1",
        "--max-case-s", "0.01", "--bandwidth-mb", "1", "--no-plot"]


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
  assert results["reference"] == "jxent"
  assert results["bandwidth"]["read_gbps"] > 0
  assert set(results["byte_model"]) == set(LOGIT_SUITES)
  assert "reads the logits once" in results["byte_model"]["entropy"]
  assert (out / "bench.png").stat().st_size > 0
  table = (out / "table.md").read_text()
  assert "| ce_int | vjp | bfloat16 |" in table
  assert "time / jxent" in table


def test_quick_rows_are_complete_and_finite(quick):
  _, results = quick
  rows = results["rows"]
  # 4 suites x 2 modes x (jxent, the peer and naive in float32; the same and
  # the upcast peer in bfloat16).
  assert len(rows) == 4 * 2 * (3 + 4)
  for row in rows:
    assert row["status"] == "ok", row
    assert ROW_KEYS <= row.keys()
    assert row["shape"] == f"{row['rows']}x{row['classes']}"
    assert row["min_s"] <= row["median_s"] <= row["max_s"]
    assert row["reps"] == len(row["times_s"]) >= 3
    assert row["gbps"] > 0
    # results.json rounds floats to 5 significant digits.
    assert math.isclose(row["frac_read_bw"] * results["bandwidth"]["read_gbps"],
                        row["gbps"], rel_tol=1e-3)
    assert row["finite"] is not False


@pytest.mark.parametrize("suite", LOGIT_SUITES)
@pytest.mark.parametrize("mode", ["fwd", "vjp"])  # the suites' defaults
def test_jxent_agrees_with_peers(quick, suite, mode):
  """jxent vs optax (or jax.nn for entropy), as-is and upcast, per case."""
  _, results = quick
  as_is, upcast = registry.get(suite).baseline
  for dtype in runner.DTYPES:
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
    assert ref["vs_ref"] == 1.0


def test_from_json_writes_a_new_folder(quick, tmp_path, monkeypatch, capsys):
  """Issue 19: the README's --from-json example rewrote the committed
  table.md and bench.png beside the file."""
  from bench import __main__ as cli

  monkeypatch.setattr(cli, "RUNS", str(tmp_path / "runs"))
  _, results = quick
  source = tmp_path / "cpu-2026-01-01"
  source.mkdir()
  report.write_json(results, str(source / "results.json"))
  before = (source / "results.json").read_bytes()
  assert main(["--from-json", str(source / "results.json"), "--no-plot"]) == 0
  assert [p.name for p in source.iterdir()] == ["results.json"]
  assert (source / "results.json").read_bytes() == before
  [new] = (tmp_path / "runs").iterdir()
  assert new.name.startswith("cpu-2026-01-01-")
  assert "## Peer time / jxent time" in (new / "table.md").read_text()
  assert (new / "results.json").exists()
  assert f"wrote {new}" in capsys.readouterr().err


def test_from_json_writes_where_out_or_force_says(quick, tmp_path, capsys):
  _, results = quick
  path = tmp_path / "results.json"
  report.write_json(results, str(path))
  out = tmp_path / "out"
  assert main(["--from-json", str(path), "--no-plot", "--out", str(out)]) == 0
  assert "## Peer time / jxent time" in (out / "table.md").read_text()
  assert not (tmp_path / "table.md").exists()
  # A folder that holds a results.json, the file's own included, needs
  # --force.
  for folder in (out, tmp_path):
    with pytest.raises(SystemExit) as exit_:
      main(["--from-json", str(path), "--no-plot", "--out", str(folder)])
    assert exit_.value.code == 2
    assert "already holds a results.json" in capsys.readouterr().err
  assert main(["--from-json", str(path), "--no-plot", "--force"]) == 0
  assert "## Peer time / jxent time" in (tmp_path / "table.md").read_text()


def test_from_json_reads_the_committed_results(tmp_path):
  """Files written before the registry (`vs_jxent`, no `shape`) still read."""
  committed = ROOT / "bench" / "results" / "cpu-2026-11-26"
  for sub in ("", "linear_ce", "sharded"):
    (tmp_path / sub).mkdir(exist_ok=True)
    shutil.copy(committed / sub / "results.json", tmp_path / sub)
    assert main(["--from-json", str(tmp_path / sub / "results.json"),
                 "--no-plot", "--force"]) == 0
  table = (tmp_path / "table.md").read_text()
  assert "| ce_int | vjp | bfloat16 | 512x32768 | optax |" in table
  assert "| ce_int | vjp | float32 | optax | 0.78 (512x4096) | 0.92 |" in table
  assert "| 2048x512x32768 | float32 |" not in table
  assert "| linear_ce | vjp | float32 | 2048x512x32768 | jxent |" in (
      tmp_path / "linear_ce" / "table.md").read_text()
  assert "| sharded | vjp | float32 | 1024x65536 | gathered |" in (
      tmp_path / "sharded" / "table.md").read_text()


def test_byte_model():
  n, v = 8192, 262144

  def count(suite, mode, dtype):
    return registry.get(suite).min_bytes(mode, (n, v), dtype)

  assert count("ce_int", "fwd", "float32") == n * v * 4 + 8 * n
  assert count("ce_int", "vjp", "bfloat16") == 2 * n * v * 2 + 4 * n
  assert count("ce_soft", "vjp", "bfloat16") == 3 * n * v * 2
  assert count("kl", "fwd", "float32") == 2 * n * v * 4 + 4 * n
  assert count("entropy", "fwd", "float32") == n * v * 4 + 4 * n
  assert registry.get("linear_ce").min_bytes is None


@pytest.mark.parametrize(("kind", "gbps"), [
    ("NVIDIA H100 80GB HBM3", 3350.0),
    ("NVIDIA H200", 4800.0),
    ("NVIDIA H100 PCIe", 2000.0),
    ("NVIDIA GH200 480GB", None),
    ("cpu", None),
])
def test_spec_peak(kind, gbps):
  assert timing.spec_peak_gbps(kind) == gbps


def test_list_names_every_suite_and_implementation(capsys):
  assert main(["--list"]) == 0
  text = capsys.readouterr().out
  for name, suite in registry.suites().items():
    assert f"{name}: {suite.title}" in text
    for impl in suite.impls():
      assert f"  {impl.name}: {impl.code}" in text


def test_torch_is_optional():
  opts = runner.Options(suites=("ce_int",))
  suite = registry.get("ce_int")
  names = [i.name for i in runner.implementations(suite, opts)]
  assert names == ["jxent", "optax", "optax_f32", "naive", "torch"]
  names = [i.name for i in runner.implementations(suite, opts,
                                                  missing={"torch"})]
  assert names == ["jxent", "optax", "optax_f32", "naive"]


def test_the_reference_comes_first():
  opts = runner.Options(suites=("ce_int",), reference="optax",
                        impls=frozenset({"jxent", "optax"}))
  names = [i.name for i in runner.implementations(registry.get("ce_int"),
                                                  opts)]
  assert names == ["optax", "jxent"]


def test_a_jxent_variant_is_one_entry(monkeypatch, tmp_path):
  """Like "jxent_triton": one `Variant`, run beside jxent and checked."""
  monkeypatch.setattr(registry, "JXENT", (
      *registry.JXENT, registry.Variant("jxent_axis", {"axis": -1},
                                        suites=("entropy",))))
  assert main(["--suite", "entropy,kl", *TINY, "--modes", "fwd", "--impls",
               "jxent,jxent_axis", "--out", str(tmp_path)]) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert [(r["suite"], r["impl"]) for r in results["rows"]
          if r["impl"].startswith("jxent")] == [
              ("entropy", "jxent"), ("entropy", "jxent_axis"),
              ("kl", "jxent")]
  [row] = _rows(results, impl="jxent_axis")
  assert row["agrees"] is True and row["loss_max_abs_diff"] == 0
  assert results["implementations"]["entropy"]["jxent_axis"] == (
      "jxent.entropy_from_logits(x), axis=-1")
  assert "| entropy | fwd | float32 | jxent_axis |" in (
      tmp_path / "table.md").read_text()


def test_a_suite_is_one_entry(monkeypatch, tmp_path):
  """A suite registered here runs, with its peers checked and timed."""
  monkeypatch.setattr(registry, "_SUITES", dict(registry.suites()))
  registry.register(registry.Suite(
      name="square_sum", title="sum of squares", dims=("rows", "classes"),
      inputs=lambda draw, shape, dtype: (draw.normal(shape).astype(dtype),),
      jxent=lambda x, **o: jnp.sum(x * x, axis=-1),
      jxent_code="sum(x * x)",
      peers=(
          registry.Impl("einsum", lambda x: jnp.einsum("ij,ij->i", x, x),
                        "einsum('ij,ij->i', x, x)"),
          registry.Impl("wrong", lambda x: jnp.sum(x, axis=-1), "sum(x)"),
      ),
      shapes={"quick": ((4, 8),)}, dtypes={"quick": ("float32",)},
      min_bytes=lambda mode, shape, dtype: 4 * math.prod(shape),
      byte_model="reads x once", baseline=("einsum",), default=False))
  opts = runner.Options(suites=("square_sum",), quick=True, reps=1,
                        max_case_s=0.01, bandwidth_mb=1)
  results = runner.run(opts, str(tmp_path), "test")
  rows = {(r["mode"], r["impl"]): r for r in results["rows"]}
  modes = ("fwd", "vjp")  # the suite's default modes
  assert set(rows) == {(m, i) for m in modes
                       for i in ("jxent", "einsum", "wrong")}
  for mode in modes:
    assert rows[mode, "jxent"]["vs_ref"] == 1.0
    assert rows[mode, "einsum"]["agrees"] is True
    assert rows[mode, "einsum"]["gbps"] > 0
    assert rows[mode, "wrong"]["agrees"] is False
  assert [line.split(":")[0] for line in report.failures(results)] == [
      "square_sum fwd float32 4x8 wrong", "square_sum vjp float32 4x8 wrong"]
  assert "| square_sum | fwd | float32 | 4x8 | einsum |" in report.markdown(
      results)


def test_linear_suite_runs_and_agrees(tmp_path):
  # Two vocabulary blocks (64 rows give 16384 columns a block), so the
  # fused loss needs less than the materialised logits.
  assert main(["--shapes", "64x16x32768", "--reps", "2", "--out",
               str(tmp_path)], suite="linear_ce") == 0
  results = json.loads((tmp_path / "results.json").read_text())
  rows = {r["impl"]: r for r in results["rows"]}
  # jxent's default (the fast mode here) and its low-memory walk.
  assert set(rows) == {"jxent", "jxent_low_memory", "materialised",
                       "chunked"}
  for name in ("jxent_low_memory", "materialised", "chunked"):
    assert rows[name]["loss_max_abs_diff"] < 1e-5
    assert rows[name]["agrees"] is True
    assert rows[name]["vs_ref"] > 0
  assert (rows["jxent_low_memory"]["temp_bytes"]
          < rows["materialised"]["temp_bytes"])
  assert rows["materialised"]["temp_vs_ref"] > 1
  assert "time / jxent" in (tmp_path / "table.md").read_text()
  assert not (tmp_path / "bench.png").exists()  # no byte model, no plot


def test_linear_suite_has_the_bfloat16_logits_peer(tmp_path):
  # Issue 21, item 1: the peer that keeps the logits in the inputs' dtype
  # and upcasts inside the loss runs on bfloat16 inputs and agrees.
  assert main(["--shapes", "64x16x1024", "--dtypes", "bfloat16", "--reps",
               "1", "--impls", "jxent,materialised,materialised_bf16",
               "--out", str(tmp_path)], suite="linear_ce") == 0
  results = json.loads((tmp_path / "results.json").read_text())
  rows = {r["impl"]: r for r in results["rows"]}
  assert set(rows) == {"jxent", "materialised", "materialised_bf16"}
  assert rows["materialised_bf16"]["agrees"] is True
  assert "| materialised_bf16 |" in (tmp_path / "table.md").read_text()


LINEAR_HEADS = ("linear_log_probs", "linear_kl", "linear_js", "linear_top_k")


def test_linear_head_suites_run_and_agree(tmp_path):
  """The four vocabulary-scale heads against their materialised logits, in
  one run (one test, so that one xdist worker compiles them), at 8 tokens:
  two vocabulary blocks of 8192 columns, so the fused loss needs less than
  the logits. The chunked peer is
  `test_chunked_peer_splits_every_head_and_extra`'s."""
  assert main(["--suite", ",".join(LINEAR_HEADS), "--shapes", "8x8x16384",
               "--impls", "jxent,materialised", "--reps", "1",
               "--max-case-s", "0.01", "--strict", "--out",
               str(tmp_path)]) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  table = (tmp_path / "table.md").read_text()
  for suite in LINEAR_HEADS:
    rows = {r["impl"]: r for r in _rows(results, suite=suite)}
    assert set(rows) == {"jxent", "materialised"}, suite
    row = rows["materialised"]
    assert row["mode"] == "vjp" and row["status"] == "ok", row
    assert row["loss_max_abs_diff"] <= F32_LOSS_RTOL * max(
        1.0, row["loss_ref_max_abs"]), row
    assert row["grad_max_abs_diff"] <= (F32_GRAD_RTOL["float32"]
                                        * row["grad_ref_max_abs"]), row
    assert row["agrees"] is True and row["vs_ref"] > 0, row
    assert rows["jxent"]["temp_bytes"] < row["temp_bytes"], suite
    assert row["temp_vs_ref"] > 1, row
    assert f"| {suite} | vjp | float32 | 8x8x16384 | materialised |" in table


def test_linear_suites_differentiate_the_student():
  """The last head is the student; a teacher head is data."""
  from bench import linear

  assert linear.NAMES == ["linear_ce", *LINEAR_HEADS,
                          "linear_policy_gradient"]
  for name in linear.NAMES:
    heads = 2 if name in ("linear_kl", "linear_js") else 1
    assert registry.get(name).grad_argnums == (2 * heads - 2, 2 * heads - 1)


def test_top_k_teacher_is_distinct_classes(rng):
  from bench import linear

  indices, log_p = linear._top_k_teacher(registry.Draw(0, host=True), 5, 1000,
                                         np.float32)
  assert indices.shape == log_p.shape == (5, linear.TOP_K)
  for row in np.asarray(indices):
    assert len(set(row)) == linear.TOP_K and 0 <= row.min() <= row.max() < 1000
  np.testing.assert_allclose(np.exp(log_p).sum(axis=1), linear.TOP_K_MASS,
                             rtol=1e-5)


@pytest.mark.parametrize("suite", ["linear_kl", "linear_top_k"])
def test_chunked_peer_splits_every_head_and_extra(monkeypatch, suite):
  """Two chunks of 4 tokens: each head's x and each extra are split, the
  weights are shared, and the result is the materialised one."""
  import jax

  from bench import linear

  monkeypatch.setattr(linear, "TOKEN_CHUNK", 4)
  s = registry.get(suite)
  impls = {i.name: i.fn for i in s.peers}
  inputs = s.inputs(registry.Draw(0, host=True), (8, 4, 128), np.float32)
  want, got = (jax.jit(jax.value_and_grad(impls[name],
                                          argnums=s.grad_argnums))(*inputs)
               for name in ("materialised", "chunked"))
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(got[1], want[1], strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_sharded_suite_runs_on_8_devices(tmp_path):
  # A fresh process: the command line sets up the 8 CPU devices.
  result = subprocess.run(
      [sys.executable, "-m", "bench.sharded", "--shapes", "64x1024",
       "--reps", "2", "--out", str(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {r["impl"]: r for r in json.loads(
      (tmp_path / "results.json").read_text())["rows"]}
  assert rows["jxent"]["devices"] == 8
  assert rows["gspmd"]["agrees"] is True
  assert rows["gathered"]["grad_max_abs_diff"] < 1e-6
  assert not rows["jxent"]["all_gather_in_hlo"]
  assert rows["gathered"]["all_gather_in_hlo"]
  assert "all-gather: yes" in (tmp_path / "table.md").read_text()


def test_runs_without_out_go_to_a_new_ignored_folder(monkeypatch, tmp_path):
  """Issue 14: `--quick` without `--out` overwrote bench/results/."""
  from bench import __main__ as cli

  assert pathlib.Path(cli.RUNS) == ROOT / "bench" / "runs"
  ignored = subprocess.run(
      ["git", "check-ignore", "-q", "bench/runs/cpu-20260101-000000/table.md"],
      cwd=ROOT, check=False)
  assert ignored.returncode == 0
  monkeypatch.setattr(cli, "RUNS", str(tmp_path))
  args = ["--suite", "entropy", *TINY, "--modes", "fwd", "--impls", "jxent"]
  assert main(args) == 0
  assert main(args) == 0
  runs = sorted(tmp_path.iterdir())
  assert len(runs) == 2
  for run in runs:
    assert run.name.startswith("cpu-")
    assert (run / "results.json").exists()


def test_the_plot_tells_dtypes_direction_and_speed_up(quick):
  """Issue 14: dtypes apart as single points, which way is better, and the
  headline ratio."""
  from bench import plot

  _, results = quick
  fig = plot.figure(results)
  assert "jxent speed-up over all cases: ×" in fig.get_suptitle()
  ax = fig.axes[0]
  assert "higher is better" in ax.get_ylabel()
  assert "jxent speed-up: optax ×" in ax.get_title()
  markers = {line.get_marker() for line in ax.get_lines()}
  assert {"o", "s"} <= markers


# Each bad command: the words its one line on stderr must hold. These are
# refused before JAX loads, so each process takes a fraction of a second.
BAD_COMMANDS = {
    "shape-syntax": (["--shapes", "10by20"], "bad shape '10by20'"),
    "shape-zero": (["--shapes", "0x10"], "every size must be at least 1"),
    # Issue 19: aborted in C++ (exit status 134).
    "shape-huge": (["--shapes", "99999999999x99999999"],
                   "every size must be at most 2**31 - 1"),
    "from-json-missing": (["--from-json", "/nonexistent.json"],
                          "no such file: '/nonexistent.json'"),
    "from-json-garbage": (["--from-json", "{tmp}/garbage.json"],
                          "is not JSON"),
    "from-json-not-results": (["--from-json", "{tmp}/list.json"],
                              "is not a bench results.json"),
    "reps-zero": (["--reps", "0"], "--reps: expected an integer >= 1"),
    "seed-negative": (["--seed", "-1"], "--seed: expected an integer >= 0"),
    "max-case-nan": (["--max-case-s", "nan"], "expected a positive number"),
    "budget-negative": (["--budget-s", "-1"], "expected a positive number"),
}


@pytest.fixture(scope="module")
def bad_commands(tmp_path_factory):
  """Runs every bad command at once, in parallel processes."""
  tmp = tmp_path_factory.mktemp("cli")
  (tmp / "garbage.json").write_bytes(b"\x00\xff not json")
  (tmp / "list.json").write_text("[]")
  procs = {}
  for name, (args, _) in BAD_COMMANDS.items():
    args = [a.format(tmp=tmp) for a in args] + ["--out", str(tmp / name)]
    procs[name] = subprocess.Popen(
        [sys.executable, "-m", "bench", *args], cwd=ROOT, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  done = {name: (p.wait(timeout=120), *p.communicate())
          for name, p in procs.items()}
  # Nothing written.
  assert sorted(p.name for p in tmp.iterdir()) == ["garbage.json", "list.json"]
  return done


@pytest.mark.parametrize("name", BAD_COMMANDS)
def test_bad_command_says_why_in_one_line(bad_commands, name):
  """Issue 14: bad flags traced back, or (--reps 0) were silently ignored."""
  status, stdout, stderr = bad_commands[name]
  assert status == 2, stderr
  assert stdout == ""
  [line] = stderr.splitlines()
  assert line.startswith("python -m bench: error: ")
  assert BAD_COMMANDS[name][1] in line


@pytest.mark.parametrize(("args", "words"), [
    (["--suite", "ce_int,nosuch"], "--suite: unknown nosuch"),
    (["--shapes", "8x16x32"], "suite ce_int takes ROWSxCLASSES, got 8x16x32"),
    (["--suite", "entropy", "--reference", "optax"],
     "suite entropy has no implementation optax"),
    (["--impls", "optax"], "--reference: jxent is not among --impls"),
    (["--suite", "sharded", "--shapes", "8x12"],
     "suite sharded: vocab 12 is not a multiple of the 8 devices"),
    # Issue 19: sizes within int32 whose inputs no memory holds.
    (["--suite", "ce_int", "--shapes", "2000000000x2000000000"],
     "suite ce_int: the inputs of shape 2000000000x2000000000 take"),
    (["--suite", "linear_ce", "--shapes", "100x2000000000x2000000000"],
     "more than half of the"),
])
def test_options_the_registry_refuses(capsys, tmp_path, args, words):
  """Checked against the registry, in this process: JAX is loaded here."""
  with pytest.raises(SystemExit) as exit_:
    main([*args, "--out", str(tmp_path / "out")])
  assert exit_.value.code == 2
  [line] = capsys.readouterr().err.splitlines()
  assert words in line
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", [
    "{tmp}/file/run",
    pytest.param("/proc/jxent-bench", marks=pytest.mark.skipif(
        not pathlib.Path("/proc/self").is_dir(), reason="needs Linux /proc")),
])
def test_out_that_cannot_be_made_is_refused_before_the_run(capsys, tmp_path,
                                                          out):
  """Issue 19: the run went ahead, then traced back when writing."""
  (tmp_path / "file").write_text("")
  out = out.format(tmp=tmp_path)
  with pytest.raises(SystemExit) as exit_:
    main(["--suite", "entropy", *TINY, "--out", out])
  assert exit_.value.code == 2
  captured = capsys.readouterr()
  [line] = captured.err.splitlines()
  assert line.startswith(f"python -m bench: error: --out: cannot write {out} (")
  assert "device:" not in captured.err + captured.out  # Nothing ran.
  assert [p.name for p in tmp_path.iterdir()] == ["file"]
  assert not pathlib.Path(out).exists()


def test_reference_that_does_not_import_is_refused(monkeypatch, capsys,
                                                   tmp_path):
  """Issue 19: --reference torch without torch ran, then printed no ratios."""
  monkeypatch.setitem(sys.modules, "torch", None)  # As if not installed.
  with pytest.raises(SystemExit) as exit_:
    main(["--suite", "ce_int", "--reference", "torch", *TINY,
          "--out", str(tmp_path / "out")])
  assert exit_.value.code == 2
  [line] = capsys.readouterr().err.splitlines()
  assert "--reference: torch needs torch, which does not import" in line
  assert not (tmp_path / "out").exists()


def test_out_folder_with_results_needs_force(capsys, tmp_path):
  (tmp_path / "results.json").write_text("{}")
  for out, words in ((tmp_path, "already holds a results.json"),
                     (tmp_path / "results.json", "is a file, not a folder")):
    with pytest.raises(SystemExit) as exit_:
      main(["--suite", "entropy", *TINY, "--out", str(out)])
    assert exit_.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert words in line
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
  assert (tmp_path / "results.json").read_text() == "{}"


def test_compare_exports_jxent_at_a_revision(tmp_path):
  import importlib
  import sys

  from bench import compare
  name = compare.export_package("HEAD", tmp_path)
  assert name == "jxent_HEAD"
  sys.path.insert(0, str(tmp_path))
  try:
    old = importlib.import_module(name)
    loss = old.softmax_cross_entropy_with_integer_labels(
        jnp.zeros((2, 4)), jnp.array([0, 3]))
    np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)
    assert old.__file__.startswith(str(tmp_path))
  finally:
    sys.path.remove(str(tmp_path))
    for module in [m for m in sys.modules if m.startswith(name)]:
      del sys.modules[module]


def test_compare_without_a_revision_is_a_one_line_error(capsys):
  from bench import compare
  assert compare.main([]) == 2
  assert compare.main(["--quick"]) == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 2


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.json"], "need a GPU"),
    (["--interpret", "--blocks", "100", "--out", "x.json"], "powers of two"),
    (["--interpret", "--shapes", "10by3", "--out", "x.json"], "ROWSxCLASSES"),
    (["--interpret", "--reps", "0", "--out", "x.json"], "--reps"),
    (["--interpret", "--calls", "0", "--out", "x.json"], "--calls"),
    (["--interpret", "--lane-sums", "2", "--out", "x.json"], "--lane-sums"),
])
def test_sweep_refuses_bad_arguments_in_one_line(argv, message, capsys):
  from bench import sweep
  with pytest.raises(SystemExit) as exit_:
    sweep.main(argv)
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]


def test_sweep_rehearses_in_interpret_mode(tmp_path):
  from bench import sweep
  out = tmp_path / "sweep.json"
  assert sweep.main(["--interpret", "--shapes", "4x100", "--blocks", "64",
                     "--warps", "4", "--stages", "1", "--reps", "1",
                     "--calls", "2", "--out", str(out)]) == 0
  table = json.loads(out.read_text())
  assert {b["kernel"] for b in table["best"]} == {"row_stats",
                                                   "logits_gradient"}
  assert table["best"][0]["bucket"] == 128 and table["interpret"]
  # Keyed by the device's kind, as the kernels' lookup reads it.
  assert {b["device_kind"] for b in table["best"]} == {"cpu"}
  # Both ways of the forward kernel's running sums are timed; the backward
  # kernel has one.
  assert {(r["kernel"], r["lane_sums"]) for r in table["rows"]} == {
      ("row_stats", False), ("row_stats", True), ("logits_gradient", False)}
  assert "back to back" in table["timing"]


def test_linear_block_sweep_writes_its_rows(tmp_path):
  from bench import linear_blocks
  out = tmp_path / "blocks.json"
  assert linear_blocks.main(["--shape", "16x8x256", "--blocks", "32,256",
                             "--dtype", "float32", "--reps", "2",
                             "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert {(r["suite"], r["impl"]) for r in rows} == {
      (s, i) for s in ("linear_ce", "linear_kl")
      for i in ("block 32", "block 256", "materialised")}
  assert all(r["median_ms"] > 0 for r in rows)
  assert linear_blocks.main(["--shape", "16x8"]) == 2


def test_vjp_mean_takes_jxents_mean_inside(monkeypatch, tmp_path):
  """``vjp_mean`` differentiates jxent's loss called with reduction="mean"
  (the one-read path's case), the peers' per-row losses averaged outside,
  and checks them against each other."""
  calls = []
  ce = registry.get("ce_int")
  jxent_fn = ce.jxent

  def spy(*inputs, **options):
    calls.append(options.get("reduction"))
    return jxent_fn(*inputs, **options)

  monkeypatch.setattr(registry, "_SUITES", {
      **registry.suites(), "ce_int": dataclasses.replace(ce, jxent=spy)})
  assert main(["--suite", "ce_int,entropy", *TINY, "--modes", "vjp,vjp_mean",
               "--impls", "jxent,optax,jax_nn", "--strict", "--out",
               str(tmp_path)]) == 0
  assert calls == [None, "mean"]  # traced once each, under jit
  results = json.loads((tmp_path / "results.json").read_text())
  rows = _rows(results, mode="vjp_mean")
  assert {(r["suite"], r["impl"]) for r in rows} == {
      ("ce_int", "jxent"), ("ce_int", "optax"), ("entropy", "jxent"),
      ("entropy", "jax_nn")}
  assert all(r["status"] == "ok" and r["agrees"] for r in rows)
  # Entropy has no reduction inside: its jxent is averaged outside.
  assert registry.get("entropy").impls()[0].mean is None


def test_gpu_script_runs_its_stages_in_order_within_one_deadline(
    monkeypatch, tmp_path, capsys):
  """bench.gpu: bfloat16 (strict, vjp_mean, jxent's variants and optax),
  then the linear suites (strict), then float32 and the other peers; each
  stage's budget within what is left; a failing stage fails the run."""
  import bench.__main__
  from bench import gpu

  calls = []

  def fake_main(argv, prog="python -m bench", suite=None):
    calls.append((prog, argv))
    return 1 if "linear" in prog else 0

  monkeypatch.setattr(bench.__main__, "main", fake_main)
  for name in ("JXENT_BENCH_SHAPES", "JXENT_LINEAR_SHAPES"):
    monkeypatch.delenv(name, raising=False)
  assert gpu.main(["--out", str(tmp_path), "--total-s", "300"]) == 1
  assert [prog for prog, _ in calls] == [
      "python -m bench", "python -m bench.linear", "python -m bench"]
  (_, bf16), (_, linear), (_, rest) = calls

  def value(argv, flag):
    return argv[argv.index(flag) + 1]

  assert value(bf16, "--dtypes") == "bfloat16" and "--strict" in bf16
  assert value(bf16, "--modes") == "fwd,vjp,vjp_mean"
  # jxent's kernel variants run on a GPU (or interpreted) only.
  assert set(value(bf16, "--impls").split(",")) >= {
      "jxent", "optax", "optax_f32"}
  monkeypatch.setenv("JXENT_BENCH_INTERPRET", "1")
  interpreted = gpu.stage_argv("bf16", str(tmp_path), 100)
  assert {"jxent_xla", "jxent_triton"} <= set(
      value(interpreted, "--impls").split(","))
  assert "--strict" in linear and "--strict" not in rest
  assert value(rest, "--dtypes") == "float32,bfloat16"
  assert "torch" in value(rest, "--impls").split(",")
  budgets = [float(value(argv, "--budget-s")) for _, argv in calls]
  # Later stages are kept their share: the first gets the least of the
  # time; all fit the deadline.
  assert budgets[0] < budgets[1] < budgets[2] < 300
  folder = pathlib.Path(value(bf16, "--out")).parent
  assert folder.parent == tmp_path and folder.is_dir()
  assert [pathlib.Path(value(a, "--out")).name for _, a in calls] == [
      "bf16", "linear", "rest"]
  assert f"=== results folder: {folder}" in capsys.readouterr().err


def test_peers_with_16_bit_logits_get_the_16_bit_tolerances():
  # The H200 run's --strict check failed the linear suites' materialised_bf16
  # peer (bfloat16 logits, upcast after the matmul) on its expected
  # rounding, by the float32 tolerance.
  suite = registry.get("linear_ce")
  peer = next(p for p in suite.peers if p.name == "materialised_bf16")
  assert not peer.accumulates_f32("bfloat16")
  assert peer.accumulates_f32("float32")
  f32 = next(p for p in suite.peers if p.name == "materialised")
  assert f32.accumulates_f32("bfloat16")
