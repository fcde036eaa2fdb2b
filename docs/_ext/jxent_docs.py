"""Sphinx extension for jxent's documentation.

It keeps the API pages in step with the package, so that no list of names
can go stale:

* ``.. jxent-api:: FAMILY`` renders every public name (``__all__`` of the
  modules in ``jxent_api_modules``) that ``jxent_api_rules`` assigns to
  FAMILY: a summary table, then each entry from its docstring. A public
  name without a docstring is a warning (an error under ``-W``).
* After reading, every public name must have been rendered exactly once.
* ``jxent-auto``, the default role: `jxent.name` (or a bare public name)
  becomes a cross-reference, checked under ``nitpicky``; anything else
  (`p`, `where`, `x @ w`) is code.
* Signatures are written as in the source (``jax.typing.ArrayLike``, with
  the package's own aliases such as ``Axis`` spelled out), not as the long
  unions that the evaluated annotations expand to.
* ``jxent-bench``, a directive for Markdown (MyST) pages, renders the
  newest committed benchmark results.
"""

import ast
import fnmatch
import functools
import importlib
import inspect
import pathlib
import re
import types
import typing

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)


# --- the public names and their pages ---------------------------------------


def public_names(modname: str) -> list[tuple[str, object]]:
  """`(qualified name, object)` for each name in the module's `__all__`."""
  module = importlib.import_module(modname)
  return [(f"{modname}.{name}", getattr(module, name))
          for name in module.__all__]


def family_of(qualname: str, obj: object, rules) -> str | None:
  """The first rule's family that matches, or None.

  A rule is `(family, public module, defining module, name)`, the last
  three as `fnmatch` patterns; the defining module is `obj.__module__` (the
  module's own name for a module).
  """
  public_module, _, name = qualname.rpartition(".")
  defining = (obj.__name__ if inspect.ismodule(obj)
              else getattr(obj, "__module__", None)) or ""
  for family, module_pat, defining_pat, name_pat in rules:
    if (fnmatch.fnmatchcase(public_module, module_pat)
        and fnmatch.fnmatchcase(defining, defining_pat)
        and fnmatch.fnmatchcase(name, name_pat)):
      return family
  return None


def _all_public(config) -> dict[str, object]:
  return {qualname: obj for modname in config.jxent_api_modules
          for qualname, obj in public_names(modname)}


def _auto_directive(obj: object) -> str:
  if inspect.ismodule(obj):
    return "automodule"
  if inspect.isclass(obj):
    return "autoclass"
  if callable(obj):
    return "autofunction"
  return "autodata"


class ApiDirective(SphinxDirective):
  """``.. jxent-api:: FAMILY``: the public names of one family, documented."""

  required_arguments = 1
  has_content = False

  def run(self) -> list[nodes.Node]:
    family = self.arguments[0]
    config = self.config
    known = {rule[0] for rule in config.jxent_api_rules}
    if family not in known:
      raise self.error(f"unknown API family {family!r}; the families of "
                       f"jxent_api_rules are {sorted(known)}")
    members = [(qualname, obj)
               for qualname, obj in _all_public(config).items()
               if family_of(qualname, obj, config.jxent_api_rules) == family]
    if not members:
      logger.warning("API family %r has no public names", family,
                     location=(self.env.docname, self.lineno))
    documented = _documented(self.env)
    lines: list[str] = []
    modules = [(q, o) for q, o in members if inspect.ismodule(o)]
    others = [(q, o) for q, o in members if not inspect.ismodule(o)]
    for qualname, _ in modules:  # a namespace first: its entries follow
      lines += [f".. automodule:: {qualname}", "   :no-members:", ""]
    by_module: dict[str, list[tuple[str, object]]] = {}
    for qualname, obj in others:
      by_module.setdefault(qualname.rpartition(".")[0], []).append(
          (qualname, obj))
    for modname, entries in by_module.items():
      lines += [f".. currentmodule:: {modname}", "",
                ".. autosummary::", "   :nosignatures:", ""]
      lines += [f"   {q.rpartition('.')[2]}" for q, _ in entries]
      lines.append("")
      for qualname, obj in entries:
        lines += [f".. {_auto_directive(obj)}:: {qualname.rpartition('.')[2]}",
                  ""]
    for qualname, obj in members:
      if not (inspect.getdoc(obj) or "").strip():
        logger.warning("%s is public but has no docstring", qualname,
                       location=(self.env.docname, self.lineno))
      documented.setdefault(qualname, []).append(self.env.docname)
    self.env.note_dependency(__file__)
    node = nodes.container()
    self.state.nested_parse(StringList(lines, source=self.env.docname),
                            self.content_offset, node)
    return node.children


def _documented(env) -> dict[str, list[str]]:
  if not hasattr(env, "jxent_api_documented"):
    env.jxent_api_documented = {}
  return env.jxent_api_documented


def _purge(app, env, docname):
  for pages in _documented(env).values():
    while docname in pages:
      pages.remove(docname)


def _merge(app, env, docnames, other):
  for qualname, pages in _documented(other).items():
    _documented(env).setdefault(qualname, []).extend(pages)


def _check_coverage(app, env):
  """Every public name has a rule, and is on exactly one page."""
  config = app.config
  documented = _documented(env)
  for qualname, obj in _all_public(config).items():
    family = family_of(qualname, obj, config.jxent_api_rules)
    pages = documented.get(qualname, [])
    if family is None:
      logger.warning("%s is public but no rule of jxent_api_rules "
                     "(docs/conf.py) gives it an API page", qualname)
    elif not pages:
      logger.warning("%s is public but on no API page: no page has "
                     "'.. jxent-api:: %s'", qualname, family)
    elif len(pages) > 1:
      logger.warning("%s is documented on several pages: %s", qualname,
                     ", ".join(sorted(pages)))


# --- the default role ---------------------------------------------------------

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _is_reference(target: str, config) -> bool:
  """Whether `target` names the package's public API (else: code)."""
  if not _DOTTED.fullmatch(target):
    return False
  packages = {m.split(".")[0] for m in config.jxent_api_modules}
  parts = target.split(".")
  if parts[0] in packages:
    return not any(part.startswith("_") for part in parts)
  return len(parts) == 1 and target in _short_names(
      tuple(config.jxent_api_modules))


@functools.cache
def _short_names(modnames: tuple[str, ...]) -> frozenset[str]:
  return frozenset(q.rpartition(".")[2] for m in modnames
                   for q, _ in public_names(m))


def auto_role(name, rawtext, text, lineno, inliner, options=None,
              content=()):
  """`jxent.x` and bare public names link (checked); the rest is code."""
  env = inliner.document.settings.env
  target = text.strip()
  if _is_reference(target, env.config):
    py_obj = env.get_domain("py").role("obj")
    return py_obj("py:obj", rawtext, text, lineno, inliner, options or {},
                  content)
  return [nodes.literal(rawtext, target)], []


# --- signatures as written -----------------------------------------------------


def _is_alias(value: object) -> bool:
  """Whether a module global is a type alias (not a class or a type variable)."""
  if inspect.isclass(value) or isinstance(
      value, typing.TypeVar | typing.ParamSpec | typing.TypeVarTuple):
    return False
  return (isinstance(value, types.UnionType)
          or type(value).__module__ == "typing")


@functools.cache
def _module_aliases(modname: str) -> dict[str, tuple[str, ast.expr | None]]:
  """The module's type aliases: `name = <type>`, or imported from a module.

  Maps each name to `(module, expression)` for an assignment, and to
  `(module it was imported from, None)` for `from module import name`.
  """
  module = importlib.import_module(modname)
  aliases: dict[str, tuple[str, ast.expr | None]] = {}
  for stmt in ast.parse(inspect.getsource(module)).body:
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name)
        and _is_alias(getattr(module, stmt.targets[0].id, None))):
      aliases[stmt.targets[0].id] = (modname, stmt.value)
    elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
      for alias in stmt.names:
        name = alias.asname or alias.name
        if _is_alias(getattr(module, name, None)):
          aliases[name] = (stmt.module, None)
  return aliases


def _alias_expression(modname: str, name: str) -> tuple[str, ast.expr] | None:
  """Where the alias `name` of module `modname` is defined, and as what."""
  for _ in range(10):  # follow re-imports, a few deep
    found = _module_aliases(modname).get(name)
    if found is None:
      return None
    modname, expr = found
    if expr is not None:
      return modname, expr
  return None


class _ExpandAliases(ast.NodeTransformer):
  """Spells out the package's own type aliases (`Axis`, `_checks.Reduction`)."""

  def __init__(self, modname: str):
    self.modname = modname

  def _expand(self, modname: str, name: str, node: ast.expr) -> ast.expr:
    found = _alias_expression(modname, name)
    if found is None:
      return node
    return _ExpandAliases(found[0]).visit(_copy(found[1]))

  def visit_Name(self, node: ast.Name) -> ast.expr:
    return self._expand(self.modname, node.id, node)

  def visit_Attribute(self, node: ast.Attribute) -> ast.expr:
    module = importlib.import_module(self.modname)
    if isinstance(node.value, ast.Name):
      base = getattr(module, node.value.id, None)
      if inspect.ismodule(base):
        return self._expand(base.__name__, node.attr, node)
    return node


def _copy(expr: ast.expr) -> ast.expr:
  return ast.parse(ast.unparse(expr), mode="eval").body


def source_signature(obj) -> tuple[str, str | None] | None:
  """`(arguments, return annotation)` of a function, as its source has them."""
  try:
    source = inspect.getsource(obj)
  except (OSError, TypeError):
    return None
  tree = ast.parse(inspect.cleandoc("\n" + source) if source[:1].isspace()
                   else source)
  fn = tree.body[0]
  if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
    return None
  expand = _ExpandAliases(obj.__module__)
  for arg in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs,
              fn.args.vararg, fn.args.kwarg]:
    if arg is not None and arg.annotation is not None:
      arg.annotation = expand.visit(arg.annotation)
  returns = expand.visit(fn.returns) if fn.returns is not None else None
  return (f"({ast.unparse(fn.args)})",
          None if returns is None else ast.unparse(returns))


def _process_signature(app, what, name, obj, options, signature,
                       return_annotation):
  if what != "function" or not inspect.isfunction(obj):
    return None
  return source_signature(obj)  # None keeps autodoc's own


# --- benchmark results -------------------------------------------------------------


def _demote_headings(text: str, levels: int) -> str:
  """Adds `levels` to every Markdown ATX heading outside code fences."""
  out, fenced = [], False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
    if not fenced and re.match(r"#{1,6} ", line):
      line = "#" * levels + line
    out.append(line)
  return "\n".join(out)


def results_folders(results: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  """Committed result folders with a `table.md`, by device, oldest first.

  A folder is `<device>-<YYYY-MM-DD>` (`cpu-2026-11-27`,
  `nvidia-h100-80gb-hbm3-2026-12-01`); the name sorts by date.
  """
  found: dict[str, list[pathlib.Path]] = {}
  for table in sorted(results.glob("*/table.md")):
    folder = table.parent
    match = re.fullmatch(r"(.+?)-(\d{4}-\d{2}-\d{2}.*)", folder.name)
    device = match.group(1) if match else folder.name
    found.setdefault(device, []).append(folder)
  for folders in found.values():
    folders.sort(key=lambda f: f.name)
  return found


class BenchDirective(SphinxDirective):
  """```{jxent-bench} cpu|gpu```: the newest results of a device kind.

  For a Markdown (MyST) page: it writes Markdown, as the tables are.

  `cpu` renders the newest `cpu-*` folder, `gpu` the newest folder of each
  other device. A folder is rendered as its `table.md` under a heading of
  level `:level:` (its own title), with its plot (`bench.png`) after the
  title, then each subfolder's `table.md` (and plot) one level below. The
  tables' own headings are demoted to fit.
  """

  required_arguments = 1
  option_spec = {"level": directives.positive_int}

  def run(self) -> list[nodes.Node]:
    kind = self.arguments[0]
    results = (pathlib.Path(self.env.srcdir)
               / self.config.jxent_bench_results).resolve()
    self.env.note_dependency(str(results))
    folders = results_folders(results)
    if kind == "cpu":
      chosen = [folders["cpu"][-1]] if folders.get("cpu") else []
    elif kind == "gpu":
      chosen = [f[-1] for device, f in sorted(folders.items())
                if device != "cpu"]
    else:
      raise self.error(f"unknown kind {kind!r}: cpu or gpu")
    if not chosen:
      text = [f"No {kind.upper()} results are committed yet."]
    else:
      level = self.options.get("level", 2)
      text = []
      for folder in chosen:
        text += self._folder(results, folder, level, None)
        for sub in sorted(folder.glob("*/table.md")):
          text += self._folder(results, sub.parent, level + 1,
                               f"{sub.parent.name}/")
    node = nodes.container()
    self.state.nested_parse(StringList("\n".join(text).splitlines(),
                                       source=self.env.docname),
                            self.content_offset, node, match_titles=True)
    return node.children

  def _folder(self, results, folder, level, label) -> list[str]:
    """A folder's table as Markdown: title, where it is, plot, the rest."""
    table = folder / "table.md"
    self.env.note_dependency(str(table))
    title, _, rest = table.read_text().partition("\n")
    if not title.startswith("# "):
      title, rest = "# Results", f"{title}\n{rest}"
    title = title[2:].strip()
    if label:
      title = f"{label}: {title}"
    # As the repository names it: results is <root>/bench/results.
    rel = folder.relative_to(results.parent.parent).as_posix()
    text = [f"{'#' * level} {title}", "", f"From `{rel}/` in the repository.",
            ""]
    if (folder / "bench.png").exists():
      image = "/" + pathlib.Path(self.config.jxent_bench_results,
                                 folder.relative_to(results),
                                 "bench.png").as_posix()
      text += [f"```{{image}} {image}", f":alt: The plot of {rel}/",
               "```", ""]
    return text + [_demote_headings(rest, level - 1), ""]


def setup(app):
  app.add_config_value("jxent_api_modules", [], "env", list)
  app.add_config_value("jxent_api_rules", [], "env", list)
  app.add_config_value("jxent_bench_results", "../bench/results", "env", str)
  app.add_directive("jxent-api", ApiDirective)
  app.add_directive("jxent-bench", BenchDirective)
  app.add_role("jxent-auto", auto_role)
  app.connect("autodoc-process-signature", _process_signature)
  app.connect("env-purge-doc", _purge)
  app.connect("env-merge-info", _merge)
  app.connect("env-check-consistency", _check_coverage)
  return {"version": "1", "parallel_read_safe": True,
          "parallel_write_safe": True}

