r"""The XLA implementation of the softmax cross-entropies: one custom JVP.

The two softmax cross-entropies, plain and sharded, integer or soft labels,
share one custom derivative, a `jax.custom_jvp`, so every differentiation
mode works: `grad`, `jvp`, `jacfwd`, `jacrev`, `hessian`, `linearize`. Its
tangent is one element-wise pass, :math:`\sum_c g_c\, \dot z_c` with
:math:`g` recomputed from the logits and the per-row numbers of the row
step (`jxent._cross_entropy.rows`), under `jax.checkpoint`: reverse mode
then saves only the inputs and a few numbers per row, never a float32
[batch, classes] array, whatever the dtype.

The forward pass's row statistics may come from a kernel on the platforms
that have one (`rows.StatsKernel`), and so may the reverse-mode gradient
(`kernel_tangent.row_tangent`); every other derivative stays XLA's.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jxent._cross_entropy import rows as _rows
from jxent._numerics import checks as _checks
from jxent._numerics import kernel_tangent
from jxent._numerics import softmax_rows as _softmax_rows
from jxent._numerics.options import CrossEntropyOptions


def _offset(axis_name, local_classes):
  """This shard's first class inside `shard_map`; 0 without a mesh axis."""
  if axis_name is None:
    return 0
  return lax.axis_index(axis_name) * local_classes


def _split_target(target):
  """(label_index, targets) from integer `Labels` or soft labels."""
  if isinstance(target, _checks.Labels):
    return target.class_index, None
  return None, target


def _forward(axis_name, num_classes, kernels, logits, mask, target, opts,
             loss_only=False):
  if (not loss_only and axis_name is None
      and _softmax_rows.upcasts_on_cpu(logits.dtype, logits.size)):
    # Small 16-bit logits on a CPU, differentiated: the float32 path, which
    # keeps exp, is faster there. The loss alone reads them as they are.
    logits = logits.astype(jnp.float32)
  offset = _offset(axis_name, logits.shape[-1])
  label_index, targets = _split_target(target)
  stats, exps = _rows.row_statistics(
      logits, mask, opts, num_classes, kernels, label_index=label_index,
      targets=targets, axis_name=axis_name, offset=offset,
      keep_exp=_softmax_rows.keeps_exp(logits.dtype), loss_only=loss_only)
  labels = target if label_index is not None else None
  result = _rows.row_step(stats, opts, num_classes, labels)
  return stats, result, offset, exps


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def softmax_cross_entropy_rows(
    axis_name: _rows.AxisName | None,
    num_classes: int,
    kernels: tuple[_rows.StatsKernel, ...],
    logits: jax.Array,
    mask: jax.Array | None,
    target: _checks.Labels | jax.Array,
    opts: CrossEntropyOptions,
) -> tuple[jax.Array, jax.Array]:
  """Per-row softmax cross-entropy and its weight in a "mean".

  The one implementation behind the plain and the sharded softmax
  cross-entropies, integer or soft labels, with its custom derivative.

  Args:
    axis_name: The mesh axis the classes are split over (inside
      `shard_map`), or None.
    num_classes: The number of classes in all.
    kernels: Kernels for the row statistics, and for the reverse-mode
      gradient where they have one, on their platforms (see
      `rows.row_statistics`); XLA computes them everywhere else.
    logits: Floating logits, classes last.
    mask: Boolean mask of the logits' shape, or None.
    target: Sorted integer labels (`Labels`), or soft labels of the logits'
      shape.
    opts: The parsed options.

  Returns:
    `(loss, weight)`, both of the rows' shape.
  """
  # Not differentiated here (the JVP rule below is): the loss alone.
  _, result, _, _ = _forward(axis_name, num_classes, kernels, logits, mask,
                             target, opts, loss_only=True)
  return result.loss, result.weight


def _logits_tangent(axis_name, logits, mask, shift, log_sumexp,
                    coefficients, opts, label_index, targets, offset,
                    dlogits, exps=None):
  grad = _rows.logits_gradient(
      logits, mask, shift, log_sumexp, coefficients, opts,
      label_index=label_index, targets=targets, offset=offset, exps=exps)
  return _softmax_rows.row_tangent(axis_name, grad, dlogits)


def _xla_gradient(logits, mask, shift, log_sumexp, coefficients, opts,
                  label_index, targets):
  return _rows.logits_gradient(
      logits, mask, shift, log_sumexp, coefficients, opts,
      label_index=label_index, targets=targets)


def _targets_tangent(axis_name, logits, mask, shift, log_sumexp,
                     coefficients, opts, offset, dtargets):
  grad = _rows.targets_gradient(logits, mask, shift, log_sumexp,
                                coefficients, opts, offset)
  return _softmax_rows.row_tangent(axis_name, grad, dtargets)


@functools.partial(softmax_cross_entropy_rows.defjvp, symbolic_zeros=True)
def _softmax_cross_entropy_rows_jvp(axis_name, num_classes, kernels, primals,
                                    tangents):
  logits, mask, target, opts = primals
  dlogits, _, dtarget, dopts = tangents
  stats, result, offset, exps = _forward(axis_name, num_classes, kernels,
                                         logits, mask, target, opts)
  label_index, targets = _split_target(target)
  tangent = jnp.zeros_like(result.loss)
  if not _softmax_rows.is_zero_tangent(dlogits) and exps is not None:
    # The forward pass's exp is kept for the backward (see keeps_exp).
    tangent = tangent + _logits_tangent(
        axis_name, logits, mask, stats.shift, result.log_sumexp,
        result.coefficients, opts, label_index, targets, offset, dlogits,
        exps)
  elif not _softmax_rows.is_zero_tangent(dlogits) and (
      gradients := _rows.backward_kernels(kernels)):
    # The same tangent, whose reverse mode runs the backward kernel on its
    # platform (XLA elsewhere); it keeps only these inputs and the per-row
    # numbers too.
    tangent = tangent + kernel_tangent.row_tangent(
        dlogits, (logits, mask, stats.shift, result.log_sumexp,
                  result.coefficients, opts, label_index, targets),
        gradient=_xla_gradient, kernels=gradients)
  elif not _softmax_rows.is_zero_tangent(dlogits):
    # Under jax.checkpoint, reverse mode saves only these inputs and the
    # per-row numbers, and recomputes the softmax in the backward pass. It
    # also keeps XLA from merging that recomputation with the forward pass
    # into one materialised float32 [rows, classes] array.
    tangent = tangent + jax.checkpoint(_logits_tangent, static_argnums=(0,))(
        axis_name, logits, mask, stats.shift, result.log_sumexp,
        result.coefficients, opts, label_index, targets, offset, dlogits)
  if targets is not None and not _softmax_rows.is_zero_tangent(dtarget):
    tangent = tangent + jax.checkpoint(_targets_tangent, static_argnums=(0,))(
        axis_name, logits, mask, stats.shift, result.log_sumexp,
        result.coefficients, opts, offset, dtarget)
  if opts.smoothing and not _softmax_rows.is_zero_tangent(
      dopts.label_smoothing):
    tangent = tangent + dopts.label_smoothing * result.d_smoothing
  if opts.z and not _softmax_rows.is_zero_tangent(dopts.z_loss):
    tangent = tangent + dopts.z_loss * result.d_z_loss
  # The weights are constants: which rows count, and their class weights.
  return (result.loss, result.weight), (tangent,
                                        jnp.zeros_like(result.weight))
