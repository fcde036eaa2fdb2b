r"""Training losses: softmax and sigmoid cross-entropies.

The two softmax cross-entropies have custom VJPs. Their forward pass saves
only the inputs and two float32 numbers per row (the shift and the log of the
shifted sum of exponentials); the backward pass recomputes the softmax from
the logits, so no float32 array of shape [batch, classes] is kept between
the passes, whatever the dtype of the logits.

The positional signatures match optax's functions of the same names.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import checkify

from jxent import _checks
from jxent._logsumexp import Normalizer, apply_mask, log_sigmoid, normalize

Axis = int | tuple[int, ...]
_LAST = (-1,)


def _classes_last(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Moves the class axes to the end and flattens them into one."""
  if axes == (x.ndim - 1,):
    return x
  batch = [a for a in range(x.ndim) if a not in axes]
  x = jnp.transpose(x, batch + list(axes))
  return x.reshape(x.shape[: len(batch)] + (-1,))


def _reduce(loss: jax.Array, weight: jax.Array, reduction: str) -> jax.Array:
  """Applies `reduction`; "mean" divides by the total weight that counts."""
  if reduction == "none":
    return loss
  if reduction == "sum":
    return jnp.sum(loss)
  total = jnp.sum(weight)
  # An all-ignored batch has no weight: give 0 (and a 0 gradient), not 0/0.
  return jnp.sum(loss) / jnp.where(total > 0, total, 1)


def _valid_classes(norm: Normalizer) -> jax.Array:
  """Classes that can carry probability: unmasked with a logit above -inf."""
  return norm.shifted > -jnp.inf


# --- the shared plan ------------------------------------------------------
#
# Both custom VJPs follow one plan. The forward pass reduces each row once,
# to a few float32 numbers (`RowStats`). The backward pass is then a single
# element-wise pass over the logits: no reduction, and no float32
# [batch, classes] array kept between the passes.


class RowStats(NamedTuple):
  """Per-row float32 numbers saved for the backward pass (keepdims shape).

  Rows that do not count (empty, or ignored) have their coefficients set to
  0 and rows with an illegal label to NaN, so the backward pass needs no
  other bookkeeping. The gradient of a row is
  `g * (prob_coef * q - label_coef * target - smooth_coef * w * valid)`.

  Attributes:
    shift: The max the logits were shifted by.
    log_sumexp: log of the sum of exponentials of the shifted logits.
    prob_coef: Total target mass plus the z-loss term, 2 z LSE.
    label_coef: The weight of the label term.
    smooth_coef: Label smoothing's mass per valid class, alpha / K, or None
      when smoothing is off.
  """

  shift: jax.Array
  log_sumexp: jax.Array
  prob_coef: jax.Array
  label_coef: jax.Array
  smooth_coef: jax.Array | None


def _smoothing_per_class(norm, smoothing):
  """alpha / K for K valid classes in the row (keepdims), or None if off."""
  if smoothing == 0:
    return None
  count = jnp.sum(_valid_classes(norm), axis=-1, keepdims=True)
  # Smoothing spreads its mass over the valid classes of the row only, never
  # over classes masked by `where` or whose logit is -inf.
  return smoothing / jnp.maximum(count, 1).astype(norm.shifted.dtype)


def _z_term(norm, z):
  """Derivative factor of z * LSE^2 with respect to the softmax, 2 z LSE."""
  return 2 * z * (norm.log_sumexp + norm.shift)


def _recompute(logits, where, stats):
  """The forward pass's shifted logits and softmax, from the saved row stats.

  Returns:
    `(shifted, exps, row_scale)`: float32 (or wider) arrays, the first two
    of the logits' shape, with the softmax equal to `exps * row_scale`.
  """
  dtype = _checks.compute_dtype(logits.dtype)

  def shifted_logits(logits, shift):
    return apply_mask(logits, where).astype(dtype) - shift

  def recompute(logits, shift, log_sumexp):
    # Accelerators: exp is cheap next to memory traffic, so recompute it.
    # The barrier keeps XLA from merging this float32 conversion with the
    # forward pass's into one materialised [batch, classes] float32 copy.
    shifted = shifted_logits(lax.optimization_barrier(logits), shift)
    return shifted, jnp.exp(shifted - log_sumexp), jnp.ones_like(log_sumexp)

  def reuse(logits, shift, log_sumexp):
    # CPU: exp costs more than memory traffic. Written exactly as in the
    # forward pass, exp(shifted) is computed once and kept by XLA.
    shifted = shifted_logits(logits, shift)
    return shifted, jnp.exp(shifted), jnp.exp(-log_sumexp)

  return lax.platform_dependent(
      logits, stats.shift, stats.log_sumexp, cpu=reuse, default=recompute
  )


def _per_row(*coefficients):
  """Materialises per-row coefficients before they meet [batch, classes].

  Fused into the element-wise backward, XLA would recompute each of them
  once per class; behind the barrier they are computed once per row.
  """
  return lax.optimization_barrier(coefficients)


# --- integer labels -------------------------------------------------------


def _label_parts(labels, num_classes, class_weights, dtype, ignore_index):
  """Legal labels, a safe class index and the weight of each row's label."""
  in_range = (labels >= 0) & (labels < num_classes)
  legal = in_range
  if ignore_index is not None:
    legal = legal | (labels == ignore_index)
  safe_labels = jnp.where(in_range, labels, 0)[..., None]
  if class_weights is None:
    weight = jnp.ones(safe_labels.shape, dtype)
  else:
    weight = class_weights[safe_labels]
  return in_range, legal, safe_labels, weight


def _class_weight(class_weights, shape):
  """Per-class weights broadcast to the logits' shape (1 when absent)."""
  return 1 if class_weights is None else jnp.broadcast_to(class_weights, shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _integer_ce(logits, labels, mask, class_weights, smoothing, z, ignore):
  return _integer_ce_fwd(
      logits, labels, mask, class_weights, smoothing, z, ignore
  )[0]


def _integer_ce_fwd(logits, labels, mask, class_weights, smoothing, z, ignore):
  norm = normalize(logits, _LAST, mask)
  dtype = norm.shifted.dtype
  in_range, legal, safe_labels, weight = _label_parts(
      labels, norm.shifted.shape[-1], class_weights, dtype, ignore
  )
  label_coef = (1 - smoothing) * weight
  # -log q_y = log_sumexp - (x_y - shift): both sides are exact after the
  # shift, so C equal logits of 1e8 give log C, where lse - x_y gives 0.
  # (Gathering from x, not from x - shift, spares XLA a second consumer of
  # the shifted array, which the CPU backend would materialise.)
  label_logit = jnp.take_along_axis(norm.x, safe_labels, axis=-1)
  loss = label_coef * (norm.log_sumexp - (label_logit - norm.shift))
  prob_coef = label_coef
  smooth_coef = _smoothing_per_class(norm, smoothing)
  if smooth_coef is not None:
    valid = _valid_classes(norm)
    per_class = jnp.where(valid, smooth_coef * _class_weight(class_weights, valid.shape), 0)
    # Valid classes only: a masked class would add 0 * inf.
    neg_log_q = jnp.where(valid, norm.log_sumexp - norm.shifted, 0)
    loss = loss + jnp.sum(per_class * neg_log_q, axis=-1, keepdims=True)
    prob_coef = prob_coef + jnp.sum(per_class, axis=-1, keepdims=True)
  if z > 0:
    loss = loss + z * jnp.square(norm.log_sumexp + norm.shift)
    prob_coef = prob_coef + _z_term(norm, z)
  counts = norm.nonempty & in_range[..., None]
  if ignore is not None:
    counts = counts & (labels != ignore)[..., None]
  # Rows that do not count get 0; a label out of range has no class to
  # pick, so its row gets NaN, never a wrapped-around class.
  keep = jnp.where(legal[..., None], counts.astype(dtype), jnp.nan)
  loss = jnp.where(counts, loss, 0) * jnp.where(legal[..., None], 1, jnp.nan)
  # What "mean" divides by: the label's class weight for rows that count.
  row_weight = jnp.where(counts, weight, 0)
  stats = RowStats(
      norm.shift,
      norm.log_sumexp,
      keep * prob_coef,
      keep * label_coef,
      None if smooth_coef is None else keep * smooth_coef,
  )
  outputs = (loss[..., 0], row_weight[..., 0])
  return outputs, (logits, labels, mask, class_weights, stats)


def _integer_ce_bwd(smoothing, z, ignore, residuals, cotangents):
  del smoothing, z, ignore  # Folded into the saved row coefficients.
  g, _ = cotangents  # The row weights are constants.
  logits, labels, mask, class_weights, stats = residuals
  shifted, exps, row_scale = _recompute(logits, mask, stats)
  g = g[..., None]
  smooth = stats.smooth_coef
  prob_coef, label_coef, smooth = _per_row(
      g * stats.prob_coef * row_scale, g * stats.label_coef,
      None if smooth is None else g * smooth)
  # d/dx of sum_c a_c (-log q_c) + z LSE^2 is (sum_c a_c + 2 z LSE) q - a.
  grad = prob_coef * exps
  if smooth is not None:
    valid = shifted > -jnp.inf
    grad = grad - jnp.where(
        valid, smooth * _class_weight(class_weights, valid.shape), 0
    )
  grad = _subtract_at_labels(grad, labels, label_coef)
  return grad.astype(logits.dtype), None, None, None


def _subtract_at_labels(grad, labels, label_coef):
  """grad[..., label] -= label_coef, row by row, inside the element-wise pass.

  A compare and select per class, not a scatter: a scatter into a gradient
  whose class axis is sharded makes XLA's SPMD partitioner all-gather it
  (and on the CPU it won only about 10% for float32 logits).
  """
  classes = lax.broadcasted_iota(labels.dtype, grad.shape, grad.ndim - 1)
  return grad - jnp.where(classes == labels[..., None], label_coef, 0)


_integer_ce.defvjp(_integer_ce_fwd, _integer_ce_bwd)


def softmax_cross_entropy_with_integer_labels(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    class_weights: jax.typing.ArrayLike | None = None,
    z_loss: float = 0.0,
    reduction: str = "none",
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

  The loss has a custom VJP that keeps no float32 copy of the logits for the
  backward pass. Reverse-over-reverse derivatives (Hessian-vector products)
  work; forward-mode (`jax.jvp`, `jax.jacfwd`) does not.

  Args:
    logits: Floating logits, class axis `axis`. 16-bit logits are computed
      with float32 accumulation; their gradient keeps their dtype.
    labels: Integer class indices with the shape of `logits` without `axis`.
      With a tuple `axis`, they index the flattened class axes.
    axis: The class axis, or a tuple of class axes.
    where: Boolean mask broadcastable to `logits`; masked classes get no
      probability. A row with every class masked is empty: loss 0,
      gradient 0, and it does not count in the "mean".
    ignore_index: Rows whose label equals it give loss 0, gradient 0 and do
      not count in the "mean".
    label_smoothing: :math:`\alpha` in [0, 1].
    class_weights: Optional float array of shape [classes], PyTorch's
      `weight`. It is treated as a constant (no gradient flows to it).
    z_loss: :math:`\lambda_z \ge 0`, PaLM's auxiliary z-loss.
    reduction: "none" (one value per row), "sum", or "mean", which divides
      by the total weight :math:`\sum w_y` of the rows that count (for an
      all-ignored batch it gives 0, where PyTorch gives NaN).

  Returns:
    Float32 (or wider) array of the batch shape for "none", else a scalar.
    A label outside [0, classes) that is not `ignore_index` gives NaN; wrap
    the call with `jxent.checked` to raise an error instead.

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
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _checks.check_floating("logits", logits)
  labels = _checks.integer_labels(labels)
  axes = _checks.canonical_axes(axis, logits.ndim)
  label_smoothing = _checks.check_label_smoothing(label_smoothing)
  z_loss = _checks.check_z_loss(z_loss)
  reduction = _checks.check_reduction(reduction)
  ignore_index = _checks.check_ignore_index(ignore_index)
  mask = _checks.broadcast_where(where, logits.shape)
  logits_shape = logits.shape
  logits = _classes_last(logits, axes)
  mask = None if mask is None else _classes_last(mask, axes)
  if labels.shape != logits.shape[:-1]:
    raise ValueError(
        f"`labels` must have the shape of `logits` without the class axis"
        f" {axis}: expected {logits.shape[:-1]}, got labels.shape="
        f"{labels.shape} for logits.shape={logits_shape}."
    )
  num_classes = logits.shape[-1]
  if class_weights is not None:
    class_weights = _checks.per_class("class_weights", class_weights,
                                      num_classes)
    class_weights = lax.stop_gradient(
        class_weights.astype(_checks.compute_dtype(logits.dtype)))
  check_labels(labels, num_classes, ignore_index=ignore_index)
  loss, weight = _integer_ce(
      logits, labels, mask, class_weights, label_smoothing, z_loss,
      ignore_index,
  )
  return _reduce(loss, weight, reduction)


def check_labels(
    labels: jax.Array, num_classes: int, *, ignore_index: int | None = None
) -> None:
  """Declares that `labels` lie in [0, num_classes) or equal `ignore_index`.

  The check is a `jax.experimental.checkify.debug_check`: it does nothing
  unless the caller is transformed by `checkify.checkify` (for instance by
  `jxent.checked`), in which case a bad label becomes an error.
  """
  if labels.size == 0:
    return  # Nothing to check, and min/max of nothing is undefined.
  ok = (labels >= 0) & (labels < num_classes)
  if ignore_index is not None:
    ok = ok | (labels == ignore_index)
  checkify.debug_check(
      jnp.all(ok),
      f"labels must lie in [0, {num_classes})"
      + ("" if ignore_index is None else f" or equal {ignore_index}")
      + "; the smallest is {lo} and the largest {hi}.",
      lo=jnp.min(labels),
      hi=jnp.max(labels),
  )


# --- soft labels ----------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _soft_ce(logits, labels, mask, smoothing, z):
  return _soft_ce_fwd(logits, labels, mask, smoothing, z)[0]


def _masked_labels(labels, mask, dtype):
  labels = labels.astype(dtype)
  # Labels on classes masked by `where` are ignored, like the classes.
  return labels if mask is None else jnp.where(mask, labels, 0)


def _soft_ce_fwd(logits, labels, mask, smoothing, z):
  norm = normalize(logits, _LAST, mask)
  dtype = norm.shifted.dtype
  targets = _masked_labels(labels, mask, dtype)
  # The loss sum_c t_c (log_sumexp - shifted_c) is gathered from row sums,
  # so the forward pass is reductions only. 0 log 0 = 0: a class without
  # label mass adds nothing, even where its logit is -inf.
  has_mass = targets != 0
  label_mass = jnp.sum(targets, axis=-1, keepdims=True)
  label_dot = jnp.sum(
      jnp.where(has_mass, targets * jnp.where(has_mass, norm.shifted, 0), 0),
      axis=-1, keepdims=True)
  loss = (1 - smoothing) * (label_mass * norm.log_sumexp - label_dot)
  prob_coef = (1 - smoothing) * label_mass
  smooth_coef = _smoothing_per_class(norm, smoothing)
  if smooth_coef is not None:
    valid = _valid_classes(norm)
    # Sum shifted / C, not shifted: a row of logits near the float limits
    # would overflow the plain sum.
    num_classes = norm.shifted.shape[-1]
    valid_mean = jnp.sum(jnp.where(valid, norm.shifted / num_classes, 0),
                         axis=-1, keepdims=True)
    smooth_mass = jnp.where(norm.nonempty, smoothing, 0)
    loss = loss + smooth_mass * norm.log_sumexp - (
        smooth_coef * num_classes) * valid_mean
    prob_coef = prob_coef + smooth_mass
  if z > 0:
    loss = loss + z * jnp.square(norm.log_sumexp + norm.shift)
    prob_coef = prob_coef + _z_term(norm, z)
  keep = norm.nonempty.astype(dtype)
  loss = jnp.where(norm.nonempty, loss, 0)
  outputs = (loss[..., 0], keep[..., 0])
  stats = RowStats(
      norm.shift,
      norm.log_sumexp,
      keep * prob_coef,
      keep * (1 - smoothing),
      None if smooth_coef is None else keep * smooth_coef,
  )
  return outputs, (logits, labels, mask, stats)


def _soft_ce_bwd(smoothing, z, residuals, cotangents):
  del smoothing, z  # Folded into the saved row coefficients.
  g, _ = cotangents  # Whether a row counts is a constant.
  logits, labels, mask, stats = residuals
  shifted, exps, row_scale = _recompute(logits, mask, stats)
  g = g[..., None]
  smooth = stats.smooth_coef
  prob_coef, label_coef, smooth, log_sumexp = _per_row(
      g * stats.prob_coef * row_scale, g * stats.label_coef,
      None if smooth is None else g * smooth, stats.log_sumexp)
  labels_c = _masked_labels(labels, mask, shifted.dtype)
  grad = prob_coef * exps - label_coef * labels_c
  if smooth is not None:
    grad = grad - jnp.where(shifted > -jnp.inf, smooth, 0)
  # The labels enter only through (1 - alpha) * labels on unmasked classes.
  coef = jnp.broadcast_to(label_coef, shifted.shape)
  if mask is not None:
    coef = jnp.where(mask, coef, 0)
  grad_labels = jnp.where(coef != 0, coef * (log_sumexp - shifted), 0)
  return grad.astype(logits.dtype), grad_labels.astype(labels.dtype), None


_soft_ce.defvjp(_soft_ce_fwd, _soft_ce_bwd)


def softmax_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis: Axis = -1,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "none",
) -> jax.Array:
  r"""Softmax cross-entropy against soft (probability) or one-hot labels.

  .. math::
     \ell = -\sum_c t_c \log q_c + \lambda_z \operatorname{LSE}(z)^2,
     \qquad t = (1 - \alpha)\, y + \alpha\, u,
     \quad q = \operatorname{softmax}(z)

  where :math:`u` is uniform over the valid classes of the row (not masked
  by `where`, logit above -inf). Labels need not sum to 1.

  The loss has a custom VJP that keeps no float32 copy of the logits, and
  it stays differentiable with respect to `labels` (for distillation):
  :math:`\partial \ell / \partial y_c = -(1 - \alpha) \log q_c`.
  Reverse-over-reverse derivatives work; forward mode does not.

  Args:
    logits: Floating logits, class axis `axis`.
    labels: Floating label probabilities, the same shape as `logits`.
    axis: The class axis, or a tuple of class axes.
    where: Boolean mask broadcastable to `logits`; masked classes get no
      probability, and their labels are ignored. A row with every class
      masked gives loss 0 and gradient 0.
    label_smoothing: :math:`\alpha` in [0, 1].
    z_loss: :math:`\lambda_z \ge 0`, PaLM's auxiliary z-loss.
    reduction: "none" (one value per row), "sum", or "mean" over the rows
      that are not empty.

  Returns:
    Float32 (or wider) array of the batch shape for "none", else a scalar.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> logits = jnp.log(jnp.array([0.7, 0.1, 0.05, 0.15]))
    >>> labels = jnp.array([1.0, 0.0, 0.0, 0.0])
    >>> print(jxent.softmax_cross_entropy(logits, labels).round(4))
    0.3567
  """
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _checks.check_floating("logits", logits)
  _checks.check_floating("labels", labels)
  _checks.check_same_shape("logits", logits, "labels", labels)
  axes = _checks.canonical_axes(axis, logits.ndim)
  label_smoothing = _checks.check_label_smoothing(label_smoothing)
  z_loss = _checks.check_z_loss(z_loss)
  reduction = _checks.check_reduction(reduction)
  mask = _checks.broadcast_where(where, logits.shape)
  logits, labels = _classes_last(logits, axes), _classes_last(labels, axes)
  mask = None if mask is None else _classes_last(mask, axes)
  loss, weight = _soft_ce(logits, labels, mask, label_smoothing, z_loss)
  return _reduce(loss, weight, reduction)


# --- sigmoid --------------------------------------------------------------


def sigmoid_binary_cross_entropy(
    logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    pos_weight: jax.typing.ArrayLike | None = None,
    reduction: str = "none",
) -> jax.Array:
  r"""Element-wise binary cross-entropy of sigmoid probabilities.

  .. math:: \ell = -w_+\, y \log \sigma(z) - (1 - y) \log (1 - \sigma(z))

  computed as :math:`w_+ y \operatorname{softplus}(-z)
  + (1 - y) \operatorname{softplus}(z)`, stable for any logit. Equals
  PyTorch's `binary_cross_entropy_with_logits`.

  Args:
    logits: Floating logits, any shape.
    labels: Floating targets in [0, 1], the same shape as `logits`.
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
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  _checks.check_floating("logits", logits)
  _checks.check_floating("labels", labels)
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
  # A zero weight times an infinite softplus is 0 here, not NaN: select
  # the term away rather than multiply by 0.
  loss = jnp.where(positive != 0, -positive * log_sigmoid(x), 0) + jnp.where(
      negative != 0, -negative * log_sigmoid(-x), 0
  )
  return _reduce(loss, jnp.ones_like(loss), reduction)
