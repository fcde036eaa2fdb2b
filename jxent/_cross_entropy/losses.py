r"""Training losses: softmax and sigmoid cross-entropies.

The public functions validate their arguments, parse the options once and
hand the rows to the implementation that `jxent._cross_entropy.api` picks.
The positional signatures match optax's functions of the same names.
"""

import math

import jax
import jax.numpy as jnp

from jxent._cross_entropy import api as _api
from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy.api import Implementation
from jxent._numerics import checks as _checks
from jxent._numerics import softmax_rows as _softmax_rows
from jxent._numerics.options import parse_options

Axis = int | tuple[int, ...] | None


def _prepare_logits(
    logits, axis, where
) -> tuple[jax.Array, jax.Array | None, tuple[int, ...], int]:
  """Validates logits; returns them classes-last, the mask, axes, C."""
  logits = jnp.asarray(logits)
  _checks.check_floating("logits", logits)
  axes = _checks.canonical_axes(axis, logits.ndim)
  mask = _checks.broadcast_where(where, logits.shape, per_row_axes=axes)
  num_classes = math.prod(logits.shape[a] for a in axes)
  logits = _softmax_rows.classes_last(logits, axes)
  mask = None if mask is None else _softmax_rows.classes_last(mask, axes)
  return logits, mask, axes, num_classes


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    class_weights: jax.typing.ArrayLike | None = None,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    reduction: _checks.Reduction = "none",
    implementation: Implementation = None,
) -> jax.Array:
  r"""Softmax cross-entropy against integer class labels.

  .. math::
     \ell = (1 - \alpha)\, w_y\, (-\log q_y)
       + \frac{\alpha}{K} \sum_{c\ \mathrm{valid}} w_c\, (-\log q_c)
       + \lambda_z \operatorname{LSE}(z)^2,
     \qquad q = \operatorname{softmax}(z)

  with smoothing :math:`\alpha`, class weights :math:`w` (1 by default),
  :math:`K` the number of valid classes in the row (not masked by `where`,
  logit above -inf) and z-loss weight :math:`\lambda_z`. With the same
  `weight`, `ignore_index`, `label_smoothing` and `reduction`, this equals
  PyTorch's `cross_entropy`. Label smoothing never builds one-hot labels and
  never gives mass to masked classes.

  Every differentiation mode works (`grad`, `jvp`, `jacfwd`, `hessian`, ...)
  and reverse mode keeps no float32 copy of 16-bit logits (a CPU converts
  small ones, where that is faster): the custom derivative saves only the
  inputs and a few float32 numbers per row.

  Args:
    logits: Floating logits, class axis `axis`. 16-bit logits are computed
      with float32 accumulation; their gradient keeps their dtype.
    labels: Integer class indices with the shape of `logits` without `axis`.
      With a tuple `axis`, they index the flattened class axes. Any integer
      dtype; the range is checked in that dtype, so no label ever wraps
      around to another class.
    axis: The class axis, a tuple of class axes, or None for all axes.
    where: Boolean mask broadcastable to `logits`; masked classes get no
      probability. As in optax, a mask with one dimension fewer per class
      axis (shape [batch] for logits [batch, classes]) masks whole rows. A
      row with every class masked is empty: loss 0, gradient 0, and it does
      not count in the "mean".
    ignore_index: Rows whose label equals it give loss 0, gradient 0 and do
      not count in the "mean".
    label_smoothing: :math:`\alpha` in [0, 1], a number or a traced scalar
      (a schedule under `jit` does not recompile).
    class_weights: Optional float array of shape [classes], PyTorch's
      `weight`. It is treated as a constant (no gradient flows to it).
    z_loss: :math:`\lambda_z \ge 0`, PaLM's auxiliary z-loss, a number or a
      traced scalar.
    reduction: "none" (one value per row), "sum", or "mean", which divides
      by the total weight :math:`\sum w_y` of the rows that count (for an
      all-ignored batch it gives 0, where PyTorch gives NaN).
    implementation: None (choose), "xla" or "triton"; see
      `softmax_cross_entropy`.

  Returns:
    Float32 (or wider) array of the batch shape for "none", else a scalar.
    A label outside [0, classes) that is not `ignore_index` gives NaN; wrap
    the call with `jxent.checked` to raise an error instead. A NaN logit
    (not masked) makes its row's loss and gradient NaN, and the row counts
    in the "mean", so a diverging run is never hidden.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> logits = jnp.log(jnp.array([[0.7, 0.1, 0.05, 0.15]]))
    >>> print(jxent.softmax_cross_entropy_with_integer_labels(
    ...     logits, jnp.array([0])).round(4))
    [0.3567]
    >>> print(jxent.softmax_cross_entropy_with_integer_labels(
    ...     jnp.full((1, 3), 1e8), jnp.array([1])).round(4))  # log 3, exact
    [1.0986]
  """
  logits_shape = jnp.shape(logits)
  rows, mask, _, num_classes = _prepare_logits(logits, axis, where)
  label_array = _checks.as_labels("labels", labels)
  if label_array.shape != rows.shape[:-1]:
    raise ValueError(
        f"`labels` must have the shape of `logits` without the class axis"
        f" {axis}: expected {rows.shape[:-1]}, got labels.shape="
        f"{label_array.shape} for logits.shape={logits_shape}."
    )
  opts = parse_options(
      label_smoothing=label_smoothing, z_loss=z_loss,
      class_weights=class_weights, num_classes=num_classes,
      dtype=_checks.compute_dtype(rows.dtype), ignore_index=ignore_index,
      reduction=reduction)
  # A row whose every class `where` masks is excluded: its label is never
  # looked at (docs/conventions.md, "Masked rows and tokens").
  excluded = None if mask is None else ~jnp.any(mask, axis=-1)
  sorted_labels = _checks.sort_labels(label_array, num_classes,
                                      opts.ignore_index, excluded)
  loss, weight = _api.cross_entropy_rows(implementation, num_classes, rows,
                                         mask, sorted_labels, opts)
  return _rows.reduce(loss, weight, opts.reduction)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    class_weights: jax.typing.ArrayLike | None = None,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    reduction: _checks.Reduction = "none",
    implementation: Implementation = None,
) -> jax.Array:
  r"""Softmax cross-entropy against soft (probability) or one-hot labels.

  .. math::
     \ell = -\sum_c w_c\, t_c \log q_c + \lambda_z \operatorname{LSE}(z)^2,
     \qquad t = (1 - \alpha)\, y + \alpha\, u,
     \quad q = \operatorname{softmax}(z)

  where :math:`u` is uniform over the valid classes of the row (not masked
  by `where`, logit above -inf) and :math:`w` are class weights (1 by
  default; PyTorch's `weight` with probability targets). Labels need not sum
  to 1.

  Every differentiation mode works, and reverse mode keeps no float32 copy
  of 16-bit logits (a CPU converts small ones, where that is faster). The
  loss is differentiable with respect to `labels` too
  (for distillation): :math:`\partial \ell / \partial y_c = -(1 - \alpha)
  w_c \log q_c`, taken as 0 on classes whose logit is -inf.

  Args:
    logits: Floating logits, class axis `axis`.
    labels: Label probabilities, the same shape as `logits`. Integer or bool
      labels (one-hot) are converted to float32.
    axis: The class axis, a tuple of class axes, or None for all axes.
    where: Boolean mask broadcastable to `logits`; masked classes get no
      probability, and their labels are ignored. As in optax, a mask of
      shape [batch] for logits [batch, classes] masks whole rows. A row with
      every class masked gives loss 0 and gradient 0.
    label_smoothing: :math:`\alpha` in [0, 1], a number or a traced scalar.
    class_weights: Optional float array of shape [classes], a constant.
    z_loss: :math:`\lambda_z \ge 0`, a number or a traced scalar.
    reduction: "none" (one value per row), "sum", or "mean" over the rows
      that are not empty (PyTorch's mean over the batch; class weights do
      not enter the denominator for probability targets).
    implementation: None (the default) chooses per platform when the
      function is lowered: on an NVIDIA GPU (CUDA), a Pallas Triton kernel
      computes the forward pass's row statistics in one read of the logits,
      inside the XLA path's custom JVP (every differentiation mode still
      works); on every other platform, XLA alone. "xla" forces XLA.
      "triton" runs both passes on the Pallas Triton kernels (`jax.grad`,
      `jax.vjp`: reverse mode only) and raises a `ValueError` where it
      cannot run.

  Returns:
    Float32 (or wider) array of the batch shape for "none", else a scalar.
    A NaN in an unmasked logit or label makes its row NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> logits = jnp.log(jnp.array([0.7, 0.1, 0.05, 0.15]))
    >>> labels = jnp.array([1.0, 0.0, 0.0, 0.0])
    >>> print(jxent.softmax_cross_entropy(logits, labels).round(4))
    0.3567
  """
  logits_in = jnp.asarray(logits)
  _checks.check_floating("logits", logits_in)
  targets = _checks.as_floating("labels", labels)
  _checks.check_same_shape("logits", logits_in, "labels", targets)
  rows, mask, axes, num_classes = _prepare_logits(logits_in, axis, where)
  opts = parse_options(
      label_smoothing=label_smoothing, z_loss=z_loss,
      class_weights=class_weights, num_classes=num_classes,
      dtype=_checks.compute_dtype(rows.dtype), reduction=reduction)
  loss, weight = _api.cross_entropy_rows(
      implementation, num_classes, rows, mask,
      _softmax_rows.classes_last(targets, axes), opts)
  return _rows.reduce(loss, weight, opts.reduction)


# --- sigmoid --------------------------------------------------------------


def sigmoid_binary_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    pos_weight: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "none",
) -> jax.Array:
  r"""Element-wise binary cross-entropy of sigmoid probabilities.

  .. math:: \ell = -w_+\, y \log \sigma(z) - (1 - y) \log (1 - \sigma(z))

  computed as :math:`w_+ y \operatorname{softplus}(-z)
  + (1 - y) \operatorname{softplus}(z)`, stable for any logit, with the
  exact derivative :math:`(1 - y)\sigma(z) - w_+ y \sigma(-z)` everywhere,
  0 included. Equals PyTorch's `binary_cross_entropy_with_logits`.

  Args:
    logits: Floating logits, any shape.
    labels: Targets in [0, 1], the same shape as `logits`; integer or bool
      labels are converted to float32.
    pos_weight: Optional weight of the positive term, broadcastable to
      `logits` (PyTorch's `pos_weight`).
    reduction: "none" (element-wise), "sum", or "mean" over all elements.

  Returns:
    Float32 (or wider) array of `logits.shape` for "none", else a scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.sigmoid_binary_cross_entropy(
    ...     jnp.array([0.0, 100.0]), jnp.array([1.0, 1.0])).round(4))
    [0.6931 0.    ]
  """
  logits = jnp.asarray(logits)
  _checks.check_floating("logits", logits)
  labels = _checks.as_floating("labels", labels)
  _checks.check_same_shape("logits", logits, "labels", labels)
  reduction = _checks.check_reduction(reduction)
  dtype = _checks.compute_dtype(logits.dtype, labels.dtype)
  x, y = logits.astype(dtype), labels.astype(dtype)
  positive = y
  if pos_weight is not None:
    pos_weight = jnp.asarray(pos_weight)
    _checks.check_floating("pos_weight", pos_weight)
    shape = _checks.broadcast_shapes("pos_weight", pos_weight, "logits",
                                     logits)
    if shape != logits.shape:
      raise ValueError(
          f"`pos_weight` of shape {pos_weight.shape} does not broadcast to"
          f" logits.shape={logits.shape}."
      )
    positive = y * jnp.broadcast_to(pos_weight.astype(dtype), shape)
  negative = 1 - y
  # softplus(-z) = -log sigmoid(z), with the derivative -sigmoid(-z) exact
  # at 0 (-0.5; a formula through |z| would give -1 there). A zero weight
  # times an infinite softplus is 0 here, not NaN: select the term away
  # rather than multiply by 0.
  loss = jnp.where(positive != 0, positive * jax.nn.softplus(-x), 0) + (
      jnp.where(negative != 0, negative * jax.nn.softplus(x), 0))
  return _rows.reduce(loss, jnp.ones_like(loss), reduction)
