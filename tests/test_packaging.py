"""The wheel and sdist, and type checkers on the installed package.

The archives are built once per module, the way a release is (`python -m
build`: the sdist, then the wheel from the sdist), without build isolation,
so no backend is downloaded: the `dev` extra installs hatchling.
"""

import os
import pathlib
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
NAME, VERSION = PROJECT["name"], PROJECT["version"]


def _run(args, cwd, returncode=0):
  # No PYTHONPATH or MYPYPATH: jxent must be found as installed.
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONPATH", "MYPYPATH")}
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
  output = result.stdout + result.stderr
  assert result.returncode == returncode, output[-4000:]
  return output


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
  out = tmp_path_factory.mktemp("dist")
  log = _run([sys.executable, "-m", "build", "--no-isolation",
              "--outdir", str(out), str(ROOT)], cwd=out)
  (wheel,) = out.glob("*.whl")
  (sdist,) = out.glob("*.tar.gz")
  return wheel, sdist, log


@pytest.fixture(scope="module")
def wheel_names(dists):
  with zipfile.ZipFile(dists[0]) as archive:
    return archive.namelist()


def _wheel_text(wheel, name):
  with zipfile.ZipFile(wheel) as archive:
    return archive.read(name).decode()


def test_version_matches_pyproject():
  import jxent

  assert jxent.__version__ == VERSION


def test_build_prints_no_deprecation_warning(dists):
  assert "deprecat" not in dists[2].lower(), dists[2]


def test_twine_check_passes(dists):
  wheel, sdist, _ = dists
  _run([sys.executable, "-m", "twine", "check", "--strict", str(wheel),
        str(sdist)], cwd=wheel.parent)


def test_wheel_holds_the_package_and_nothing_else(wheel_names):
  # No tests/, bench/, notebooks/ or examples/: only the package and its
  # metadata.
  dist_info = f"{NAME}-{VERSION}.dist-info"
  assert {n.split("/")[0] for n in wheel_names} == {"jxent", dist_info}
  assert not [n for n in wheel_names
              if "tests/" in n or n.rsplit("/", 1)[-1].startswith("test_")]
  assert "jxent/py.typed" in wheel_names
  assert "jxent/sharded.py" in wheel_names
  assert "jxent/demo/__main__.py" in wheel_names


def test_wheel_carries_the_licence(dists, wheel_names):
  name = f"{NAME}-{VERSION}.dist-info/licenses/LICENSE"
  assert name in wheel_names
  assert _wheel_text(dists[0], name) == (ROOT / "LICENSE").read_text()


def test_wheel_metadata_is_pep_639(dists):
  metadata = _wheel_text(dists[0], f"{NAME}-{VERSION}.dist-info/METADATA")
  lines = metadata.splitlines()
  assert "License-Expression: Apache-2.0" in lines
  assert "License-File: LICENSE" in lines
  # PEP 639: no licence classifier next to a licence expression.
  assert not [x for x in lines if x.startswith("Classifier: License ::")]
  assert "Classifier: Programming Language :: Python :: 3.13" in lines
  assert [x for x in lines if x.startswith("Project-URL: Documentation, ")]


def test_sdist_carries_the_licence(dists):
  with tarfile.open(dists[1]) as archive:
    names = archive.getnames()
    prefix = f"{NAME}-{VERSION}"
    licence = archive.extractfile(f"{prefix}/LICENSE").read().decode()
  assert licence == (ROOT / "LICENSE").read_text()
  for name in ("pyproject.toml", "README.md", "PKG-INFO", "jxent/py.typed",
               "jxent/__init__.py"):
    assert f"{prefix}/{name}" in names



def test_sdist_carries_the_notebooks_once(dists):
  # Issue 19: reached through the docs/notebooks symlink first, notebooks/
  # was left out altogether.
  with tarfile.open(dists[1]) as archive:
    names = archive.getnames()
  prefix = f"{NAME}-{VERSION}"
  notebooks = sorted(p.name for p in (ROOT / "notebooks").iterdir()
                     if p.suffix in (".ipynb", ".py", ".toml"))
  assert len(notebooks) >= 3
  assert sorted(n.removeprefix(f"{prefix}/notebooks/") for n in names
                if n.startswith(f"{prefix}/notebooks/")) == notebooks
  assert not [n for n in names if n.startswith(f"{prefix}/docs/notebooks/")]
  assert f"{prefix}/docs/notebooks.md" in names

# What a user's project does with jxent: mypy must find it installed (after
# the README's `pip install -e ".[dev]"` too) and see its real signatures.
USER_CODE = """\
from typing import assert_type

import jax
import jax.numpy as jnp

import jxent
import jxent.sharded

p, q = jnp.array([1.0, 0, 0, 0]), jnp.array([0.7, 0.1, 0.05, 0.15])
assert_type(jxent.entropy(p, base=2), jax.Array)
assert_type(jxent.kl_divergence(p, q), jax.Array)
logits, labels = jnp.zeros((8, 10)), jnp.arange(8)
loss = jxent.softmax_cross_entropy_with_integer_labels(
    logits, labels, label_smoothing=0.1, reduction="mean")
assert_type(loss, jax.Array)
assert_type(jxent.sharded.pad_vocab(logits, 4), jax.Array)
"""


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
  # Shared, so that the second run reuses the first one's analysis of jax.
  return tmp_path_factory.mktemp("mypy_cache")


def _mypy_outside(directory, code, cache, returncode=0):
  """Runs mypy on `code` in `directory`, outside the repository."""
  (directory / "user_code.py").write_text(code)
  # A config file of its own, so that mypy reads none from a parent or ~.
  (directory / "mypy.ini").write_text("[mypy]\n")
  return _run([sys.executable, "-m", "mypy", "--cache-dir", str(cache),
               "user_code.py"], cwd=directory, returncode=returncode)


def test_mypy_resolves_jxent_from_outside_the_repository(tmp_path, mypy_cache):
  assert not tmp_path.is_relative_to(ROOT)
  output = _mypy_outside(tmp_path, USER_CODE, mypy_cache)
  assert "Success" in output, output


def test_mypy_checks_the_package(mypy_cache):
  # The configuration is pyproject.toml's [tool.mypy].
  output = _run([sys.executable, "-m", "mypy", "--cache-dir", str(mypy_cache),
                 "-p", "jxent"], cwd=ROOT)
  assert "Success" in output, output


def test_user_code_fails_the_type_check_where_it_should(tmp_path, mypy_cache):
  # The check above would pass vacuously if jxent's functions were Any.
  code = 'import jxent\njxent.entropy("not an array")\n'
  output = _mypy_outside(tmp_path, code, mypy_cache, returncode=1)
  assert 'Argument 1 to "entropy" has incompatible type "str"' in output
