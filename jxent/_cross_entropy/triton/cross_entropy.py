"""The softmax cross-entropy on the kernels: one custom VJP, both passes.

The forward pass runs `row_stats` and the shared row step; the backward pass
runs `logits_gradient` with the row step's coefficients times the
cotangent. Like the XLA path, it keeps only the inputs and a few numbers
per row between the passes. Unlike it, it is reverse-mode only: a custom
VJP cannot also be differentiated forward.
"""

import dataclasses
import functools

import jax

from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy.triton import information as _information
from jxent._cross_entropy.triton import (
    information_gradient as _information_gradient,
)
from jxent._cross_entropy.triton.config import KernelConfig, default_config
from jxent._cross_entropy.triton.gradient import (
    logits_gradient,
    scaled_logits_gradient,
)
from jxent._cross_entropy.triton.row_stats import row_stats
from jxent._numerics import checks as _checks
from jxent._numerics.options import CrossEntropyOptions


def _forward(num_classes, configs, logits, mask, target, opts):
  labels = target if isinstance(target, _checks.Labels) else None
  stats = row_stats(
      logits, mask, opts, num_classes, configs[0],
      label_index=None if labels is None else labels.class_index,
      targets=None if labels is not None else target)
  return stats, _rows.row_step(stats, opts, num_classes, labels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def softmax_cross_entropy_rows(
    num_classes: int,
    configs: tuple[KernelConfig, KernelConfig],
    logits: jax.Array,
    mask: jax.Array | None,
    target: _checks.Labels | jax.Array,
    opts: CrossEntropyOptions,
) -> tuple[jax.Array, jax.Array]:
  """Per-row loss and "mean" weight, forward and backward on the kernels.

  `configs` holds the forward kernel's and the backward kernel's tile
  configurations.
  """
  _, result = _forward(num_classes, configs, logits, mask, target, opts)
  return result.loss, result.weight


def _fwd(num_classes, configs, logits, mask, target, opts):
  # Symbolic zeros: the rule sees which inputs are perturbed, and (unlike
  # the default) a custom VJP with them composes with checkify under grad.
  labels_perturbed = getattr(target, "perturbed", False)
  logits, mask, target, opts = jax.tree.map(
      lambda p: p.value, (logits, mask, target, opts),
      is_leaf=lambda p: isinstance(p, jax.custom_derivatives.CustomVJPPrimal))
  stats, result = _forward(num_classes, configs, logits, mask, target, opts)
  per_row = (stats.shift, result.log_sumexp, result.coefficients,
             result.d_smoothing, result.d_z_loss)
  return (result.loss, result.weight), (
      logits, mask, target, opts, per_row, labels_perturbed)


def _bwd(num_classes, configs, residuals, cotangents):
  del num_classes
  logits, mask, target, opts, per_row, labels_perturbed = residuals
  shift, log_sumexp, coefficients, d_smoothing, d_z_loss = per_row
  g, _ = cotangents  # The row weights are constants.
  coefficients = jax.tree.map(lambda c: g * c, coefficients)
  labels = target if isinstance(target, _checks.Labels) else None
  dlogits = logits_gradient(
      logits, mask, shift, log_sumexp, coefficients, opts, configs[1],
      label_index=None if labels is None else labels.class_index,
      targets=None if labels is not None else target)
  dtarget = None
  if labels is None and labels_perturbed:
    dtarget = _rows.targets_gradient(
        logits, mask, shift, log_sumexp, coefficients, opts
    ).astype(target.dtype)
  d_opts = _rows.options_cotangent(opts, g, d_smoothing, d_z_loss)
  return dlogits, None, dtarget, d_opts


softmax_cross_entropy_rows.defvjp(_fwd, _bwd, symbolic_zeros=True)


def _configured(num_classes, dtype, kernel, config) -> KernelConfig:
  chosen = default_config(num_classes, dtype, kernel)
  return dataclasses.replace(chosen, **config) if config else chosen


def stats_kernel(num_classes: int, dtype, **config) -> _rows.StatsKernel:
  """The forward kernel and the backward one, for the default path on CUDA.

  Args:
    num_classes: C.
    dtype: The logits' dtype.
    **config: `KernelConfig` fields to use instead of the tuned defaults.
  """
  return _rows.StatsKernel(
      "cuda", row_stats,
      _configured(num_classes, dtype, "row_stats", config),
      gradient=scaled_logits_gradient,
      gradient_config=_configured(num_classes, dtype, "logits_gradient",
                                  config))


def cross_entropy_rows(num_classes: int, dtype, logits, mask, target, opts,
                       **config):
  """Per-row loss and "mean" weight with both passes on the kernels."""
  configs = (_configured(num_classes, dtype, "row_stats", config),
             _configured(num_classes, dtype, "logits_gradient", config))
  return softmax_cross_entropy_rows(num_classes, configs, logits, mask,
                                    target, opts)


def information_kernel(kind: str, num_classes: int, dtype, **config
                       ) -> _rows.StatsKernel:
  """The kernels of the entropy, KL or cross-entropy of logits.

  Its `compute(*arrays, config)` gives the per-row numbers of
  `jxent._information.logits` (`information.entropy_stats`, or
  `information.pair_stats` of `kind`); its `gradient` is the backward
  kernel (`information_gradient.entropy_gradient`, or
  `information_gradient.pair_gradient` of `kind`, which takes the side
  first). The tiles are the cross-entropy kernels' (half as wide for a
  pair, which reads two rows): the sweep has not tuned these kernels yet.

  Args:
    kind: "entropy", "kl" or "cross_entropy".
    num_classes: C.
    dtype: The logits' dtype.
    **config: `KernelConfig` fields to use instead of the tuned defaults
      (`lane_sums` does not apply: these kernels reduce each tile).
  """
  forward = _configured(num_classes, dtype, "row_stats", config)
  backward = _configured(num_classes, dtype, "logits_gradient", config)
  if kind == "entropy":
    compute = _information.entropy_stats
    gradient = _information_gradient.entropy_gradient
  elif kind in ("kl", "cross_entropy"):
    compute = functools.partial(_information.pair_stats, kind)
    gradient = functools.partial(_information_gradient.pair_gradient, kind)
    if "block" not in config:
      # Two rows' tiles per step: half the width holds as many values in
      # registers as the cross-entropy kernels' one.
      forward, backward = (
          dataclasses.replace(c, block=max(c.block // 2, 1))
          for c in (forward, backward))
  else:
    raise ValueError(f"Unknown kind {kind!r}.")
  return _rows.StatsKernel("cuda", compute, forward, gradient=gradient,
                           gradient_config=backward)
