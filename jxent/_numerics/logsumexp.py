"""The stable primitives every jxent function is built on.

One log-sum-exp lives here. Every other function reaches probabilities and
log-probabilities through it, so the numerics are decided in one place:

* the input is upcast to at least float32 before any arithmetic;
* masked entries become -inf *before* any `exp`;
* the max is shifted out under `stop_gradient`, and replaced by 0 when it is
  infinite, so a row that is entirely -inf gives -inf, not NaN; a NaN max is
  kept, so a NaN anywhere in a row makes the whole row NaN, never 0;
* the sum of exponentials is kept apart from the shift (`log_sumexp` and
  `shift` below), so callers can subtract the shifted logit of one class
  without the cancellation of `lse - x` when logits are huge;
* on accelerators, the sum's excess over 1 keeps its digits near
  certainty (`exp_sum_terms`, `sum_and_excess_of`), so a log-sum-exp of
  1e-10 is not rounded to 0.
"""

import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks


class Normalizer(NamedTuple):
  """A log-sum-exp split into its exact parts.

  Attributes:
    x: The logits in the compute dtype, with masked entries set to -inf.
    shifted: `x - shift`. Shape of the input.
    shift: The per-row max (0 where the row has no finite max), with the
      reduced axes kept as size 1. No gradient flows through it.
    log_sumexp: `log(sum(exp(shifted)))`, reduced axes kept as size 1. It is
      0 for an empty row (every entry -inf); see `nonempty`.
    nonempty: Whether the row has any probability mass at all. A row with a
      NaN is not empty: its sum is NaN, and so is everything made from it.
  """

  x: jax.Array
  shifted: jax.Array
  shift: jax.Array
  log_sumexp: jax.Array
  nonempty: jax.Array

  @property
  def lse(self) -> jax.Array:
    """The log-sum-exp itself, -inf for empty rows (reduced axes kept)."""
    return jnp.where(self.nonempty, self.log_sumexp + self.shift, -jnp.inf)

  @property
  def log_probs(self) -> jax.Array:
    """The log-softmax; -inf for masked entries and for empty rows."""
    return self.shifted - self.log_sumexp


def apply_mask(x: jax.Array, where: jax.Array | None) -> jax.Array:
  """Sets the entries excluded by `where` to -inf, in `x`'s own dtype."""
  if where is None:
    return x
  # Mask before any exp, so masked entries can never overflow or leak NaN.
  return jnp.where(where, x, jnp.array(-jnp.inf, x.dtype))


def shift_of(row_max: jax.Array) -> jax.Array:
  """The shift for rows with this max: the max, or 0 where it is infinite.

  An all -inf row (max -inf) or a row with +inf is shifted by 0, so that
  -inf - max never makes a NaN. A NaN max is kept: the row is NaN anyway,
  and a finite shift would hide it from the row sums. No gradient flows
  through the shift: the results do not depend on it.
  """
  return lax.stop_gradient(jnp.where(jnp.isinf(row_max), 0, row_max))


def is_nonempty(sumexp: jax.Array) -> jax.Array:
  """Whether a row's shifted sum of exponentials has mass: not 0 (NaN is)."""
  return sumexp != 0


def safe_log(sumexp: jax.Array) -> jax.Array:
  """log(sumexp), with a safe 0 for an empty row (sum 0).

  Double where: log of a safe 1 keeps value and gradient finite for an
  empty row (log 0 would give -inf and a 0 * inf = NaN gradient).
  """
  return jnp.log(jnp.where(is_nonempty(sumexp), sumexp, 1))


def split_exp(shifted: jax.Array, e: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """exp(shifted) split into the terms at the shift and the rest.

  Returns `(rest, ties)`, each of `shifted`'s shape: `ties` is 1 where
  `shifted` is 0 (the max), `rest` is exp(shifted) elsewhere. Summed over a
  row they give the sum and its excess over 1 (`sum_and_excess`). `rest`
  carries every term's derivative, the ties' included (e - tie is 0 at a
  tie, with e's derivative), so its sum differentiates like the whole sum;
  `ties` is a count, with no derivative. `e`, if given, is exp(shifted).
  """
  if e is None:
    e = jnp.exp(shifted)
  # 1 at the shift, 0 below it (shifted <= -1e-30 is every float32 gap
  # that matters), in arithmetic rather than a select, which XLA's CPU
  # backend fuses less well; no derivative. Clipped at 0 too: logits
  # recomputed in another fusion (say, divided by a temperature) may round
  # a hair above the max they gave, and such a term still counts once.
  tie = lax.stop_gradient(1 - jnp.clip(-shifted * 1e30, 0, 1))
  # A tie takes its count out of the rest, not its own e: a term a hair
  # above 1 keeps its excess, and a +inf term (a +inf logit) stays inf, not
  # inf - inf = NaN.
  return e - tie, tie


def sum_and_excess(rest: jax.Array, ties: jax.Array
                   ) -> tuple[jax.Array, jax.Array]:
  """A row's sum of exponentials, and the sum minus 1 without rounding.

  `rest` and `ties` are the row sums of `split_exp`'s parts: ties counts
  ones, so ties - 1 is exact, and rest + (ties - 1) keeps a tiny rest that
  1 + rest would round away. An empty row has sum 0 and excess -1.
  """
  return rest + ties, rest + (ties - 1)


def log_sum(sumexp: jax.Array, excess: jax.Array | None) -> jax.Array:
  """log(sumexp), as log1p(excess) when the excess over 1 is known.

  Near certainty the sum is 1 + tiny, which float32 rounds to 1: its log
  would be 0, and a loss of 1e-10 would lose every digit. log1p of the
  excess keeps them. An empty row gives 0 (double where: log1p of a safe 0).
  Without `excess` this is `safe_log`.
  """
  if excess is None:
    return safe_log(sumexp)
  return jnp.log1p(jnp.where(is_nonempty(sumexp), excess, 0))


# Tests set this to take the accelerators' path on the CPU too.
_accelerator_path = False


def takes_cpu_path() -> bool:
  """Whether the function being traced takes the CPU's path.

  A speed choice (either path is exact), made when the function is traced,
  from `jax.default_backend()`: on a CPU, XLA leaves its fast row
  reductions for a reduction with two outputs or a select, so jxent keeps
  such sums out of the common case there (see `keeps_exp` in
  `softmax_rows` and `exp_sum_terms`).
  """
  return not _accelerator_path and jax.default_backend() == "cpu"


@contextlib.contextmanager
def accelerator_path():
  """Traces the accelerators' path on any backend, for tests."""
  global _accelerator_path
  saved, _accelerator_path = _accelerator_path, True
  try:
    yield
  finally:
    _accelerator_path = saved


def exp_sum_terms(e: jax.Array, shifted: jax.Array) -> tuple[jax.Array, ...]:
  """The terms whose row sums give sum(e), and on accelerators its exact
  excess over 1.

  On accelerators, `split_exp`'s `(rest, ties)`, summed in the same pass as
  the row's other sums: no extra read. On a CPU, `(e,)`: the whole sum,
  whose excess is rounded (see `sum_and_excess_of`).
  """
  return (e,) if takes_cpu_path() else split_exp(shifted, e)


def sum_and_excess_of(sums: tuple[jax.Array, ...]
                      ) -> tuple[jax.Array, jax.Array]:
  """A row's sum of exponentials and its excess over 1, from the row sums
  of `exp_sum_terms`' terms: exact from the split parts; `sum - 1` from a
  whole sum, which rounds a tiny excess (1 + 1e-10 is 1 in float32).

  A CPU keeps the whole sum, as every way to split it measured slower on
  the 2-core development machine. In the pass, it takes XLA's CPU backend
  off its fast reduction (1.1 to 1.3 times the time of 16-bit entropy, KL
  and soft-label forward passes at 512 x 16384, where that reduce was
  already variadic; 2.5 to 6 times optax's float32 forward pass where it
  was not, as an earlier round measured). In a second pass under
  `lax.cond`, only for batches near certainty, the conditional's operands
  are written out: 1.2 to 2 times the time whenever the logits came from an
  element-wise op in the same `jit` (a temperature, an upcast), or with a
  kept exp as the operand.
  """
  if len(sums) == 2:
    return sum_and_excess(*sums)
  (sumexp,) = sums
  return sumexp, sumexp - 1


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def row_sums(axes: tuple[int, ...], *terms: jax.Array) -> tuple[jax.Array, ...]:
  """Sums of several same-shaped arrays over `axes`, in one pass.

  One variadic reduce reads every term once. Separate `jnp.sum`s of terms
  that share a float32 subexpression (say `e` and `e * shifted`) make XLA's
  CPU backend materialise that subexpression, a float32 copy of the whole
  input. The reduce has no derivative rule of its own; its derivative is
  the sums of the tangents.
  """
  if len(terms) == 1:
    return (jnp.sum(terms[0], axis=axes),)
  n = terms[0].shape[axes[0]] if len(axes) == 1 else 0
  if n > _CHUNK and axes == (terms[0].ndim - 1,):
    # XLA's CPU backend adds a variadic reduce's terms one after another:
    # over 131072 classes, float32's rounding then grows to ~1e-5 of the
    # sum. In two levels (chunks of _CHUNK, then the chunks' partial sums)
    # it stays at the level of a pairwise sum. Padding adds zeros.
    pad = -n % _CHUNK
    terms = tuple(
        jnp.pad(t, [(0, 0)] * (t.ndim - 1) + [(0, pad)]).reshape(
            *t.shape[:-1], (n + pad) // _CHUNK, _CHUNK) for t in terms)
    partial = _variadic_sum(terms, (terms[0].ndim - 1,))
    return _variadic_sum(partial, (partial[0].ndim - 1,))
  return _variadic_sum(terms, axes)


# Classes per chunk of a two-level variadic row sum (see `row_sums`).
_CHUNK = 512


def _variadic_sum(terms, axes):
  init = tuple(jnp.zeros((), t.dtype) for t in terms)
  return tuple(lax.reduce(
      terms, init, lambda a, b: tuple(x + y for x, y in zip(a, b, strict=True)),
      axes))


@row_sums.defjvp
def _row_sums_jvp(axes, primals, tangents):
  return row_sums(axes, *primals), tuple(
      jnp.sum(t, axis=axes) for t in tangents)


def normalize(
    x: jax.Array,
    axis: tuple[int, ...],
    where: jax.Array | None,
    axis_name: str | tuple[str, ...] | None = None,
) -> Normalizer:
  """Computes the parts of a stable log-sum-exp over `axis`.

  Args:
    x: A floating array; it is upcast to at least float32.
    axis: Canonical (non-negative) axes to reduce over; they may be empty
      (length 0), which gives empty rows.
    where: A boolean mask already broadcast to `x.shape`, or None.
    axis_name: Inside `shard_map`, the mesh axis (or axes) the class axis is
      split over: the max is combined with `pmax` and the sum with `psum`,
      so the result is the log-sum-exp over the whole, unsplit class axis.

  Returns:
    A `Normalizer`.
  """
  x = apply_mask(x, where)
  # The max is exact in any float dtype, so take it before the upcast: a
  # 16-bit input is then read once more as 16 bits, not as a float32 copy.
  # `initial` makes the max of a zero-length axis -inf, an empty row.
  row_max = jnp.max(x, axis=axis, initial=-jnp.inf).astype(
      _checks.compute_dtype(x.dtype))
  if axis_name is not None:
    row_max = lax.pmax(lax.stop_gradient(row_max), axis_name)
  shift = jnp.expand_dims(shift_of(row_max), axis)
  # Shift by the max so exp never overflows.
  shifted = x.astype(shift.dtype) - shift
  terms = exp_sum_terms(jnp.exp(shifted), shifted)
  sums = tuple(jnp.expand_dims(s, axis) for s in row_sums(axis, *terms))
  if axis_name is not None:
    sums = lax.psum(sums, axis_name)
  sumexp, excess = sum_and_excess_of(sums)
  return Normalizer(x, shifted, shift, log_sum(sumexp, excess),
                    is_nonempty(sumexp))


def _prepare(
    x, axis, where, name: str = "x"
) -> tuple[jax.Array, tuple[int, ...], jax.Array | None]:
  x = jnp.asarray(x)
  _checks.check_floating(name, x)
  axes = _checks.canonical_axes(axis, x.ndim) if x.ndim else ()
  return x, axes, _checks.broadcast_where(where, x.shape)


def logsumexp(
    x: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    keepdims: bool = False,
) -> jax.Array:
  r"""Stable log-sum-exp along `axis`.

  .. math:: \operatorname{LSE}(x) = \log \sum_i e^{x_i}
     = m + \log \sum_i e^{x_i - m},\quad m = \max_i x_i

  Args:
    x: Floating input of any shape.
    axis: The axis, or tuple of axes, to reduce over.
    where: Boolean mask broadcastable to `x`; entries where it is False are
      left out (treated as -inf).
    keepdims: Keep the reduced axes with size 1.

  Returns:
    Array of `x.shape` without `axis` (or with size-1 axes if `keepdims`),
    in float32 for 16-bit inputs, otherwise in the input dtype. A row whose
    entries are all -inf or masked gives -inf, with a zero gradient.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.logsumexp(jnp.array([1e4, 1e4])))
    10000.693
    >>> print(jxent.logsumexp(jnp.array([-jnp.inf, -jnp.inf])))
    -inf
  """
  x, axes, mask = _prepare(x, axis, where)
  out = normalize(x, axes, mask).lse
  return out if keepdims else jnp.squeeze(out, axis=axes)


def log_softmax(
    x: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Log-softmax along `axis`: logits to normalised log-probabilities.

  .. math:: \log \operatorname{softmax}(x)_i = x_i - \operatorname{LSE}(x)

  Args:
    x: Floating logits of any shape.
    axis: The class axis, or tuple of axes.
    where: Boolean mask broadcastable to `x`; masked classes get -inf.

  Returns:
    Array of `x.shape` and dtype, computed with float32 accumulation. A row
    with no unmasked finite entry is -inf throughout, never NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.log_softmax(jnp.array([0.0, 0.0])).round(4))
    [-0.6931 -0.6931]
    >>> print(jxent.log_softmax(jnp.array([1.0, 5.0]),
    ...                         where=jnp.array([True, False])))
    [  0. -inf]
  """
  x, axes, mask = _prepare(x, axis, where)
  return normalize(x, axes, mask).log_probs.astype(x.dtype)


def softmax(
    x: jax.typing.ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Softmax along `axis`: logits to probabilities.

  .. math:: \operatorname{softmax}(x)_i = e^{x_i - \operatorname{LSE}(x)}

  Args:
    x: Floating logits of any shape.
    axis: The class axis, or tuple of axes.
    where: Boolean mask broadcastable to `x`; masked classes get 0.

  Returns:
    Array of `x.shape` and dtype, computed with float32 accumulation. A row
    with no unmasked finite entry is all zeros, never NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.softmax(jnp.array([0.0, jnp.log(3.0)])).round(4))
    [0.25 0.75]
  """
  x, axes, mask = _prepare(x, axis, where)
  return jnp.exp(normalize(x, axes, mask).log_probs).astype(x.dtype)


def log_sigmoid(x: jax.Array) -> jax.Array:
  """Stable log(sigmoid(x)) = -log(1 + exp(-x)), the two-class LSE."""
  # -LSE(0, -x) with the max shifted out: min(x, 0) - log1p(exp(-|x|)).
  return jnp.minimum(x, 0) - jnp.log1p(jnp.exp(-jnp.abs(x)))
