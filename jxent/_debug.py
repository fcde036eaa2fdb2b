"""Turning NaN-on-bad-input into errors, with jax.experimental.checkify."""

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax
import numpy as np
from jax.experimental import checkify

from jxent import _checks

P = ParamSpec("P")
R = TypeVar("R")


def _throw(error: checkify.Error) -> None:
  error.throw()


def checked(fn: Callable[P, R]) -> Callable[P, R]:
  """Wraps `fn` so that out-of-range labels raise instead of giving NaN.

  Under `jit`, a loss cannot raise on the values of its inputs, so jxent's
  integer-label losses return NaN for a label outside [0, classes) (never a
  silently wrapped-around class). Once `checked` has been used, they also
  declare the range with `checkify.debug_check`; `checked` transforms `fn`
  with `checkify.checkify` and raises the error it finds.

  The declarations are off until then, because any check in a jitted
  function takes it off JAX's fast dispatch path (about 0.1 ms more per
  call, on a CPU). The first `checked` turns them on for the rest of the
  process and clears JAX's caches once, so that functions jitted before are
  traced again with their checks.

  It composes with JAX's transformations in any order: `checked(jit(f))`,
  `jit(checked(f))`, `grad(checked(f))`, `checked(grad(f))`,
  `value_and_grad`, `vmap`, and Flax NNX's `nnx.jit` and
  `nnx.value_and_grad`. Called eagerly, it raises at once; inside a
  transformation that stages it out (`jit`), the error is raised when the
  compiled function runs, as a `JaxRuntimeError` whose message names the
  bad labels.

  Args:
    fn: Any function that calls jxent losses.

  Returns:
    A function with the same signature and outputs that raises when a label
    is out of range.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import jxent
    >>> loss = jax.jit(jxent.softmax_cross_entropy_with_integer_labels)
    >>> print(loss(jnp.zeros((1, 3)), jnp.array([5])))
    [nan]
    >>> try:
    ...   jxent.checked(loss)(jnp.zeros((1, 3)), jnp.array([5]))
    ... except Exception as err:
    ...   print(str(err).splitlines()[0])
    labels must lie in [0, 3); the smallest is 5 and the largest 5. ...
  """
  _checks.enable_checks()
  checkified = checkify.checkify(fn)

  @functools.wraps(fn)
  def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
    if _holds_nnx_graph_nodes((args, kwargs)):
      error, out = _checkify_nnx(fn, args, kwargs)
    else:
      error, out = checkified(*args, **kwargs)
    if any(isinstance(leaf, jax.core.Tracer)
           for leaf in jax.tree_util.tree_leaves(error)):
      # Staged out (jit, vmap, grad, ...): raise when the program runs.
      jax.debug.callback(_throw, error)
    else:
      error.throw()
    return out

  return wrapper


def _holds_nnx_graph_nodes(tree) -> bool:
  """Whether `tree` holds Flax NNX modules (without importing Flax)."""
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return False
  return any(nnx.graph.is_graph_node(leaf) for leaf in jax.tree_util.tree_leaves(
      tree, is_leaf=nnx.graph.is_graph_node))


def _checkify_nnx(fn, args, kwargs):
  """checkify for a function of Flax NNX modules (say, an `nnx.jit`).

  The modules are split into their graph and state and merged again inside
  a jitted, checkified function, as NNX's own transforms do: an NNX
  transform called on module objects from another trace level refuses to
  run. State the function changes (batch statistics, RNG counts) is written
  back to the caller's modules.
  """
  from flax import nnx  # Imported already: the arguments hold NNX modules.

  leaves, treedef = jax.tree_util.tree_flatten(
      (args, kwargs), is_leaf=nnx.graph.is_graph_node)
  nodes = [i for i, leaf in enumerate(leaves) if nnx.graph.is_graph_node(leaf)]
  arrays = [i for i, leaf in enumerate(leaves)
            if i not in nodes and isinstance(leaf, jax.Array | np.ndarray)]
  static = tuple((i, leaf) for i, leaf in enumerate(leaves)
                 if i not in nodes and i not in arrays)
  graphdef, state = nnx.split([leaves[i] for i in nodes])
  pure = functools.partial(_nnx_pure, fn, graphdef, treedef, tuple(nodes),
                           tuple(arrays), static)
  # checkify of a jit: NNX's transforms run in the jit's trace, where the
  # merged modules live (under checkify's own trace they would not).
  error, (out, new_state) = checkify.checkify(pure)(
      state, [leaves[i] for i in arrays])
  nnx.update([leaves[i] for i in nodes], new_state)
  return error, out


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _nnx_pure(fn, graphdef, treedef, nodes, arrays, static, state, values):
  """`fn` on the merged modules and the other arguments; and the new state."""
  from flax import nnx

  leaves = [None] * treedef.num_leaves
  for i, node in zip(nodes, nnx.merge(graphdef, state), strict=True):
    leaves[i] = node
  for i, value in zip(arrays, values, strict=True):
    leaves[i] = value
  for i, value in static:
    leaves[i] = value
  inner_args, inner_kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
  out = fn(*inner_args, **inner_kwargs)
  return out, nnx.state([leaves[i] for i in nodes])
