"""The demo's command line never traces back (issue 14).

Each case runs ``python -m jxent.demo`` in a subprocess and expects one line
on stderr, the exit status, and nothing written. Refusals come before any
training, so each case takes about the time of importing JAX.
"""

import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from jxent.demo import config as config_lib
from jxent.demo.__main__ import DEMO_MODULES

ERROR = "jxent-demo: error: "
# The subprocesses import jxent from this checkout, installed or not.
ROOT = str(pathlib.Path(__file__).resolve().parents[1])
ENV = os.environ | {"PYTHONPATH": os.pathsep.join(
    filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}


def _run(tmp_path, args, *, code=None):
  prefix = ["-c", code] if code else ["-m", "jxent.demo"]
  return subprocess.run(
      [sys.executable, *prefix, *args], capture_output=True, text=True,
      cwd=tmp_path, env=ENV, timeout=300,
  )


def _assert_refused(result, tmp_path, message, status=2):
  """One line naming the problem, the status, and no run folder made."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == status, result.stderr
  assert len(lines) == 1 and lines[0].startswith(ERROR), result.stderr
  assert message in lines[0]
  assert result.stdout == ""
  assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def _npz(path, x=None, y=None, **arrays):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32) if x is None else x
  y = np.arange(40) % 2 if y is None else y
  np.savez(path, x=x, y=y, **arrays)


def _garbage_members(path):
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("x.npy", b"not an array")
    z.writestr("y.npy", b"nor this")


def _one_label(value):
  """Labels 0 and 1, and one example labelled `value`."""
  return lambda path: _npz(path, y=np.array([0, 1] * 20 + [value], np.int64),
                           x=np.zeros((41, 4), np.float32))


def _channels_first(path):
  _npz(path, x=np.zeros((40, 3, 8, 8), np.float32))


def _file(path):
  path.write_text("not a folder")


# (case, flags, what to write at {tmp}/<name>, message). "{tmp}" is the
# test's folder; every case but the --out ones writes to {tmp}/run.
CASES = [
    ("garbage-members", ["--data", "{tmp}/d.npz"], ("d.npz", _garbage_members),
     "d.npz: 'x' holds no NumPy array"),
    ("label-2**32+1", ["--data", "{tmp}/d.npz"], ("d.npz", _one_label(2**32 + 1)),
     "3 distinct labels from 0 to 4294967297; renumber them"),
    ("label-2**31", ["--data", "{tmp}/d.npz"], ("d.npz", _one_label(2**31)),
     "3 distinct labels from 0 to 2147483648"),
    ("sparse-labels", ["--data", "{tmp}/d.npz"], ("d.npz", _one_label(10**6)),
     "labels 'y' must be 0..K-1 with every class present, found 3 distinct"),
    ("channels-first", ["--model", "cnn", "--data", "{tmp}/d.npz"],
     ("d.npz", _channels_first), "shape (n, 3, 8, 8) looks channels-first"),
    ("seed", ["--seed", "-1"], None, "seed must be in [0, 2**32), got -1"),
    ("out-missing-parent", ["--out", "{tmp}/missing/run"], None,
     "missing/run: no folder"),
    ("out-is-file", ["--out", "{tmp}/file"], ("file", _file),
     "file is a file, not a folder"),
    ("lr-nan", ["--lr", "nan"], None,
     "lr must be a positive finite number, got nan"),
    ("lr-0", ["--lr", "0"], None, "lr must be a positive finite number, got 0.0"),
    ("lr-negative", ["--lr", "-1"], None, "got -1.0"),
    ("weight-decay", ["--weight-decay", "-5"], None,
     "weight decay must be a finite number >= 0, got -5.0"),
    ("epochs-not-int", ["--epochs", "2.5"], None,
     "argument --epochs: invalid int value: '2.5'"),
]


@pytest.mark.parametrize(
    ("flags", "make", "message"), [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input_gives_one_line_and_status_2(tmp_path, flags, make, message):
  if make is not None:
    name, write = make
    write(tmp_path / name)
  flags = [f.format(tmp=tmp_path) for f in flags]
  if "--out" not in flags:
    flags += ["--out", str(tmp_path / "run")]
  result = _run(tmp_path, [*flags, "--epochs", "1"] if "--epochs" not in flags
                else flags)
  _assert_refused(result, tmp_path, message)


RUN_MODULE = "runpy.run_module('jxent.demo', run_name='__main__')"
# What the jxent-demo console script does.
RUN_SCRIPT = "from jxent.demo.__main__ import main; sys.exit(main())"


@pytest.mark.parametrize(
    ("hidden", "run"),
    [(DEMO_MODULES, RUN_MODULE), (("optax",), RUN_SCRIPT),
     (("sklearn",), RUN_MODULE)],
    ids=["python-m-no-demo-extra", "jxent-demo-no-optax", "no-sklearn"],
)
def test_missing_demo_extra_says_what_to_install(tmp_path, hidden, run):
  # As after `pip install jxent` without [demo]: the modules cannot load.
  code = "\n".join([
      "import runpy, sys",
      f"for name in {hidden!r}:",
      "  sys.modules[name] = None",
      "sys.argv[0] = 'jxent-demo'",
      run,
  ])
  result = _run(tmp_path, ["--epochs", "1", "--out", str(tmp_path / "run")],
                code=code)
  # jxent is not on a package index: `pip install "jxent[demo]"` (issue 19)
  # cannot resolve.
  _assert_refused(
      result, tmp_path,
      'from the repository root, python -m pip install -e ".[demo]"')
  assert f"needs {hidden[0]}," in result.stderr
  assert "jxent[demo]" not in result.stderr


def test_diverging_training_says_so_and_writes_nothing(tmp_path):
  _npz(tmp_path / "d.npz")
  result = _run(tmp_path, [
      "--data", str(tmp_path / "d.npz"), "--lr", "1e30", "--epochs", "1",
      "--batch-size", "8", "--no-plots", "--out", str(tmp_path / "run"),
  ])
  _assert_refused(result, tmp_path, "training diverged in epoch 1", status=1)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
@pytest.mark.parametrize("run", [None, RUN_SCRIPT],
                         ids=["python-m", "jxent-demo"])
def test_out_the_system_refuses_is_refused_before_training(tmp_path, run):
  """Issue 19: /proc exists (and root may write to it, says os.access), but
  no folder can be made in it: the run trained, then traced back."""
  code = run and f"import sys\nsys.argv[0] = 'jxent-demo'\n{run}"
  result = _run(tmp_path, ["--epochs", "1", "--out", "/proc/jxent-x"],
                code=code)
  _assert_refused(result, tmp_path,
                  "output folder /proc/jxent-x: cannot write there (")
  assert not os.path.exists("/proc/jxent-x")


def test_default_runs_folder_is_checked_too(tmp_path):
  (tmp_path / "runs").write_text("not a folder")
  result = _run(tmp_path, ["--epochs", "1"])
  assert result.returncode == 2, result.stderr
  assert result.stderr == (
      f"{ERROR}output folder runs is a file, not a folder\n")
  assert (tmp_path / "runs").read_text() == "not a folder"


def test_checking_the_out_folder_leaves_nothing_behind(tmp_path):
  for out in (tmp_path / "new", tmp_path):
    config_lib.check(config_lib.Config(out=str(out)))
  assert list(tmp_path.iterdir()) == []
