"""The README's examples run as written."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _marked_examples():
  text = (ROOT / "README.md").read_text()
  return re.findall(r"<!-- test:readme-example -->\n```python\n(.*?)```",
                    text, flags=re.S)


def test_readme_has_marked_examples():
  assert _marked_examples()


@pytest.mark.parametrize("index", range(len(_marked_examples())))
def test_readme_example_runs(index):
  # A fresh interpreter: the example configures JAX's devices itself.
  result = subprocess.run(
      [sys.executable, "-c", _marked_examples()[index]], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
