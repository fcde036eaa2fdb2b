"""`jxent.checked` for functions of Flax NNX objects: the only Flax code.

`jxent._debug.checked` imports this module only when it meets an NNX
object among a function's arguments, so Flax is loaded by then, and
`import jxent` never loads it.
"""

import functools

import jax
import numpy as np
from flax import nnx
from jax.experimental import checkify


def checkify_nnx(fn, args, kwargs):
  """checkify for a function of Flax NNX modules (say, an `nnx.jit`).

  The modules are split into their graph and state and merged again inside
  a jitted, checkified function, as NNX's own transforms do: an NNX
  transform called on module objects from another trace level refuses to
  run. State the function changes (batch statistics, RNG counts) is written
  back to the caller's modules.
  """
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
