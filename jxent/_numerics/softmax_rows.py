"""The row mechanics every softmax over materialised logits shares.

The cross-entropies (`jxent._cross_entropy`) and the entropy, cross-entropy
and KL of logits (`jxent._information.logits`) each reduce rows of logits
to a few numbers, keep those numbers, and recompute the softmax from them in
the backward pass. The steps they share live here, so that each is written
once:

* `shifted`: the masked logits minus their row's shift, in the compute
  dtype (the max is taken before the upcast, so 16-bit logits are read as
  16 bits);
* `sums`: several row sums in one pass that keeps nothing, or one by one
  over a kept exp (`keeps_exp`), over every shard of a mesh axis;
* `recompute`: the shifted logits and the softmax again, from the saved
  shift and log-sum-exp (or rescaled from a kept exp);
* `times_finite`: a weight times a value that may be infinite where the
  weight is 0;
* `row_tangent`: the tangent of per-row values from the gradient of the
  logits.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks
from jxent._numerics import logsumexp as _logsumexp
from jxent._numerics.logsumexp import apply_mask, row_sums, shift_of

AxisName = str | tuple[str, ...]

# The largest float32 copy of 16-bit logits that a CPU makes (see
# `upcasts_on_cpu`): with the kept exp beside it, both fit in the last-level
# cache of a server CPU (32 MiB on the development machine).
CPU_UPCAST_BYTES = 8 * 2**20


def keeps_exp(dtype) -> bool:
  """Whether the forward pass keeps exp(logits - shift) for the backward.

  On a CPU, for float32 (or float64) logits, it does: exp costs more than
  memory traffic there, and XLA computes a materialised exp on both cores
  (with XNNPACK row sums) where a fused one runs on one. The kept array
  is float32 [rows, classes], the one such buffer allowed, and XLA usually
  writes the gradient into it. For 16-bit logits, and on accelerators,
  every pass recomputes exp from the logits and only per-row numbers are
  kept. The choice is made when the function is traced, from
  `jax.default_backend()`: it is a speed choice, and either way is exact.
  """
  return jnp.dtype(dtype).itemsize >= 4 and _logsumexp.takes_cpu_path()


def upcasts_on_cpu(dtype, size: int) -> bool:
  """Whether 16-bit logits of `size` elements are made float32 first.

  On a CPU, when the float32 copy is small (at most `CPU_UPCAST_BYTES`), the
  cross-entropies convert 16-bit logits to float32 for the loss and its
  derivatives and take the float32 path, which keeps exp: at such sizes
  that is faster than recomputing exp from the 16-bit logits (on the 2-core
  development machine, 512 x 1024 and 512 x 4096 bfloat16 loss and gradient
  were 0.76 to 0.79 times optax with the float32 upcast without it). The
  loss alone, not differentiated, reads them as they are, in one fused pass
  with no copy. Larger logits keep no float32 copy. The
  result is the same either way: the arithmetic is float32 in both, and the
  gradient has the logits' dtype. Under `vmap` the size is one
  example's: the limit applies to each vmapped call's logits.
  """
  return (jnp.dtype(dtype).itemsize < 4
          and size * 4 <= CPU_UPCAST_BYTES
          and _logsumexp.takes_cpu_path())


def recompute_everywhere():
  """Traces the accelerators' path (recompute, no kept exp, split sums) on
  any backend: `logsumexp.accelerator_path`."""
  return _logsumexp.accelerator_path()


def is_zero_tangent(tangent) -> bool:
  """Whether a custom JVP rule's tangent is a symbolic zero (unperturbed)."""
  return tangent is None or isinstance(
      tangent, jax.custom_derivatives.SymbolicZero)


def classes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Moves the class axes to the end and flattens them into one: rows."""
  if axes == (x.ndim - 1,):
    return x
  batch = [a for a in range(x.ndim) if a not in axes]
  x = jnp.transpose(x, batch + list(axes))
  return x.reshape(x.shape[: len(batch)] + (-1,))


def shifted(logits: jax.Array, mask: jax.Array | None,
            axis_name: AxisName | None = None
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Masked logits, classes last, minus their row's shift.

  Returns:
    `(x, shifted, shift)`: the masked logits in their own dtype, `x - shift`
    in the compute dtype, and the shift (the row's max over every shard of
    `axis_name`, 0 where it is infinite, no gradient).
  """
  x, shifted_x, shift, _ = shifted_and_max(logits, mask, axis_name)
  return x, shifted_x, shift


def shifted_and_max(logits: jax.Array, mask: jax.Array | None,
                    axis_name: AxisName | None = None
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`shifted`, and the row max it shifts by (-inf for an empty row)."""
  x = apply_mask(logits, mask)
  dtype = _checks.compute_dtype(x.dtype)
  # The max is exact in any dtype: take it before the upcast, so a 16-bit
  # input is read as 16 bits. `initial` gives -inf for zero classes.
  row_max = jnp.max(x, axis=-1, initial=-jnp.inf).astype(dtype)
  if axis_name is not None:
    row_max = lax.pmax(lax.stop_gradient(row_max), axis_name)
  shift = shift_of(row_max)
  return x, x.astype(dtype) - shift[..., None], shift, row_max


def sums(axis_name: AxisName | None, keep_exp: bool, *terms: jax.Array
         ) -> tuple[jax.Array, ...]:
  """Row sums of the terms (classes last), over every shard of `axis_name`.

  With `keep_exp` (see `keeps_exp`) they are taken one by one, and XLA
  materialises the exp they share; else in one pass that keeps nothing
  (`row_sums`).
  """
  if keep_exp:
    out = tuple(jnp.sum(term, axis=-1) for term in terms)
  else:
    out = row_sums((terms[0].ndim - 1,), *terms)
  return out if axis_name is None else lax.psum(out, axis_name)


def recompute(logits: jax.Array, mask: jax.Array | None, shift: jax.Array,
              log_sumexp: jax.Array, exps: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
  """The shifted logits and the softmax, from the saved per-row numbers.

  With `exps`, the forward pass's exp(logits - shift), the softmax is
  rescaled from it instead of recomputed.
  """
  x = apply_mask(logits, mask)
  shifted_x = x.astype(shift.dtype) - shift[..., None]
  if exps is not None:
    return shifted_x, exps * jnp.exp(-log_sumexp)[..., None]
  return shifted_x, jnp.exp(shifted_x - log_sumexp[..., None])


def times_finite(weight: jax.Array, value: jax.Array) -> jax.Array:
  """weight * value with 0 * (+-inf) = 0: value is swapped for 0 there.

  Double where: the swap keeps the derivative finite too. A NaN weight is
  not 0, so it still makes the product NaN.
  """
  has_mass = weight != 0
  return jnp.where(has_mass, weight * jnp.where(has_mass, value, 0), 0)


def row_tangent(axis_name: AxisName | None, grad: jax.Array,
                dlogits: jax.Array) -> jax.Array:
  """sum_c grad_c * dlogits_c per row, over every shard of `axis_name`."""
  tangent = jnp.sum(grad * dlogits.astype(grad.dtype), axis=-1)
  return tangent if axis_name is None else lax.psum(tangent, axis_name)
