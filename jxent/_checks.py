"""Argument validation shared by every jxent function.

Every check here runs at trace time, on shapes, dtypes and static Python
options, so a bad call fails with a clear message before any computation.
"""

import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp

_REDUCTIONS = ("none", "sum", "mean")


def check_floating(name: str, x: jax.Array) -> None:
  """Raises a TypeError unless `x` has a floating dtype."""
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must have a floating dtype, got {x.dtype}."
        + (
            " Use `softmax_cross_entropy_with_integer_labels` for integer"
            " class labels."
            if name == "labels"
            else ""
        )
    )


def check_ignore_index(ignore_index) -> int | None:
  """Validates `ignore_index`: None or a Python integer."""
  if ignore_index is None:
    return None
  try:
    return operator.index(ignore_index)
  except TypeError:
    raise TypeError(
        f"`ignore_index` must be an integer or None, got {ignore_index!r}."
    ) from None


def integer_labels(labels: jax.Array) -> jax.Array:
  """Checks integer labels and converts them to int32.

  Narrow types would wrap when compared with class indices (uint8 labels
  against 300 classes), -100 style ignore values need a signed type, and
  one type for labels and class indices keeps strict dtype promotion happy
  under x64 too. No class axis is near 2**31 long.
  """
  check_integer("labels", labels)
  return labels.astype(jnp.int32)


def check_integer(name: str, x: jax.Array) -> None:
  """Raises a TypeError unless `x` has an integer dtype."""
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(
        f"`{name}` must have an integer dtype (class indices), got {x.dtype}."
        " Use `softmax_cross_entropy` for probability (soft) labels."
    )


def check_same_shape(
    name_a: str, a: jax.Array, name_b: str, b: jax.Array
) -> None:
  """Raises a ValueError naming both shapes unless they are equal."""
  if a.shape != b.shape:
    raise ValueError(
        f"`{name_a}` and `{name_b}` must have the same shape, got"
        f" {name_a}.shape={a.shape} and {name_b}.shape={b.shape}."
    )


def broadcast_shapes(
    name_a: str, a: jax.Array, name_b: str, b: jax.Array
) -> tuple[int, ...]:
  """Returns the broadcast shape, or raises a ValueError naming both."""
  try:
    return jnp.broadcast_shapes(a.shape, b.shape)
  except ValueError:
    raise ValueError(
        f"`{name_a}` and `{name_b}` have incompatible shapes"
        f" {name_a}.shape={a.shape} and {name_b}.shape={b.shape}."
    ) from None


def broadcast_where(where, shape: tuple[int, ...]) -> jax.Array | None:
  """Returns the `where` mask as a boolean array of `shape`, or None."""
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"`where` must be a boolean mask, got {where.dtype}.")
  try:
    return jnp.broadcast_to(where, shape)
  except ValueError:
    raise ValueError(
        f"`where` of shape {where.shape} does not broadcast to the input"
        f" shape {shape}."
    ) from None


def static_number(name: str, value) -> float:
  """Returns `value` as a Python float; it must be known at trace time."""
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    raise TypeError(
        f"`{name}` must be a Python number known at trace time, got"
        f" {value!r}."
    ) from None


def check_base(base) -> float | None:
  """Validates a logarithm base and returns log(base), or None for nats."""
  if base is None:
    return None
  value = static_number("base", base)
  if not value > 0 or value == 1 or not math.isfinite(value):
    raise ValueError(
        f"`base` must be a positive number other than 1, got {base!r}."
    )
  return math.log(value)


def check_label_smoothing(label_smoothing) -> float:
  value = static_number("label_smoothing", label_smoothing)
  if not 0.0 <= value <= 1.0:
    raise ValueError(
        f"`label_smoothing` must be in [0, 1], got {label_smoothing!r}."
    )
  return value


def check_z_loss(z_loss) -> float:
  value = static_number("z_loss", z_loss)
  if not (value >= 0.0 and math.isfinite(value)):
    raise ValueError(f"`z_loss` must be a finite number >= 0, got {z_loss!r}.")
  return value


def check_softcap(logit_softcap) -> float | None:
  """Validates a logit soft cap: None, or a number > 0."""
  if logit_softcap is None:
    return None
  cap = static_number("logit_softcap", logit_softcap)
  if not cap > 0:
    raise ValueError(f"`logit_softcap` must be > 0, got {logit_softcap!r}.")
  return cap


def per_class(name: str, x, num_classes: int) -> jax.Array:
  """Checks a floating vector with one entry per class; returns it."""
  x = jnp.asarray(x)
  check_floating(name, x)
  if x.shape != (num_classes,):
    raise ValueError(
        f"`{name}` must have shape ({num_classes},), one entry per class,"
        f" got {name}.shape={x.shape}."
    )
  return x


def check_reduction(reduction) -> str:
  if reduction not in _REDUCTIONS:
    raise ValueError(
        f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}."
    )
  return reduction


def canonical_axes(axis, ndim: int) -> tuple[int, ...]:
  """Normalises an int or a sequence of ints to non-negative axes."""
  axes = (axis,) if not isinstance(axis, Sequence) else tuple(axis)
  if not axes:
    raise ValueError("`axis` must name at least one axis.")
  out = []
  for a in axes:
    try:
      a = operator.index(a)
    except TypeError:
      raise TypeError(
          f"`axis` must be an int or a tuple of ints, got {axis!r}."
      ) from None
    if not -ndim <= a < ndim:
      raise ValueError(
          f"`axis` {a} is out of range for an input of rank {ndim}."
      )
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"`axis` has repeated entries: {axis!r}.")
  return tuple(out)


def compute_dtype(*dtypes) -> jnp.dtype:
  """The dtype computations run in: float64 if any input is, else float32.

  Written out rather than left to `jnp.promote_types`, so that it holds under
  `jax_numpy_dtype_promotion="strict"` too.
  """
  if any(jnp.dtype(d) == jnp.float64 for d in dtypes):
    return jnp.dtype(jnp.float64)
  return jnp.dtype(jnp.float32)
