"""The documentation builds with warnings as errors, and covers the API.

`test_docs_build` runs the real build (`sphinx-build -W`, about 15 s on 2
cores; the notebooks are rendered from their stored outputs) into its own
temporary folder and checks what it produced: every public name documented
with its docstring, every notebook rendered with its figures, the newest
benchmark results, the changelog. The other tests check the parts without a
build: docstrings, the extension's rules, the getting-started page against
the README, and a small project built with the same extension that must
fail on an undocumented function, a name no page claims, or a broken
cross-reference (the control that the checks can fail).
"""

import html
import importlib
import inspect
import json
import pathlib
import re
import runpy
import subprocess
import sys
import textwrap

import pytest

import jxent

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PUBLIC_MODULES = ("jxent", "jxent.sharded")

sys.path.insert(0, str(DOCS / "_ext"))
import jxent_docs  # noqa: E402


def _public():
  return [item for modname in PUBLIC_MODULES
          for item in jxent_docs.public_names(modname)]


def _conf():
  """`jxent_api_modules` and `jxent_api_rules` of docs/conf.py."""
  conf = runpy.run_path(str(DOCS / "conf.py"))
  return conf["jxent_api_modules"], conf["jxent_api_rules"]


def _sphinx(source: pathlib.Path, out: pathlib.Path, *extra: str,
            cwd: pathlib.Path = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "-b", "html", "-q", "-E",
       "-d", str(out / "doctrees"), *extra, str(source), str(out / "html")],
      cwd=cwd, capture_output=True, text=True, timeout=600)


def _text(fragment: str) -> str:
  """Visible text of HTML (or Markdown), without markup or whitespace.

  Whitespace goes entirely, since tags split words differently from the
  source; what is left still tells one sentence from another.
  """
  fragment = re.sub(r"<(script|style)\b.*?</\1>", "", fragment, flags=re.S)
  text = html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("`", "")
  # Sphinx's smart quotes turn ' and " into typographic ones.
  text = text.translate(str.maketrans("\u2018\u2019\u201c\u201d", "''\"\""))
  return re.sub(r"\s+", "", text)


def _summary(obj) -> str:
  """A docstring's first line, as `_text` gives it rendered."""
  return _text(inspect.getdoc(obj).splitlines()[0])


# --- without a build ---------------------------------------------------------


@pytest.mark.parametrize("qualname", [q for q, _ in _public()])
def test_every_public_name_has_a_docstring(qualname):
  modname, _, name = qualname.rpartition(".")
  obj = getattr(importlib.import_module(modname), name)
  doc = inspect.getdoc(obj)
  assert doc and doc.strip(), f"{qualname} has no docstring"


def test_conf_lists_the_public_modules_and_a_rule_for_every_name():
  modules, rules = _conf()
  assert tuple(modules) == PUBLIC_MODULES
  for qualname, obj in _public():
    assert jxent_docs.family_of(qualname, obj, rules) is not None, qualname
  pages = {p.stem for p in (DOCS / "api").glob("*.rst")}
  for family in {rule[0] for rule in rules}:
    assert family in pages, f"no docs/api/{family}.rst"
    assert f".. jxent-api:: {family}" in (
        DOCS / "api" / f"{family}.rst").read_text()


def test_families_put_each_name_on_its_page():
  _, rules = _conf()
  family = {q: jxent_docs.family_of(q, o, rules) for q, o in _public()}
  assert family["jxent.entropy"] == "probabilities"
  assert family["jxent.kl_divergence_from_logits"] == "logits"
  assert family["jxent.softmax_cross_entropy"] == "losses"
  assert family["jxent.linear_softmax_cross_entropy"] == "linear"
  assert family["jxent.sharded"] == "sharded"
  assert family["jxent.sharded.linear_softmax_cross_entropy"] == "sharded"
  assert family["jxent.logsumexp"] == "primitives"
  assert family["jxent.checked"] == "debugging"


def test_signatures_are_written_as_in_the_source():
  args, returns = jxent_docs.source_signature(
      jxent.softmax_cross_entropy_with_integer_labels)
  assert "logits: jax.typing.ArrayLike" in args
  assert "axis: int | tuple[int, ...] | None=-1" in args  # alias spelled out
  assert "reduction: Literal['none', 'sum', 'mean']='none'" in args
  assert "Array | ndarray" not in args
  assert returns == "jax.Array"


def test_newest_results_folder_is_found_by_date(tmp_path):
  for name in ["cpu-2026-11-26", "cpu-2026-12-01", "cpu-2026-11-30",
               "nvidia-h100-80gb-hbm3-2026-12-02", "no-table-2026-12-03"]:
    (tmp_path / name).mkdir()
    if not name.startswith("no-table"):
      (tmp_path / name / "table.md").write_text("# t\n")
  found = jxent_docs.results_folders(tmp_path)
  assert found["cpu"][-1].name == "cpu-2026-12-01"
  assert [f.name for f in found["nvidia-h100-80gb-hbm3"]] == [
      "nvidia-h100-80gb-hbm3-2026-12-02"]
  assert "no-table" not in found


def test_getting_started_gives_the_readme_commands():
  readme = (ROOT / "README.md").read_text()
  setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
  commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
  assert len(commands) >= 2, "the README's Set-up has no bash commands"
  page = (DOCS / "getting_started.md").read_text()
  for command in commands:
    assert f"```bash\n{command}```" in page, (
        f"docs/getting_started.md lacks the README's command {command!r}")


@pytest.mark.parametrize("index", [0, 1])
def test_getting_started_examples_run(index):
  page = (DOCS / "getting_started.md").read_text()
  examples = re.findall(r"```python\n(.*?)```", page, flags=re.S)
  assert len(examples) == 2
  result = subprocess.run([sys.executable, "-c", examples[index]], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]


# --- the control: the checks can fail ----------------------------------------

_PACKAGE = """
\"\"\"A package for the control build.\"\"\"

__all__ = {names!r}


def documented(x):
  \"\"\"Documented.\"\"\"


def undocumented(x):
  pass


def orphan(x):
  \"\"\"Documented, but no rule gives it a page.\"\"\"
"""


def _control_project(tmp_path, defect):
  """A one-page project on `fakepkg`, with `defect` (or "none")."""
  names = {"none": ["documented"], "broken_ref": ["documented"],
           "undocumented": ["documented", "undocumented"],
           "unassigned": ["documented", "orphan"]}[defect]
  (tmp_path / "fakepkg.py").write_text(_PACKAGE.format(names=names))
  rules = [("all", "fakepkg", "*", "documented"),
           ("all", "fakepkg", "*", "undocumented")]
  source = tmp_path / "src"
  source.mkdir()
  (source / "conf.py").write_text(textwrap.dedent(f"""
      import sys
      sys.path[:0] = [{str(tmp_path)!r}, {str(DOCS / "_ext")!r}]
      extensions = ["sphinx.ext.autodoc", "sphinx.ext.autosummary",
                    "sphinx.ext.napoleon", "jxent_docs"]
      nitpicky = True
      default_role = "jxent-auto"
      jxent_api_modules = ["fakepkg"]
      jxent_api_rules = {rules!r}
      """))
  ref = "`fakepkg.missing`" if defect == "broken_ref" else "`fakepkg`"
  (source / "index.rst").write_text(textwrap.dedent(f"""
      Control
      =======

      .. py:module:: fakepkg

      See {ref}, `documented` and `x`.

      .. jxent-api:: all
      """))
  return source


@pytest.mark.parametrize("defect, message", [
    ("none", None),
    ("undocumented", "fakepkg.undocumented is public but has no docstring"),
    ("unassigned", "fakepkg.orphan is public but no rule"),
    ("broken_ref", "reference target not found: fakepkg.missing"),
])
def test_the_checks_fail_the_build(tmp_path, defect, message):
  source = _control_project(tmp_path, defect)
  result = _sphinx(source, tmp_path / "out", cwd=tmp_path)
  if message is None:
    assert result.returncode == 0, result.stderr[-3000:]
  else:
    assert result.returncode != 0, f"the build passed despite {defect}"
    assert message in result.stderr, result.stderr[-3000:]


# --- the real build ------------------------------------------------------------


def test_docs_build(tmp_path):
  result = _sphinx(DOCS, tmp_path)
  assert result.returncode == 0, (
      "sphinx-build -W failed:\n" + (result.stderr or result.stdout)[-6000:])
  out = tmp_path / "html"
  pages = {p.relative_to(out).as_posix(): p.read_text()
           for p in out.rglob("*.html")}

  # Every public name: an entry on an API page, with its docstring.
  api = {k: v for k, v in pages.items() if k.startswith("api/")}
  for qualname, obj in _public():
    anchor = (f'id="module-{qualname}"' if inspect.ismodule(obj)
              else f'id="{qualname}"')
    where = [k for k, v in api.items() if anchor in v]
    assert len(where) == 1, f"{qualname}: entries on {where}"
    body = api[where[0]].split(anchor, 1)[1]
    body = re.split(r'<dt class="sig[^"]*" id="', body, maxsplit=1)[0]
    assert _summary(obj) in _text(body), (
        f"{qualname}: its docstring is not on {where[0]}")
  # The math is rendered (MathJax), not left as reST.
  assert "\\operatorname{LSE}" in api["api/primitives.html"]
  assert ".. math::" not in "".join(api.values())

  # The notebooks, each with its stored figures.
  notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
  assert notebooks
  for notebook in notebooks:
    page = pages.get(f"notebooks/{notebook.stem}.html")
    assert page is not None, f"{notebook.name} has no page"
    cells = json.loads(notebook.read_text())["cells"]
    figures = sum("image/png" in output.get("data", {})
                  for cell in cells for output in cell.get("outputs", []))
    assert page.count("<img") >= figures, notebook.name
    assert notebook.stem in pages["notebooks.html"]

  # The newest CPU results: their table and plot.
  newest = jxent_docs.results_folders(ROOT / "bench" / "results")["cpu"][-1]
  bench = pages["benchmarks.html"]
  assert _text(f"bench/results/{newest.name}/") in _text(bench)
  table = (newest / "table.md").read_text().splitlines()
  first_row = table[next(i for i, line in enumerate(table)
                         if line.startswith("|---")) + 1]
  assert _text(first_row.replace("|", "")) in _text(bench), first_row
  images = re.findall(r'<img[^>]*src="([^"]+)"', bench)
  assert images and all((out / src).exists() for src in images)

  # The changelog, included whole.
  changelog = (ROOT / "CHANGELOG.md").read_text()
  for heading in re.findall(r"^## (.+)$", changelog, flags=re.M):
    assert _text(heading.replace("[", "").replace("]", "")) in _text(
        pages["changelog.html"]), heading
