"""Turning NaN-on-bad-input into errors, with jax.experimental.checkify."""

import functools
import logging
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import jax
from jax.experimental import checkify

from jxent._numerics import checks as _checks

P = ParamSpec("P")
R = TypeVar("R")


def _throw(error: checkify.Error) -> None:
  error.throw()


class _QuietThrow(logging.Filter):
  """Drops JAX's log of an error that `_throw` raised inside a callback.

  JAX logs the traceback of any exception raised in a `jax.debug.callback`
  (about 40 lines on stderr), then raises it again from the compiled
  function. The error `_throw` raises is `checked`'s whole purpose, and its
  message reaches the caller in the `JaxRuntimeError`: logged too, a caught
  error would still print. Other callbacks' failures are logged as before.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
      if tb.tb_frame.f_code is _throw.__code__:
        return False
      tb = tb.tb_next
    return True


# `jax.debug.callback` logs a failed callback to the logger of its module.
_CALLBACK_LOGGER = logging.getLogger(jax.debug.callback.__module__)
_QUIET_THROW = _QuietThrow()


def _holds_nnx_objects(tree) -> bool:
  """Whether `tree` holds Flax NNX modules (without importing Flax)."""
  nnx = sys.modules.get("flax.nnx")
  if nnx is None:
    return False
  return any(nnx.graph.is_graph_node(leaf) for leaf in jax.tree_util.tree_leaves(
      tree, is_leaf=nnx.graph.is_graph_node))


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
  bad labels; nothing is printed, so a caught error is silent.

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
  _CALLBACK_LOGGER.addFilter(_QUIET_THROW)  # Once: a filter is added once.
  checkified = checkify.checkify(fn)

  @functools.wraps(fn)
  def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
    if _holds_nnx_objects((args, kwargs)):
      # The adapter imports Flax, which is loaded already: it was met here.
      from jxent._debug import nnx
      error, out = nnx.checkify_nnx(fn, args, kwargs)
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
