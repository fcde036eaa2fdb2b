r"""Training losses: softmax and sigmoid cross-entropies.

The two softmax cross-entropies share one custom derivative, a
`jax.custom_jvp`, so every differentiation mode works: `grad`, `jvp`,
`jacfwd`, `jacrev`, `hessian`, `linearize`. Its tangent is one element-wise
pass, :math:`\sum_c g_c\, \dot z_c` with :math:`g` recomputed from the
logits and the per-row numbers of the row step (`jxent._rows`), under
`jax.checkpoint`: reverse mode then saves only the inputs and a few numbers
per row, never a float32 [batch, classes] array, whatever the dtype.

The positional signatures match optax's functions of the same names.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _checks, _implementation, _rows
from jxent._implementation import Implementation
from jxent._options import CrossEntropyOptions, parse_options

Axis = int | tuple[int, ...] | None


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


def _forward(axis_name, num_classes, kernel, logits, mask, target, opts):
  offset = _offset(axis_name, logits.shape[-1])
  label_index, targets = _split_target(target)
  stats, exps = _rows.row_statistics(
      logits, mask, opts, num_classes, kernel, label_index=label_index,
      targets=targets, axis_name=axis_name, offset=offset,
      keep_exp=kernel is None and _rows.keeps_exp(logits.dtype))
  labels = target if label_index is not None else None
  result = _rows.row_step(stats, opts, num_classes, labels)
  return stats, result, offset, exps


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def softmax_cross_entropy_rows(
    axis_name: _rows.AxisName | None,
    num_classes: int,
    kernel,
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
    kernel: The Pallas forward kernel's configuration, or None to compute
      the row statistics with XLA (see `jxent._implementation`).
    logits: Floating logits, classes last.
    mask: Boolean mask of the logits' shape, or None.
    target: Sorted integer labels (`Labels`), or soft labels of the logits'
      shape.
    opts: The parsed options.

  Returns:
    `(loss, weight)`, both of the rows' shape.
  """
  _, result, _, _ = _forward(axis_name, num_classes, kernel, logits, mask,
                             target, opts)
  return result.loss, result.weight


def _logits_tangent(axis_name, logits, mask, shift, log_sumexp,
                    coefficients, opts, label_index, targets, offset,
                    dlogits, exps=None):
  grad = _rows.logits_gradient(
      logits, mask, shift, log_sumexp, coefficients, opts,
      label_index=label_index, targets=targets, offset=offset, exps=exps)
  tangent = jnp.sum(grad * dlogits.astype(grad.dtype), axis=-1)
  return tangent if axis_name is None else lax.psum(tangent, axis_name)


def _targets_tangent(axis_name, logits, mask, shift, log_sumexp,
                     coefficients, opts, offset, dtargets):
  grad = _rows.targets_gradient(logits, mask, shift, log_sumexp,
                                coefficients, opts, offset)
  tangent = jnp.sum(grad * dtargets.astype(grad.dtype), axis=-1)
  return tangent if axis_name is None else lax.psum(tangent, axis_name)


@functools.partial(softmax_cross_entropy_rows.defjvp, symbolic_zeros=True)
def _softmax_cross_entropy_rows_jvp(axis_name, num_classes, kernel, primals,
                                    tangents):
  logits, mask, target, opts = primals
  dlogits, _, dtarget, dopts = tangents
  stats, result, offset, exps = _forward(axis_name, num_classes, kernel,
                                         logits, mask, target, opts)
  label_index, targets = _split_target(target)
  tangent = jnp.zeros_like(result.loss)
  if not _rows.is_zero_tangent(dlogits) and exps is not None:
    # The forward pass's exp is kept for the backward (see keeps_exp).
    tangent = tangent + _logits_tangent(
        axis_name, logits, mask, stats.shift, result.log_sumexp,
        result.coefficients, opts, label_index, targets, offset, dlogits,
        exps)
  elif not _rows.is_zero_tangent(dlogits):
    # Under jax.checkpoint, reverse mode saves only these inputs and the
    # per-row numbers, and recomputes the softmax in the backward pass. It
    # also keeps XLA from merging that recomputation with the forward pass
    # into one materialised float32 [rows, classes] array.
    tangent = tangent + jax.checkpoint(_logits_tangent, static_argnums=(0,))(
        axis_name, logits, mask, stats.shift, result.log_sumexp,
        result.coefficients, opts, label_index, targets, offset, dlogits)
  if targets is not None and not _rows.is_zero_tangent(dtarget):
    tangent = tangent + jax.checkpoint(_targets_tangent, static_argnums=(0,))(
        axis_name, logits, mask, stats.shift, result.log_sumexp,
        result.coefficients, opts, offset, dtarget)
  if opts.smoothing and not _rows.is_zero_tangent(dopts.label_smoothing):
    tangent = tangent + dopts.label_smoothing * result.d_smoothing
  if opts.z and not _rows.is_zero_tangent(dopts.z_loss):
    tangent = tangent + dopts.z_loss * result.d_z_loss
  # The weights are constants: which rows count, and their class weights.
  return (result.loss, result.weight), (tangent,
                                        jnp.zeros_like(result.weight))


def _rows_on(implementation, num_classes, rows, mask, target, opts):
  """The per-row loss and weight, on the implementation `plan` picks."""
  plan = _implementation.plan(implementation, rows.dtype, num_classes)
  if plan.gradient is not None:
    from jxent import _kernels  # Pallas is imported only when used.
    return _kernels.softmax_cross_entropy_rows(
        num_classes, (plan.stats, plan.gradient), rows, mask, target, opts)
  return softmax_cross_entropy_rows(None, num_classes, plan.stats, rows,
                                    mask, target, opts)


def _prepare_logits(
    logits, axis, where
) -> tuple[jax.Array, jax.Array | None, tuple[int, ...], int]:
  """Validates logits; returns them classes-last, the mask, axes, C."""
  logits = jnp.asarray(logits)
  _checks.check_floating("logits", logits)
  axes = _checks.canonical_axes(axis, logits.ndim)
  mask = _checks.broadcast_where(where, logits.shape, per_row_axes=axes)
  num_classes = math.prod(logits.shape[a] for a in axes)
  logits = _rows.classes_last(logits, axes)
  mask = None if mask is None else _rows.classes_last(mask, axes)
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
  and reverse mode keeps no float32 copy of the logits: the custom
  derivative saves only the inputs and a few float32 numbers per row.

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
    implementation: None (choose), "xla" or "pallas"; see
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
  label_array = jnp.asarray(labels)
  _checks.check_integer("labels", label_array)
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
  sorted_labels = _checks.sort_labels(label_array, num_classes,
                                      opts.ignore_index)
  loss, weight = _rows_on(implementation, num_classes, rows, mask,
                          sorted_labels, opts)
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
  of the logits. The loss is differentiable with respect to `labels` too
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
    implementation: None (the default) chooses: on an NVIDIA GPU, a Pallas
      kernel computes the forward pass's row statistics in one read of the
      logits, inside the XLA path's custom JVP (every differentiation mode
      still works); elsewhere XLA alone. "xla" forces XLA. "pallas" runs
      both passes on Pallas kernels (`jax.grad`, `jax.vjp`: reverse mode
      only) and raises a `ValueError` where it cannot run.

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
  loss, weight = _rows_on(implementation, num_classes, rows, mask,
                          _rows.classes_last(targets, axes), opts)
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
