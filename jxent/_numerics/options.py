"""The options of every cross-entropy, parsed once into one frozen object.

The plain, linear and sharded cross-entropies (and, later, GPU kernels) all
take a `CrossEntropyOptions`, so an option means the same everywhere and is
validated in one place.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jxent._numerics import checks as _checks


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CrossEntropyOptions:
  """The options of a softmax cross-entropy, validated.

  It is a pytree: the coefficients are leaves (so a traced label smoothing
  or z-loss schedule does not recompile), the rest is static.

  Attributes:
    label_smoothing: The smoothing mass alpha in [0, 1]: a float, or a traced
      float scalar.
    z_loss: The z-loss weight: a float >= 0, or a traced float scalar.
    class_weights: Per-class weights (PyTorch's `weight`) in the compute
      dtype, under `stop_gradient`, or None.
    ignore_index: Label value of rows that do not count, or None.
    reduction: "none", "sum" or "mean".
    smoothing: False when label smoothing is a static 0: the smoothing sums
      are then not computed at all.
    z: False when the z-loss weight is a static 0.
  """

  label_smoothing: float | jax.Array
  z_loss: float | jax.Array
  class_weights: jax.Array | None
  ignore_index: int | None = dataclasses.field(metadata=dict(static=True))
  reduction: _checks.Reduction = dataclasses.field(
      metadata=dict(static=True))
  smoothing: bool = dataclasses.field(metadata=dict(static=True))
  z: bool = dataclasses.field(metadata=dict(static=True))


def parse_options(
    *,
    label_smoothing=0.0,
    z_loss=0.0,
    class_weights=None,
    num_classes: int | None = None,
    dtype=jnp.float32,
    ignore_index=None,
    reduction="none",
) -> CrossEntropyOptions:
  """Validates the options of a cross-entropy; raises on bad input.

  Args:
    label_smoothing: A number in [0, 1], or a traced float scalar.
    z_loss: A finite number >= 0, or a traced float scalar.
    class_weights: None, or a float array of shape [num_classes].
    num_classes: The number of classes, to check `class_weights` against.
    dtype: The compute dtype; `class_weights` are converted to it.
    ignore_index: None or an int.
    reduction: "none", "sum" or "mean".

  Returns:
    A `CrossEntropyOptions`.
  """
  smoothing = _checks.check_label_smoothing(label_smoothing)
  z = _checks.check_z_loss(z_loss)
  if class_weights is not None:
    if num_classes is None:
      raise ValueError("`class_weights` needs the number of classes.")
    class_weights = _checks.per_class("class_weights", class_weights,
                                      num_classes)
    # PyTorch's `weight` is a constant of the loss, not a parameter.
    class_weights = jax.lax.stop_gradient(class_weights.astype(dtype))
  return CrossEntropyOptions(
      label_smoothing=smoothing,
      z_loss=z,
      class_weights=class_weights,
      ignore_index=_checks.check_ignore_index(ignore_index),
      reduction=_checks.check_reduction(reduction),
      smoothing=not (isinstance(smoothing, float) and smoothing == 0.0),
      z=not (isinstance(z, float) and z == 0.0),
  )
