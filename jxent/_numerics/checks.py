"""Argument validation shared by every jxent function.

The checks on shapes, dtypes and static Python options run at trace time, so
a bad call fails with a clear message before any computation. Checks on
values that are only known at run time (labels, traced options) are declared
with `checkify.debug_check`: free unless the caller is transformed by
`jxent.checked`, which turns them into errors.
"""

import math
import operator
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Reduction = Literal["none", "sum", "mean"]
_REDUCTIONS = ("none", "sum", "mean")

# Whether to declare run-time value checks (`checkify.debug_check`). A check
# in a jitted function costs about 0.1 ms per call, even when nothing
# checkifies it: it takes JAX off its fast C++ dispatch path. So checks are
# declared only once `jxent.checked` has been used (see `enable_checks`).
_declare_checks = False


def enable_checks() -> None:
  """Declares value checks in every trace from now on, for this process.

  Functions traced before have none, so JAX's caches are cleared once.
  """
  global _declare_checks
  if not _declare_checks:
    _declare_checks = True
    jax.clear_caches()


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


def as_labels(name: str, labels) -> jax.Array:
  """Integer labels (or indices) as a JAX array, no value wrapped around.

  Without x64, `jnp.asarray` converts a NumPy int64 (or uint32, uint64)
  array to int32, and 2**32 + 3 would become class 3 before its range is
  checked. A concrete array whose dtype JAX narrows is therefore clipped to
  the narrower range first: a value outside it stays outside every class
  range (and equals no `ignore_index` within it).

  Raises:
    TypeError: If the labels are not integers.
  """
  if isinstance(labels, jax.Array):
    check_integer(name, labels)
    return labels
  host = np.asarray(labels)
  check_integer(name, host)
  narrow = jax.dtypes.canonicalize_dtype(host.dtype)
  if narrow != host.dtype and host.size:
    info = np.iinfo(narrow)
    host = np.clip(host, info.min, info.max)
  return jnp.asarray(host, narrow)


def check_integer(name: str, x: jax.Array | np.ndarray) -> None:
  """Raises a TypeError unless `x` has an integer dtype."""
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(
        f"`{name}` must have an integer dtype (class indices), got {x.dtype}."
        " Use `softmax_cross_entropy` for probability (soft) labels."
    )


def as_floating(name: str, x, dtype=None) -> jax.Array:
  """Returns `x` as a floating array; integer or bool arrays are converted.

  optax accepts one-hot integer labels and 0/1 integer targets; so does
  jxent. They become `dtype` (float32 by default), and a complex or other
  non-numeric input is refused.
  """
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
    return x.astype(jnp.float32 if dtype is None else dtype)
  check_floating(name, x)
  return x


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


class Labels(NamedTuple):
  """Integer labels, sorted into what each row's label means.

  Attributes:
    class_index: The class index as int32, 0 where the label is out of range. It
      is never a wrapped-around class: the range was checked in the labels'
      own dtype before the conversion.
    counts: The label is a class in [0, num_classes) and not `ignore_index`.
    legal: The label is a class, or `ignore_index`. An illegal row's loss
      and gradient are NaN.
  """

  class_index: jax.Array
  counts: jax.Array
  legal: jax.Array


def _compare_in_dtype(labels: jax.Array, value: int, op) -> jax.Array:
  """`op(labels, value)` exactly, in the labels' own integer dtype.

  A value outside the dtype's range cannot be converted to it, so the
  answer is decided from the range instead: every label is below a bound
  above the dtype's maximum, and none equals it.
  """
  info = jnp.iinfo(labels.dtype)
  if info.min <= value <= info.max:
    return op(labels, jnp.asarray(value, labels.dtype))
  above = value > info.max
  if op is operator.lt:
    return jnp.full(labels.shape, above)
  if op is operator.ge:
    return jnp.full(labels.shape, not above)
  if op is operator.eq:
    return jnp.zeros(labels.shape, bool)
  raise NotImplementedError(op)


def sort_labels(labels: jax.Array, num_classes: int,
                ignore_index: int | None,
                excluded: jax.Array | None = None) -> Labels:
  """Checks integer labels and sorts them into counting, ignored, illegal.

  Every comparison happens in the labels' own dtype, before any conversion:
  with x64 enabled, `2**32 + 3` is out of range, not class 3, and
  `2**32 - 100` is not `ignore_index=-100`. Narrow dtypes are safe too:
  uint8 labels never wrap when compared with 300 classes.

  `excluded` marks rows (tokens) that `where` excludes whole: their label
  is never looked at, so it is neither counted nor illegal (and
  `jxent.checked` does not flag it).
  """
  check_integer("labels", labels)
  in_range = _compare_in_dtype(labels, 0, operator.ge) & _compare_in_dtype(
      labels, num_classes, operator.lt)
  legal = in_range
  counts = in_range
  if ignore_index is not None:
    ignored = _compare_in_dtype(labels, ignore_index, operator.eq)
    legal = legal | ignored
    counts = counts & ~ignored
  if excluded is not None:
    legal = legal | excluded
    counts = counts & ~excluded
  # Only in-range values are converted, so int32 holds them exactly (no
  # class axis is near 2**31 long).
  index = jnp.where(in_range, labels, jnp.zeros((), labels.dtype))
  declare_labels_in_range(labels, legal, num_classes, ignore_index)
  return Labels(index.astype(jnp.int32), counts, legal)


def declare_labels_in_range(labels: jax.Array, legal: jax.Array,
                            num_classes: int,
                            ignore_index: int | None) -> None:
  """Declares that every label is legal, for `jxent.checked` to enforce.

  The check is a `jax.experimental.checkify.debug_check`: it does nothing
  unless the caller is transformed by `checkify.checkify` (for instance by
  `jxent.checked`), in which case a bad label becomes an error.
  """
  if labels.size == 0 or not _declare_checks:
    return  # Nothing to check (min/max of nothing is undefined), or off.
  checkify.debug_check(
      jnp.all(legal),
      f"labels must lie in [0, {num_classes})"
      + ("" if ignore_index is None else f" or equal {ignore_index}")
      + "; the smallest is {lo} and the largest {hi}."
      # PyTorch, Liger and Hugging Face pad labels with -100 and ignore it
      # by default; here it must be asked for.
      + ("" if ignore_index is not None else
         " (Padding labelled -100, as PyTorch and Hugging Face pad, needs"
         " ignore_index=-100.)"),
      lo=jnp.min(labels),
      hi=jnp.max(labels),
  )


def declare_distinct_indices(name: str, distinct: jax.Array) -> None:
  """Declares that each row's indices are distinct, for `jxent.checked`."""
  if distinct.size == 0 or not _declare_checks:
    return
  checkify.debug_check(
      jnp.all(distinct),
      f"`{name}` must be distinct within a token; {{bad}} tokens repeat an"
      " index.", bad=jnp.sum(~distinct))


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


def broadcast_where(where, shape: tuple[int, ...],
                    per_row_axes: tuple[int, ...] | None = None
                    ) -> jax.Array | None:
  """Returns the `where` mask as a boolean array of `shape`, or None.

  Args:
    where: None, or a boolean mask broadcastable to `shape`.
    shape: The shape of the input.
    per_row_axes: The class axes of a loss. A mask with one dimension fewer
      per class axis is then a mask over rows, as in optax (`where` of shape
      [batch] for logits [batch, classes]): it is expanded at the class axes
      before broadcasting.
  """
  if where is None:
    return None
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"`where` must be a boolean mask, got {where.dtype}.")
  if per_row_axes and where.ndim == len(shape) - len(per_row_axes):
    where = jnp.expand_dims(where, per_row_axes)
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


def number_or_scalar(name: str, value, low: float, high: float,
                     *, high_open: bool = False) -> float | jax.Array:
  """Validates a coefficient that may be a Python number or a traced scalar.

  A number known at trace time is checked now, and returned as a float so
  that a 0 can select a specialised computation. A traced scalar (say, a
  schedule's value inside `jit`) cannot be checked at trace time; its range
  is declared with `checkify.debug_check`, for `jxent.checked` to enforce.
  """
  try:
    number = float(value)
  except jax.errors.ConcretizationTypeError:
    number = None  # Traced: checked below, when it is known.
  except TypeError:
    raise TypeError(
        f"`{name}` must be a number or a floating scalar array, got"
        f" {value!r}.") from None
  if number is not None:
    ok = low <= number and (number < high if high_open else number <= high)
    if not ok or math.isnan(number):
      interval = f"[{low}, {high})" if high_open else f"[{low}, {high}]"
      if high == math.inf:
        interval = f">= {low} and finite"
      raise ValueError(f"`{name}` must be {interval}, got {value!r}.")
    return number
  value = jnp.asarray(value)
  if value.shape != () or not jnp.issubdtype(value.dtype, jnp.floating):
    raise TypeError(
        f"`{name}` must be a number or a floating scalar array, got an array"
        f" of shape {value.shape} and dtype {value.dtype}."
    )
  if _declare_checks:
    checkify.debug_check(
        (value >= low) & (value < high if high_open else value <= high),
        f"`{name}` must lie in [{low}, {high}], got {{value}}.", value=value)
  return value


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


def check_label_smoothing(label_smoothing) -> float | jax.Array:
  """Validates label smoothing: a number in [0, 1], or a traced scalar."""
  return number_or_scalar("label_smoothing", label_smoothing, 0.0, 1.0)


def check_z_loss(z_loss) -> float | jax.Array:
  """Validates the z-loss weight: a finite number >= 0, or a traced scalar."""
  return number_or_scalar("z_loss", z_loss, 0.0, math.inf, high_open=True)


# The most classes whose argmax leaves a custom VJP exactly (as a float32).
ARGMAX_LIMIT = 2**24


def check_argmax_classes(return_argmax: bool, num_classes: int) -> None:
  """Refuses an argmax over more classes than a float32 counts exactly."""
  if return_argmax and num_classes > ARGMAX_LIMIT:
    raise ValueError(
        f"`return_argmax` needs at most {ARGMAX_LIMIT} classes (2**24,"
        f" where float32 counts exactly), got {num_classes}.")


def check_softcap(logit_softcap) -> float | None:
  """Validates a logit soft cap: None, or a finite number > 0.

  An infinite cap would mean no cap; it is refused rather than guessed, as
  `c * tanh(z / c)` at `c = inf` is `inf * 0`.
  """
  if logit_softcap is None:
    return None
  cap = static_number("logit_softcap", logit_softcap)
  if not (cap > 0 and math.isfinite(cap)):
    raise ValueError(
        f"`logit_softcap` must be a finite number > 0, or None for no cap,"
        f" got {logit_softcap!r}."
    )
  return cap


def check_temperature(temperature) -> float:
  """Validates a softmax temperature: a finite number > 0, known now."""
  try:
    value = static_number("temperature", temperature)
  except TypeError as error:
    raise TypeError(
        f"{error} The temperature is static (a schedule recompiles per"
        " value); without a soft cap, a traced temperature T is the same"
        " head as x / T (and bias / T) at temperature 1.") from None
  if not (value > 0 and math.isfinite(value)):
    raise ValueError(
        f"`temperature` must be a finite number > 0, got {temperature!r}.")
  return value


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


def check_reduction(reduction) -> Reduction:
  """Validates `reduction`: one of "none", "sum" and "mean"."""
  if reduction not in _REDUCTIONS:
    raise ValueError(
        f"`reduction` must be one of {_REDUCTIONS}, got {reduction!r}."
    )
  return reduction


def canonical_axes(axis, ndim: int) -> tuple[int, ...]:
  """Normalises None (every axis), an int or ints to non-negative axes."""
  if axis is None:
    if ndim == 0:
      raise ValueError("`axis=None` needs an input with at least one axis.")
    return tuple(range(ndim))
  axes = (axis,) if not isinstance(axis, Sequence) else tuple(axis)
  if not axes:
    raise ValueError("`axis` must name at least one axis.")
  out = []
  for a in axes:
    try:
      a = operator.index(a)
    except TypeError:
      raise TypeError(
          f"`axis` must be an int, a tuple of ints or None, got {axis!r}."
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
