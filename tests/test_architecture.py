"""The package's shape: its import graph, what `import jxent` loads, and
that every public function lowers for every platform's XLA path.

Regression (issue 18): `_rows` imported the kernels and the kernels
imported `_rows`; `_debug` held Flax code in the core.
"""

import ast
import inspect
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jxent

PACKAGE = pathlib.Path(jxent.__file__).parent


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PACKAGE.rglob("*.py")
          if "demo" not in p.relative_to(PACKAGE).parts}


def _imports(path: pathlib.Path, name: str, modules) -> set[str]:
  """The jxent modules `path` imports, at the top or inside functions."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split("."))
                                           - node.level + 1] + [base])
      # `from package import module` imports the module.
      targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                 else base for alias in node.names]
    else:
      continue
    found |= {t for t in targets if t in modules and t != name}
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(path, name, modules)
          for name, path in modules.items()}


def _cycle(graph) -> list[str] | None:
  """A cycle of the graph, or None. Packages' re-exports are edges too."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == 1:
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = 2
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_import_graph_has_no_cycle():
  graph = _graph()
  assert "jxent._cross_entropy.rows" in graph
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_can_fail():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_references_never_import_their_kernels():
  # A kernel imports its reference; the reference never the kernel.
  graph = _graph()
  kernels = {m for m in graph if ".triton" in m}
  assert kernels
  for module, imported in graph.items():
    if module in kernels or module.endswith(".api"):
      continue
    assert not imported & kernels, (module, imported & kernels)


def test_only_the_nnx_adapter_imports_flax():
  for name, path in _modules().items():
    text = path.read_text()
    holds_flax = "from flax" in text or "import flax" in text
    assert holds_flax == (name == "jxent._debug.nnx"), name


def test_import_jxent_loads_neither_flax_nor_pallas():
  code = ("import sys, jxent; print(sorted(m for m in sys.modules"
          " if m.split('.')[0] == 'flax' or 'pallas' in m))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout.strip()
  assert out == "[]"


# --- every public function lowers for a TPU (the XLA path) -------------------

X = jax.ShapeDtypeStruct((4, 16), jnp.float32)
P = jax.ShapeDtypeStruct((4, 16), jnp.float32)
LABELS = jax.ShapeDtypeStruct((4,), jnp.int32)
H = jax.ShapeDtypeStruct((4, 8), jnp.bfloat16)
W = jax.ShapeDtypeStruct((8, 16), jnp.bfloat16)
TOP_K = (jax.ShapeDtypeStruct((4, 3), jnp.int32),
         jax.ShapeDtypeStruct((4, 3), jnp.float32))

# Each public function with arguments, and whether to differentiate it.
CALLS = {
    "information": (lambda p: jxent.information(p), (P,)),
    "entropy": (lambda p: jxent.entropy(p), (P,)),
    "cross_entropy": (lambda p, q: jxent.cross_entropy(p, q), (P, P)),
    "kl_divergence": (lambda p, q: jxent.kl_divergence(p, q), (P, P)),
    "js_divergence": (lambda p, q: jxent.js_divergence(p, q), (P, P)),
    "entropy_from_logits": (lambda x: jxent.entropy_from_logits(x), (X,)),
    "cross_entropy_from_logits": (
        lambda x, y: jxent.cross_entropy_from_logits(x, y), (X, X)),
    "kl_divergence_from_logits": (
        lambda x, y: jxent.kl_divergence_from_logits(x, y), (X, X)),
    "logsumexp": (lambda x: jxent.logsumexp(x), (X,)),
    "log_softmax": (lambda x: jxent.log_softmax(x), (X,)),
    "softmax": (lambda x: jxent.softmax(x), (X,)),
    "softmax_cross_entropy": (
        lambda x, p: jxent.softmax_cross_entropy(x, p), (X, P)),
    "softmax_cross_entropy_with_integer_labels": (
        lambda x, y: jxent.softmax_cross_entropy_with_integer_labels(x, y),
        (X, LABELS)),
    "sigmoid_binary_cross_entropy": (
        lambda x, p: jxent.sigmoid_binary_cross_entropy(x, p), (X, P)),
    "linear_softmax_cross_entropy": (
        lambda h, w, y: jxent.linear_softmax_cross_entropy(
            h, w, y, block_size=4), (H, W, LABELS)),
    "linear_log_probs": (
        lambda h, w, y: sum(jxent.linear_log_probs(
            h, w, y, return_entropy=True, block_size=4)), (H, W, LABELS)),
    # In the fast mode (token chunks), which the linear heads share.
    "linear_policy_gradient_loss": (
        lambda h, w, y: jxent.linear_policy_gradient_loss(
            h, w, y, jnp.ones(y.shape), entropy_bonus=0.1, mode="fast",
            token_chunk=2), (H, W, LABELS)),
    "linear_kl_divergence": (
        lambda h, w: jxent.linear_kl_divergence(h, w, h, w, block_size=4),
        (H, W)),
    "linear_js_divergence": (
        lambda h, w: jxent.linear_js_divergence(h, w, h, w, block_size=4),
        (H, W)),
    "linear_kl_divergence_from_top_k": (
        lambda i, t, h, w: jxent.linear_kl_divergence_from_top_k(
            i, t, h, w, block_size=4), (*TOP_K, H, W)),
}


def test_every_public_function_is_lowered_for_a_tpu_here():
  public = {name for name in jxent.__all__
            if inspect.isfunction(getattr(jxent, name))} - {"checked"}
  assert public == set(CALLS)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_every_public_function_exports_for_a_tpu(name):
  fn, args = CALLS[name]
  floats = tuple(i for i, a in enumerate(args)
                 if jnp.issubdtype(a.dtype, jnp.floating))

  def loss_and_grad(*args):
    total = lambda *a: jnp.sum(fn(*a).astype(jnp.float32))  # noqa: E731
    return jax.value_and_grad(total, floats)(*args)

  exported = jax.export.export(jax.jit(loss_and_grad),
                               platforms=["tpu"])(*args)
  assert exported.platforms == ("tpu",)
  assert "triton" not in exported.mlir_module()
