r"""Vocabulary-parallel losses, for use inside `jax.shard_map`.

When the logits, or the output projection W, are split along the vocabulary
over a named mesh axis (Megatron-style tensor parallelism), every function
here works on the *local* shard and combines per-row statistics with
collectives over `axis_name`; nothing of vocabulary size is ever gathered:

* each device takes the max of its shard; `lax.pmax` gives the global max,
  under `stop_gradient` (the result does not depend on it);
* each device sums `exp(x - max)` over its shard; `lax.psum` adds the sums;
* quantities that are sums over classes (the label logit, picked by the
  device that owns the label; the sum of logits for smoothing; entropy and
  KL terms) are summed locally and `psum`-ed.

Gradients come from JAX's autodiff of `psum` inside `shard_map` (with its
default `check_vma=True`), so the backward pass is local to each shard plus
a `psum` of per-row numbers. Labels are *global* class indices; a shard
knows its offset as `lax.axis_index(axis_name) * local_vocab`.

Every function must be called inside `jax.shard_map` (or another context
that binds `axis_name`). The vocabulary must split evenly over the axis;
`pad_vocab` pads it with classes that carry no probability.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _checks
from jxent._classification import _valid_classes, check_labels
from jxent._information import entropy_rows, kl_rows
from jxent._logsumexp import Normalizer, normalize

_AxisName = str | tuple[str, ...]


_LAST = (-1,)


def _stats(x, axis_name, mask) -> Normalizer:
  """The shared log-sum-exp over the whole, split class axis (last axis)."""
  return normalize(x, _LAST, mask, axis_name)


def _local(name, x, axis_name):
  """Checks a floating local shard; returns it, its width and its offset."""
  x = jnp.asarray(x)
  _checks.check_floating(name, x)
  if x.ndim < 1:
    raise ValueError(f"`{name}` needs a class axis, got a scalar.")
  local_vocab = x.shape[-1]
  offset = lax.axis_index(axis_name) * local_vocab
  return x, local_vocab, offset


def _finish(loss, weight, reduction, batch_axis_name):
  """`_reduce`, with the batch sums also taken over `batch_axis_name`."""
  if reduction == "none":
    return loss
  total = jnp.sum(loss)
  if batch_axis_name is not None:
    total = lax.psum(total, batch_axis_name)
  if reduction == "sum":
    return total
  count = jnp.sum(weight)
  if batch_axis_name is not None:
    count = lax.psum(count, batch_axis_name)
  # An all-ignored batch has no weight: give 0 (and a 0 gradient), not 0/0.
  return total / jnp.where(count > 0, count, 1)


def _integer_loss(stats, labels, offset, axis_name, smoothing, z, ignore,
                  num_classes):
  """Per-row integer-label loss and its "mean" weight, from global stats."""
  local_vocab = stats.shifted.shape[-1]
  local_labels = labels - offset
  owns = (local_labels >= 0) & (local_labels < local_vocab)
  safe = jnp.where(owns, local_labels, 0)[..., None]
  picked = jnp.take_along_axis(stats.shifted, safe, axis=-1)
  # Only the owner contributes; the others add an exact 0.
  shifted_label = lax.psum(jnp.where(owns[..., None], picked, 0), axis_name)
  # -log q_y = log_sumexp - shifted_y, exact for huge equal logits.
  loss = (1 - smoothing) * (stats.log_sumexp - shifted_label)
  if smoothing:
    valid = _valid_classes(stats)
    count = lax.psum(jnp.sum(valid, axis=-1, keepdims=True), axis_name)
    count = jnp.maximum(count, 1).astype(loss.dtype)
    shifted_sum = lax.psum(
        jnp.sum(jnp.where(valid, stats.shifted, 0), axis=-1, keepdims=True),
        axis_name)
    # sum over the K valid classes of (log_sumexp - shifted_c), times a / K.
    loss = loss + smoothing * (stats.log_sumexp - shifted_sum / count)
  if z:
    loss = loss + z * jnp.square(stats.log_sumexp + stats.shift)
  in_range = (labels >= 0) & (labels < num_classes)
  legal, counts = in_range, in_range & stats.nonempty[..., 0]
  if ignore is not None:
    legal = legal | (labels == ignore)
    counts = counts & (labels != ignore)
  # Rows that do not count give 0; an illegal label gives NaN.
  loss = jnp.where(counts, loss[..., 0], 0) * jnp.where(legal, 1, jnp.nan)
  return loss, counts.astype(loss.dtype)


def _integer_options(labels, ignore_index, label_smoothing, z_loss,
                     reduction):
  labels = jnp.asarray(labels)
  labels = _checks.integer_labels(labels)
  return (
      labels,
      _checks.check_ignore_index(ignore_index),
      _checks.check_label_smoothing(label_smoothing),
      _checks.check_z_loss(z_loss),
      _checks.check_reduction(reduction),
  )


def _check_label_shape(labels, batch_shape, what):
  if labels.shape != batch_shape:
    raise ValueError(
        f"`labels` must have the shape of {what} without the class axis:"
        f" expected {batch_shape}, got labels.shape={labels.shape}."
    )


def softmax_cross_entropy_with_integer_labels(
    local_logits: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis_name: _AxisName,
    where: jax.typing.ArrayLike | None = None,
    *,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "none",
    batch_axis_name: _AxisName | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels, vocabulary split on a mesh.

  .. math::
     \ell = (1 - \alpha)(-\log q_y)
       + \frac{\alpha}{K} \sum_{c\ \mathrm{valid}} (-\log q_c)
       + \lambda_z \operatorname{LSE}(z)^2

  It equals `jxent.softmax_cross_entropy_with_integer_labels` on the full
  logits (without `class_weights`), in value and gradient. Call it inside
  `jax.shard_map`; the class axis is the last one.

  Args:
    local_logits: This device's floating logits, shape [..., V / n], the
      columns `[i * V / n, (i + 1) * V / n)` for device `i` of `axis_name`.
    labels: Integer *global* class indices, shape `local_logits.shape[:-1]`,
      the same on every device of `axis_name`.
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    where: Boolean mask broadcastable to `local_logits`; masked classes get
      no probability.
    ignore_index: Rows with this label give 0 and do not count in "mean".
    label_smoothing: :math:`\alpha` in [0, 1], spread over valid classes.
    z_loss: :math:`\lambda_z \ge 0`.
    reduction: "none", "sum" or "mean" (over the rows that count).
    batch_axis_name: Mesh axis (or axes) the batch is split over. With it,
      "sum" and "mean" are over the global batch; without it, over this
      device's rows only. "none" always gives this device's rows.

  Returns:
    Float32 (or wider) per-row losses of shape `labels.shape` for "none",
    else a scalar; the same on every device of `axis_name`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import _sharded as sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda z, y: sharded.softmax_cross_entropy_with_integer_labels(
    ...         z, y, "vocab"),
    ...     mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())
    >>> logits = jnp.log(jnp.array([[0.7, 0.1, 0.05, 0.15]]))
    >>> print(loss(logits, jnp.array([0])).round(4))
    [0.3567]
  """
  local_logits, local_vocab, offset = _local(
      "local_logits", local_logits, axis_name)
  labels, ignore, smoothing, z, reduction = _integer_options(
      labels, ignore_index, label_smoothing, z_loss, reduction)
  _check_label_shape(labels, local_logits.shape[:-1], "`local_logits`")
  num_classes = local_vocab * lax.axis_size(axis_name)
  check_labels(labels, num_classes, ignore_index=ignore)
  mask = _checks.broadcast_where(where, local_logits.shape)
  stats = _stats(local_logits, axis_name, mask)
  loss, weight = _integer_loss(stats, labels, offset, axis_name, smoothing,
                               z, ignore, num_classes)
  return _finish(loss, weight, reduction, batch_axis_name)


def softmax_cross_entropy(
    local_logits: jax.typing.ArrayLike,
    local_labels: jax.typing.ArrayLike,
    axis_name: _AxisName,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "none",
    batch_axis_name: _AxisName | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with soft labels, vocabulary split on a mesh.

  .. math::
     \ell = -\sum_c t_c \log q_c + \lambda_z \operatorname{LSE}(z)^2,
     \qquad t = (1 - \alpha)\, y + \alpha\, u

  It equals `jxent.softmax_cross_entropy` on the full arrays, in value and
  in the gradients for both logits and labels, except that the gradient for
  a label on a class whose logit is -inf is 0 here (+inf there).

  Args:
    local_logits: This device's floating logits, shape [..., V / n].
    local_labels: This device's slice of the label probabilities, the same
      shape.
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    where: Boolean mask broadcastable to `local_logits`.
    label_smoothing: :math:`\alpha` in [0, 1].
    z_loss: :math:`\lambda_z \ge 0`.
    reduction: "none", "sum" or "mean" (over rows that are not empty).
    batch_axis_name: Mesh axis the batch is split over, for "sum"/"mean".

  Returns:
    Per-row losses of shape `local_logits.shape[:-1]`, or a scalar.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import _sharded as sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda z, y: sharded.softmax_cross_entropy(z, y, "vocab"),
    ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
    >>> logits = jnp.log(jnp.array([[0.7, 0.1, 0.05, 0.15]]))
    >>> print(loss(logits, jnp.array([[1.0, 0.0, 0.0, 0.0]])).round(4))
    [0.3567]
  """
  local_logits, _, _ = _local("local_logits", local_logits, axis_name)
  local_labels = jnp.asarray(local_labels)
  _checks.check_floating("labels", local_labels)
  _checks.check_same_shape("local_logits", local_logits, "local_labels",
                           local_labels)
  smoothing = _checks.check_label_smoothing(label_smoothing)
  z = _checks.check_z_loss(z_loss)
  reduction = _checks.check_reduction(reduction)
  mask = _checks.broadcast_where(where, local_logits.shape)
  stats = _stats(local_logits, axis_name, mask)
  dtype = stats.shifted.dtype
  labels = local_labels.astype(dtype)
  if mask is not None:
    labels = jnp.where(mask, labels, 0)
  targets = (1 - smoothing) * labels
  if smoothing:
    count = lax.psum(jnp.sum(_valid_classes(stats), axis=-1, keepdims=True), axis_name)
    per_class = smoothing / jnp.maximum(count, 1).astype(dtype)
    targets = targets + jnp.where(_valid_classes(stats), per_class, 0)
  # 0 log 0 = 0, with the double where keeping the gradient finite.
  nonzero = targets != 0
  neg_log_q = -stats.log_probs
  terms = jnp.where(nonzero, lax.stop_gradient(targets) * jnp.where(
      nonzero, neg_log_q, 0), 0)
  # The labels' gradient, -(1 - a) log q_c, also where a label is 0: this
  # term is 0 in value, and finite (0) on classes that cannot carry mass.
  terms = terms + (targets - lax.stop_gradient(targets)) * jnp.where(
      _valid_classes(stats), lax.stop_gradient(neg_log_q), 0)
  loss = lax.psum(jnp.sum(terms, axis=-1, keepdims=True), axis_name)
  if z:
    loss = loss + z * jnp.square(stats.log_sumexp + stats.shift)
  nonempty = stats.nonempty[..., 0]
  loss = jnp.where(nonempty, loss[..., 0], 0)
  return _finish(loss, nonempty.astype(dtype), reduction, batch_axis_name)


def entropy_from_logits(
    local_logits: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""Entropy of `softmax(logits)` in nats, vocabulary split on a mesh.

  .. math:: H(P) = -\sum_x P(x) \log P(x)

  It equals `jxent.entropy_from_logits` on the full logits.

  Args:
    local_logits: This device's floating logits, shape [..., V / n].
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    where: Boolean mask broadcastable to `local_logits`.

  Returns:
    Array of shape `local_logits.shape[:-1]`, the same on every device of
    `axis_name`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import _sharded as sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> entropy = jax.shard_map(
    ...     lambda z: sharded.entropy_from_logits(z, "vocab"),
    ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
    >>> print(entropy(jnp.zeros((1, 4))).round(4))  # log 4
    [1.3863]
  """
  local_logits, _, _ = _local("local_logits", local_logits, axis_name)
  mask = _checks.broadcast_where(where, local_logits.shape)
  stats = _stats(local_logits, axis_name, mask)
  return entropy_rows(stats, _LAST, axis_name)[..., 0]


def kl_divergence_from_logits(
    local_p_logits: jax.typing.ArrayLike,
    local_q_logits: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    where: jax.typing.ArrayLike | None = None,
) -> jax.Array:
  r"""KL divergence D_KL(P || Q) in nats, vocabulary split on a mesh.

  .. math:: D_{KL}(P \| Q) = \sum_x P(x) (\log P(x) - \log Q(x))

  It equals `jxent.kl_divergence_from_logits` on the full logits.

  Args:
    local_p_logits: This device's logits of the data distribution P.
    local_q_logits: This device's logits of the model distribution Q, the
      same shape.
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    where: Boolean mask applied to both.

  Returns:
    Array of shape `local_p_logits.shape[:-1]`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import _sharded as sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> kl = jax.shard_map(
    ...     lambda p, q: sharded.kl_divergence_from_logits(p, q, "vocab"),
    ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
    >>> p = jnp.log(jnp.array([[0.9, 0.1]]))
    >>> print(kl(p, jnp.zeros((1, 2))).round(4))
    [0.3681]
  """
  local_p_logits, _, _ = _local("local_p_logits", local_p_logits, axis_name)
  local_q_logits, _, _ = _local("local_q_logits", local_q_logits, axis_name)
  _checks.check_same_shape("local_p_logits", local_p_logits,
                           "local_q_logits", local_q_logits)
  mask = _checks.broadcast_where(where, local_p_logits.shape)
  p = _stats(local_p_logits, axis_name, mask)
  q = _stats(local_q_logits, axis_name, mask)
  return kl_rows(p, q, _LAST, axis_name)[..., 0]


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    local_w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    local_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "mean",
    batch_axis_name: _AxisName | None = None,
) -> jax.Array:
  r"""Cross-entropy of `x @ w + bias` with W split along the vocabulary.

  Each device makes only its own [tokens, V / n] block of logits, and the
  rows are combined as in `softmax_cross_entropy_with_integer_labels`. It
  equals `jxent.linear_softmax_cross_entropy(x, w, labels, ...)`, in value
  and in the gradients for `x`, `w` and `bias`. The gradient for `x` is
  summed over `axis_name` by `shard_map`'s autodiff.

  Unlike `jxent.linear_softmax_cross_entropy`, the local logits are made in
  one block (memory [tokens, V / n] in float32 per device, kept for the
  backward pass).

  Args:
    x: Hidden states, shape [..., D], the same on every device of
      `axis_name`.
    local_w: This device's columns of the output projection, [D, V / n].
    labels: Integer global token indices, shape `x.shape[:-1]`.
    axis_name: The mesh axis (or axes) W's columns are split over.
    local_bias: This device's slice of the bias, shape [V / n], or None.
    vocab_size: The true vocabulary V when W was padded with `pad_vocab`:
      columns at or past it are masked out. None means no padding.
    ignore_index: Rows with this label give 0 and do not count in "mean".
    label_smoothing: :math:`\alpha` in [0, 1].
    z_loss: :math:`\lambda_z \ge 0`.
    logit_softcap: Soft cap :math:`c > 0` on the logits, or None.
    reduction: "mean" (default), "sum" or "none".
    batch_axis_name: Mesh axis the batch is split over, for "sum"/"mean".

  Returns:
    Float32 scalar, or per-row losses of shape `x.shape[:-1]` for "none".

  Raises:
    ValueError: If `vocab_size` is larger than the padded vocabulary.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import _sharded as sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda x, w, y: sharded.linear_softmax_cross_entropy(
    ...         x, w, y, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P()), out_specs=P())
    >>> print(loss(jnp.ones((2, 3)), jnp.zeros((3, 5)), jnp.array([0, 4]))
    ...       .round(4))  # uniform over 5 tokens: log 5
    1.6094
  """
  x, local_w = jnp.asarray(x), jnp.asarray(local_w)
  _checks.check_floating("x", x)
  _checks.check_floating("local_w", local_w)
  if x.ndim < 1 or local_w.ndim != 2 or x.shape[-1] != local_w.shape[0]:
    raise ValueError(
        f"`x` must have shape [..., D] and `local_w` shape [D, V / n], got"
        f" x.shape={x.shape} and local_w.shape={local_w.shape}."
    )
  labels, ignore, smoothing, z, reduction = _integer_options(
      labels, ignore_index, label_smoothing, z_loss, reduction)
  _check_label_shape(labels, x.shape[:-1], "`x`")
  local_vocab = local_w.shape[1]
  padded_vocab = local_vocab * lax.axis_size(axis_name)
  num_classes = padded_vocab if vocab_size is None else int(vocab_size)
  if not 0 < num_classes <= padded_vocab:
    raise ValueError(
        f"`vocab_size` must be in (0, {padded_vocab}], the padded vocabulary"
        f" ({local_vocab} columns on each of {padded_vocab // local_vocab}"
        f" devices), got {vocab_size!r}."
    )
  cap = _checks.check_softcap(logit_softcap)
  acc = _checks.compute_dtype(x.dtype, local_w.dtype)
  if x.dtype != local_w.dtype:
    x, local_w = x.astype(acc), local_w.astype(acc)
  check_labels(labels, num_classes, ignore_index=ignore)
  logits = jnp.dot(x, local_w, preferred_element_type=acc)
  if local_bias is not None:
    local_bias = _checks.per_class("local_bias", local_bias, local_vocab)
    logits = logits + jnp.broadcast_to(local_bias.astype(acc), logits.shape)
  if cap is not None:
    logits = cap * jnp.tanh(logits / cap)
  offset = lax.axis_index(axis_name) * local_vocab
  mask = None
  if num_classes < padded_vocab:
    columns = offset + lax.broadcasted_iota(jnp.int32, (local_vocab,), 0)
    mask = jnp.broadcast_to(columns < num_classes, logits.shape)
  stats = _stats(logits, axis_name, mask)
  loss, weight = _integer_loss(stats, labels, offset, axis_name, smoothing,
                               z, ignore, num_classes)
  return _finish(loss, weight, reduction, batch_axis_name)


def pad_vocab(
    x: jax.typing.ArrayLike,
    multiple: int,
    *,
    axis: int = -1,
    value: float | None = None,
) -> jax.Array:
  """Pads the vocabulary axis up to a multiple of the mesh axis size.

  Padded logits are -inf (the default `value` for floating `x`), so the
  padded classes carry no probability, receive no label smoothing and add
  nothing to entropy or KL: every sharded loss on padded logits equals the
  unsharded loss on the original ones, and the padded columns get a zero
  gradient. Pad soft labels with `value=0`. For the output projection W,
  pad with `value=0` (zero columns) and pass the true `vocab_size` to
  `linear_softmax_cross_entropy`, which masks those columns.

  Args:
    x: Array whose `axis` is the vocabulary.
    multiple: The size of the mesh axis the vocabulary is split over.
    axis: The vocabulary axis.
    value: The fill; None gives -inf.

  Returns:
    `x` with `axis` padded at the end to the next multiple of `multiple`.

  Examples:
    >>> import jax.numpy as jnp
    >>> from jxent import _sharded as sharded
    >>> print(sharded.pad_vocab(jnp.zeros((1, 3)), 4))
    [[  0.   0.   0. -inf]]
  """
  x = jnp.asarray(x)
  multiple = int(multiple)
  if multiple < 1:
    raise ValueError(f"`multiple` must be >= 1, got {multiple}.")
  axis = axis % x.ndim
  extra = -x.shape[axis] % multiple
  if not extra:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  fill = -jnp.inf if value is None else value
  return jnp.pad(x, widths, constant_values=jnp.asarray(fill, x.dtype))
