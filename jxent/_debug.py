"""Turning NaN-on-bad-input into errors, with jax.experimental.checkify."""

import functools
from collections.abc import Callable

from jax.experimental import checkify


def checked(fn: Callable) -> Callable:
  """Wraps `fn` so that out-of-range labels raise instead of giving NaN.

  Under `jit`, a loss cannot raise on the values of its inputs, so jxent's
  integer-label losses return NaN for a label outside [0, classes) (never a
  silently wrapped-around class). They also declare the range with
  `checkify.debug_check`, which costs nothing unless the function is
  transformed by `checkify.checkify`. `checked` applies that transform and
  raises the error it finds. `fn` may be jitted already, or call jitted code.

  Args:
    fn: Any function that calls jxent losses.

  Returns:
    A function with the same signature and outputs that raises
    `checkify.JaxRuntimeError` when a label is out of range.

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
  checkified = checkify.checkify(fn)

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    err, out = checkified(*args, **kwargs)
    err.throw()
    return out

  return wrapper
