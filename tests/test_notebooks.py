"""Executes every notebook in notebooks/ and checks its jupytext pair.

Each ``notebooks/NAME.ipynb`` is committed with its outputs, beside
``notebooks/NAME.py``, the same notebook as a jupytext percent script. The
tests run each notebook from a clean kernel on this interpreter (with this
checkout of jxent importable) and fail on any error, and check that the two
files hold the same cells and that the committed outputs are complete.

After editing a notebook, refresh its committed outputs from the script:

  python tests/test_notebooks.py [notebooks/NAME.ipynb ...]
"""

import json
import os
import pathlib
import sys
import tempfile
import time

import jupytext
import nbclient
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "python3"
CELL_TIMEOUT_S = 300
MAX_NOTEBOOK_BYTES = 1_000_000


def _write_kernel_spec(jupyter_dir: pathlib.Path) -> None:
  """A `python3` kernel spec that runs ipykernel on this very interpreter.

  Put first on JUPYTER_PATH, it wins over any user-wide `python3` spec that
  may point at another Python.
  """
  spec_dir = jupyter_dir / "kernels" / KERNEL
  spec_dir.mkdir(parents=True, exist_ok=True)
  spec = {
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "Python 3 (ipykernel)",
      "language": "python",
  }
  (spec_dir / "kernel.json").write_text(json.dumps(spec))


def _kernel_environ(jupyter_dir: pathlib.Path) -> dict[str, str]:
  """Environment variables that make the kernel use this checkout."""
  def prepend(name, path):
    return os.pathsep.join(filter(None, [str(path), os.environ.get(name)]))

  return {
      "JUPYTER_PATH": prepend("JUPYTER_PATH", jupyter_dir),
      "PYTHONPATH": prepend("PYTHONPATH", ROOT),
  }


def execute(nb: nbformat.NotebookNode) -> None:
  """Runs `nb` in place, in a fresh kernel, from the notebooks folder.

  Raises:
    nbclient.exceptions.CellExecutionError: If any cell raises.
  """
  client = nbclient.NotebookClient(
      nb,
      kernel_name=KERNEL,
      timeout=CELL_TIMEOUT_S,
      record_timing=False,
      resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
  )
  client.execute()


def _paired_script(path: pathlib.Path) -> pathlib.Path:
  return path.with_suffix(".py")


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str]]:
  return [(cell.cell_type, cell.source.strip()) for cell in nb.cells]


@pytest.fixture(scope="module")
def kernel_environment(tmp_path_factory):
  jupyter_dir = tmp_path_factory.mktemp("jupyter")
  _write_kernel_spec(jupyter_dir)
  with pytest.MonkeyPatch.context() as patch:
    for name, value in _kernel_environ(jupyter_dir).items():
      patch.setenv(name, value)
    yield


def test_notebooks_are_found():
  assert NOTEBOOKS, f"no notebooks in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
@pytest.mark.usefixtures("kernel_environment")
def test_notebook_runs_from_a_clean_kernel(path):
  nb = nbformat.read(path, as_version=4)
  execute(nb)
  errors = [
      output
      for cell in nb.cells
      if cell.cell_type == "code"
      for output in cell.outputs
      if output.output_type == "error"
  ]
  assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_and_its_script_hold_the_same_cells(path):
  script = _paired_script(path)
  assert script.is_file(), f"{path.name} has no jupytext pair {script.name}"
  notebook_cells = _cells(nbformat.read(path, as_version=4))
  script_cells = _cells(jupytext.read(script))
  assert notebook_cells == script_cells, (
      f"{path.name} and {script.name} differ; run"
      f" `jupytext --sync notebooks/{path.name}`"
  )


def test_every_script_has_its_notebook():
  scripts = {p.stem for p in NOTEBOOK_DIR.glob("*.py")}
  notebooks = {p.stem for p in NOTEBOOKS}
  assert scripts == notebooks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_come_from_one_clean_run(path):
  nb = nbformat.read(path, as_version=4)
  code = [cell for cell in nb.cells if cell.cell_type == "code"]
  counts = [cell.execution_count for cell in code]
  assert counts == list(range(1, len(code) + 1)), (
      f"{path.name} was not executed top to bottom in one kernel; run"
      f" `python tests/test_notebooks.py {path.relative_to(ROOT)}`"
  )
  for cell in code:
    assert all(out.output_type != "error" for out in cell.outputs)
  assert path.stat().st_size < MAX_NOTEBOOK_BYTES


def main(argv: list[str]) -> int:
  """Executes the notebooks from their scripts and saves them with outputs."""
  paths = [pathlib.Path(a).resolve() for a in argv] or NOTEBOOKS
  with tempfile.TemporaryDirectory() as tmp:
    jupyter_dir = pathlib.Path(tmp)
    _write_kernel_spec(jupyter_dir)
    os.environ.update(_kernel_environ(jupyter_dir))
    for path in paths:
      nb = jupytext.read(_paired_script(path))
      start = time.perf_counter()
      execute(nb)
      jupytext.write(nb, path)
      seconds = time.perf_counter() - start
      print(f"{path.relative_to(ROOT)}: executed in {seconds:.1f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
