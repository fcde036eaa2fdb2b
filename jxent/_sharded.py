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

The functions are the plain ones with an `axis_name`: the same row step
(`jxent._cross_entropy.rows`) and the same custom derivatives, whose tangent
is summed over the axis with `psum`. The backward pass is local to each shard, and
reverse mode saves only the local inputs and a few numbers per row, never
a float32 copy of the local logits. The linear loss walks its local columns
in blocks. Labels are *global* class indices; a shard knows its offset as
`lax.axis_index(axis_name) * local_vocab`.

Every function must be called inside `jax.shard_map` (or another context
that binds `axis_name`). The vocabulary must split evenly over the axis;
`pad_vocab` pads it with classes that carry no probability.
"""

import jax
import jax.numpy as jnp
from jax import lax

from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy.xla import softmax_cross_entropy_rows
from jxent._information.logits import entropy_rows, pair_rows
from jxent._numerics import checks as _checks
from jxent._numerics.options import parse_options
from jxent._vocab import cross_entropy as _linear
from jxent._vocab import divergences as _linear_divergences
from jxent._vocab import log_probs as _linear_log_probs
from jxent._vocab import top_k as _linear_top_k
from jxent._vocab.blocks import Walk

_AxisName = str | tuple[str, ...]


def _local(name: str, x) -> jax.Array:
  """Checks a floating local shard (classes last); returns it."""
  x = jnp.asarray(x)
  _checks.check_floating(name, x)
  if x.ndim < 1:
    raise ValueError(f"`{name}` needs a class axis, got a scalar.")
  return x


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
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    class_weights: jax.typing.ArrayLike | None = None,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    reduction: _checks.Reduction = "none",
    batch_axis_name: _AxisName | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with integer labels, vocabulary split on a mesh.

  .. math::
     \ell = (1 - \alpha)(-\log q_y)
       + \frac{\alpha}{K} \sum_{c\ \mathrm{valid}} (-\log q_c)
       + \lambda_z \operatorname{LSE}(z)^2

  It equals `jxent.softmax_cross_entropy_with_integer_labels` on the full
  logits, in value and in every derivative, with the same custom
  derivative. Call it inside `jax.shard_map`; the class axis is the last
  one.

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
    class_weights: Optional weights of *all* classes, shape [V] (not this
      device's slice), PyTorch's `weight`; a constant.
    z_loss: :math:`\lambda_z \ge 0`.
    reduction: "none", "sum" or "mean" (over the total weight of the rows
      that count).
    batch_axis_name: Mesh axis (or axes) the batch is split over. With it,
      "sum" and "mean" are over the global batch; without it, over this
      device's rows only. "none" always gives this device's rows.

  Returns:
    Float32 (or wider) per-row losses of shape `labels.shape` for "none",
    else a scalar; the same on every device of `axis_name`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda z, y: sharded.softmax_cross_entropy_with_integer_labels(
    ...         z, y, "vocab"),
    ...     mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())
    >>> logits = jnp.log(jnp.array([[0.7, 0.1, 0.05, 0.15]]))
    >>> print(loss(logits, jnp.array([0])).round(4))
    [0.3567]
  """
  local_logits = _local("local_logits", local_logits)
  labels = _checks.as_labels("labels", labels)
  _check_label_shape(labels, local_logits.shape[:-1], "`local_logits`")
  num_classes = local_logits.shape[-1] * lax.axis_size(axis_name)
  opts = parse_options(
      label_smoothing=label_smoothing, z_loss=z_loss,
      class_weights=class_weights, num_classes=num_classes,
      dtype=_checks.compute_dtype(local_logits.dtype),
      ignore_index=ignore_index, reduction=reduction)
  mask = _checks.broadcast_where(where, local_logits.shape)
  # A row whose every class (on every shard) `where` masks is excluded: its
  # label is never looked at, as in the unsharded loss.
  excluded = None if mask is None else lax.psum(
      jnp.any(mask, axis=-1).astype(jnp.int32), axis_name) == 0
  sorted_labels = _checks.sort_labels(labels, num_classes, opts.ignore_index,
                                      excluded)
  loss, weight = softmax_cross_entropy_rows(
      axis_name, num_classes, (), local_logits, mask, sorted_labels, opts)
  return _rows.reduce(loss, weight, opts.reduction, batch_axis_name)


def softmax_cross_entropy(
    local_logits: jax.typing.ArrayLike,
    local_labels: jax.typing.ArrayLike,
    axis_name: _AxisName,
    where: jax.typing.ArrayLike | None = None,
    *,
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    class_weights: jax.typing.ArrayLike | None = None,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    reduction: _checks.Reduction = "none",
    batch_axis_name: _AxisName | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy with soft labels, vocabulary split on a mesh.

  .. math::
     \ell = -\sum_c t_c \log q_c + \lambda_z \operatorname{LSE}(z)^2,
     \qquad t = (1 - \alpha)\, y + \alpha\, u

  It equals `jxent.softmax_cross_entropy` on the full arrays, in value and
  in every derivative for both logits and labels (the same custom
  derivative; a label's gradient on a class whose logit is -inf is 0 in
  both).

  Args:
    local_logits: This device's floating logits, shape [..., V / n].
    local_labels: This device's slice of the label probabilities, the same
      shape.
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    where: Boolean mask broadcastable to `local_logits`.
    label_smoothing: :math:`\alpha` in [0, 1].
    class_weights: Optional weights of *all* classes, shape [V]; a
      constant.
    z_loss: :math:`\lambda_z \ge 0`.
    reduction: "none", "sum" or "mean" (over rows that are not empty).
    batch_axis_name: Mesh axis the batch is split over, for "sum"/"mean".

  Returns:
    Per-row losses of shape `local_logits.shape[:-1]`, or a scalar.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda z, y: sharded.softmax_cross_entropy(z, y, "vocab"),
    ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
    >>> logits = jnp.log(jnp.array([[0.7, 0.1, 0.05, 0.15]]))
    >>> print(loss(logits, jnp.array([[1.0, 0.0, 0.0, 0.0]])).round(4))
    [0.3567]
  """
  local_logits = _local("local_logits", local_logits)
  local_labels = _checks.as_floating("labels", local_labels)
  _checks.check_same_shape("local_logits", local_logits, "local_labels",
                           local_labels)
  num_classes = local_logits.shape[-1] * lax.axis_size(axis_name)
  opts = parse_options(
      label_smoothing=label_smoothing, z_loss=z_loss,
      class_weights=class_weights, num_classes=num_classes,
      dtype=_checks.compute_dtype(local_logits.dtype), reduction=reduction)
  mask = _checks.broadcast_where(where, local_logits.shape)
  loss, weight = softmax_cross_entropy_rows(
      axis_name, num_classes, (), local_logits, mask, local_labels, opts)
  return _rows.reduce(loss, weight, opts.reduction, batch_axis_name)


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
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> entropy = jax.shard_map(
    ...     lambda z: sharded.entropy_from_logits(z, "vocab"),
    ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
    >>> print(entropy(jnp.zeros((1, 4))).round(4))  # log 4
    [1.3863]
  """
  local_logits = _local("local_logits", local_logits)
  mask = _checks.broadcast_where(where, local_logits.shape)
  return entropy_rows(axis_name, "xla", local_logits, mask)


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
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> kl = jax.shard_map(
    ...     lambda p, q: sharded.kl_divergence_from_logits(p, q, "vocab"),
    ...     mesh=mesh, in_specs=P(None, "vocab"), out_specs=P())
    >>> p = jnp.log(jnp.array([[0.9, 0.1]]))
    >>> print(kl(p, jnp.zeros((1, 2))).round(4))
    [0.3681]
  """
  local_p_logits = _local("local_p_logits", local_p_logits)
  local_q_logits = _local("local_q_logits", local_q_logits)
  _checks.check_same_shape("local_p_logits", local_p_logits,
                           "local_q_logits", local_q_logits)
  mask = _checks.broadcast_where(where, local_p_logits.shape)
  return pair_rows("kl", axis_name, "xla", local_p_logits, local_q_logits,
                   mask)


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    local_w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    local_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    logit_softcap: float | None = None,
    reduction: _checks.Reduction = "mean",
    batch_axis_name: _AxisName | None = None,
    block_size: int | None = None,
    mode: str = "auto",
    token_chunk: int | None = None,
    return_lse: bool = False,
    return_argmax: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
  r"""Cross-entropy of `x @ w + bias` with W split along the vocabulary.

  Each device walks its own columns of W in blocks, as
  `jxent.linear_softmax_cross_entropy` does, so no device ever holds its
  [tokens, V / n] logits; the per-row statistics are combined over
  `axis_name`. It equals `jxent.linear_softmax_cross_entropy(x, w, labels,
  ...)`, in value and in the gradients for `x`, `w` and `bias`; the
  gradient for `x` is summed over `axis_name`. Reverse-mode only.

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
    block_size: Local vocabulary columns per block; by default picked from
      the shapes.
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `jxent.linear_softmax_cross_entropy`; "fast" needs reduction "mean"
      or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose.
    return_lse: Also return each token's log-sum-exp over the whole
      vocabulary (no gradient), as `jxent.linear_softmax_cross_entropy`.
    return_argmax: Also return each token's most likely global class.

  Returns:
    Float32 scalar, or per-row losses of shape `x.shape[:-1]` for "none";
    then, if asked, the log-sum-exps and the argmax, the same on every
    device of `axis_name`.

  Raises:
    ValueError: If `vocab_size` is larger than the padded vocabulary.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda x, w, y: sharded.linear_softmax_cross_entropy(
    ...         x, w, y, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P()), out_specs=P())
    >>> print(loss(jnp.ones((2, 3)), jnp.zeros((3, 5)), jnp.array([0, 4]))
    ...       .round(4))  # uniform over 5 tokens: log 5
    1.6094
  """
  return _linear.cross_entropy(
      x, local_w, labels,
      Walk(block_size, logit_softcap, 1.0, vocab_size, axis_name, mode,
           token_chunk),
      bias=local_bias, ignore_index=ignore_index,
      label_smoothing=label_smoothing, z_loss=z_loss, reduction=reduction,
      return_lse=return_lse, return_argmax=return_argmax,
      batch_axis_name=batch_axis_name, w_name="local_w",
      bias_name="local_bias")


def linear_log_probs(
    x: jax.typing.ArrayLike,
    local_w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    local_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    return_entropy: bool = False,
    return_lse: bool = False,
    return_argmax: bool = False,
    ignore_index: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
  r"""`jxent.linear_log_probs` with W split along the vocabulary.

  Each device walks its own columns of W in blocks; the per-token numbers
  are combined over `axis_name`. It equals `jxent.linear_log_probs` on the
  whole W, in value and gradient (the gradient for `x` is summed over
  `axis_name`). Call it inside `jax.shard_map`.

  Args:
    x: Hidden states, [..., D], the same on every device of `axis_name`.
    local_w: This device's columns of the output projection, [D, V / n].
    labels: Integer global token indices, shape `x.shape[:-1]`.
    axis_name: The mesh axis (or axes) W's columns are split over.
    local_bias: This device's slice of the bias, [V / n], or None.
    vocab_size: The true vocabulary V when W was padded with `pad_vocab`.
    temperature: :math:`T > 0`, dividing the logits after the soft cap.
    logit_softcap: Soft cap :math:`c > 0`, or None.
    return_entropy: Return the entropy too.
    return_lse: Return each token's log-sum-exp over the whole vocabulary
      too.
    return_argmax: Return each token's most likely global class too.
    ignore_index: Label value of tokens that give 0 and no gradient.
    where: Optional boolean token mask, shape `x.shape[:-1]`.
    block_size: Local vocabulary columns per block.

  Returns:
    As `jxent.linear_log_probs`, the same on every device of `axis_name`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> log_q = jax.shard_map(
    ...     lambda x, w, y: sharded.linear_log_probs(x, w, y, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P()), out_specs=P())
    >>> print(log_q(jnp.ones((2, 3)), jnp.zeros((3, 4)), jnp.array([0, 3]))
    ...       .round(4))
    [-1.3863 -1.3863]
  """
  return _linear_log_probs.log_probs(
      x, local_w, labels,
      Walk(block_size, logit_softcap, temperature, vocab_size, axis_name),
      bias=local_bias, return_entropy=return_entropy, return_lse=return_lse,
      return_argmax=return_argmax,
      ignore_index=ignore_index, where=where,
      names=("x", "local_w", "local_bias"))


def linear_policy_gradient_loss(
    x: jax.typing.ArrayLike,
    local_w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    local_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    entropy_bonus: float = 0.0,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
    batch_axis_name: _AxisName | None = None,
    block_size: int | None = None,
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""`jxent.linear_policy_gradient_loss` with W split along the vocabulary.

  Each device walks its own columns of W (in the fast mode, chunks of its
  tokens holding its whole local rows); the per-token numbers are combined
  over `axis_name`. It equals `jxent.linear_policy_gradient_loss` on the
  whole W, in value and gradient. Call it inside `jax.shard_map`.

  Args:
    x: Hidden states, [..., D], the same on every device of `axis_name`.
    local_w: This device's columns of the output projection, [D, V / n].
    labels: Integer global token indices, shape `x.shape[:-1]`.
    advantages: Floating per-token weights, shape `x.shape[:-1]`.
    axis_name: The mesh axis (or axes) W's columns are split over.
    local_bias: This device's slice of the bias, [V / n], or None.
    vocab_size: The true vocabulary V when W was padded with `pad_vocab`.
    entropy_bonus: :math:`\beta`, a finite Python number.
    temperature: :math:`T > 0`, dividing the logits after the soft cap.
    logit_softcap: Soft cap :math:`c > 0`, or None.
    ignore_index: Label value of tokens that give 0 and no gradient.
    where: Optional boolean token mask, shape `x.shape[:-1]`.
    reduction: "mean", "sum" or "none", as in the unsharded function.
    batch_axis_name: Mesh axis the tokens are split over, for "sum"/"mean".
    block_size: Local vocabulary columns per block (the low-memory walk).
    mode: "auto", "fast" or "low_memory", as in the unsharded function.
    token_chunk: The fast mode's tokens per chunk.

  Returns:
    As `jxent.linear_policy_gradient_loss`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> loss = jax.shard_map(
    ...     lambda x, w, y, a: sharded.linear_policy_gradient_loss(
    ...         x, w, y, a, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(), P()),
    ...     out_specs=P())
    >>> print(loss(jnp.ones((2, 3)), jnp.zeros((3, 4)), jnp.array([0, 3]),
    ...            jnp.ones(2)).round(4))  # -log q = log 4
    1.3863
  """
  return _linear_log_probs.policy_gradient_loss(
      x, local_w, labels, advantages,
      Walk(block_size, logit_softcap, temperature, vocab_size, axis_name,
           mode, token_chunk),
      bias=local_bias, entropy_bonus=entropy_bonus,
      ignore_index=ignore_index, where=where, reduction=reduction,
      batch_axis_name=batch_axis_name, names=("x", "local_w", "local_bias"))


def linear_kl_divergence(
    p_x: jax.typing.ArrayLike,
    local_p_w: jax.typing.ArrayLike,
    q_x: jax.typing.ArrayLike,
    local_q_w: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    local_p_bias: jax.typing.ArrayLike | None = None,
    local_q_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    reduction: _checks.Reduction = "none",
    batch_axis_name: _AxisName | None = None,
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""`jxent.linear_kl_divergence` with both W split along the vocabulary.

  Both heads' projections are split the same way over `axis_name`; each
  device walks its own columns. It equals `jxent.linear_kl_divergence` on
  the whole projections, in value and gradient. Call it inside
  `jax.shard_map`.

  Args:
    p_x: Hidden states of P, [..., D_p], the same on every device.
    local_p_w: This device's columns of P's projection, [D_p, V / n].
    q_x: Hidden states of Q, [..., D_q], the same tokens.
    local_q_w: This device's columns of Q's projection, [D_q, V / n].
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    local_p_bias: This device's slice of P's bias, or None.
    local_q_bias: This device's slice of Q's bias, or None.
    vocab_size: The true vocabulary V when the projections were padded.
    temperature: :math:`T > 0`.
    logit_softcap: Soft cap :math:`c > 0` of both heads, or None.
    where: Optional boolean token mask.
    block_size: Local vocabulary columns per block.
    reduction: "none", "sum" or "mean" over the tokens that count (as in
      the unsharded function).
    batch_axis_name: Mesh axis the tokens are split over, for "sum"/"mean".
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `jxent.linear_softmax_cross_entropy`; "fast" needs reduction "mean"
      or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose.

  Returns:
    As `jxent.linear_kl_divergence`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> kl = jax.shard_map(
    ...     lambda x, p, q: sharded.linear_kl_divergence(x, p, x, q, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(None, "vocab")),
    ...     out_specs=P())
    >>> p_w = jnp.log(jnp.array([[0.9, 0.1]]))
    >>> print(kl(jnp.ones((1, 1)), p_w, jnp.zeros((1, 2))).round(4))
    [0.3681]
  """
  return _linear_divergences.kl_divergence(
      p_x, local_p_w, q_x, local_q_w,
      Walk(block_size, logit_softcap, temperature, vocab_size, axis_name,
           mode, token_chunk),
      p_bias=local_p_bias, q_bias=local_q_bias, where=where,
      reduction=reduction, batch_axis_name=batch_axis_name)


def linear_js_divergence(
    p_x: jax.typing.ArrayLike,
    local_p_w: jax.typing.ArrayLike,
    q_x: jax.typing.ArrayLike,
    local_q_w: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    beta: float = 0.5,
    local_p_bias: jax.typing.ArrayLike | None = None,
    local_q_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    reduction: _checks.Reduction = "none",
    batch_axis_name: _AxisName | None = None,
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""`jxent.linear_js_divergence` with both W split along the vocabulary.

  It equals `jxent.linear_js_divergence` on the whole projections, in value
  and gradient (forward KL at `beta=0`, reverse KL at `beta=1`). Call it
  inside `jax.shard_map`; the arguments are those of
  `jxent.sharded.linear_kl_divergence`, plus `beta`.

  Args:
    p_x: Hidden states of P, [..., D_p], the same on every device.
    local_p_w: This device's columns of P's projection, [D_p, V / n].
    q_x: Hidden states of Q, [..., D_q], the same tokens.
    local_q_w: This device's columns of Q's projection, [D_q, V / n].
    axis_name: The mesh axis (or axes) the vocabulary is split over.
    beta: :math:`\beta` in [0, 1].
    local_p_bias: This device's slice of P's bias, or None.
    local_q_bias: This device's slice of Q's bias, or None.
    vocab_size: The true vocabulary V when the projections were padded.
    temperature: :math:`T > 0`.
    logit_softcap: Soft cap :math:`c > 0` of both heads, or None.
    where: Optional boolean token mask.
    block_size: Local vocabulary columns per block.
    reduction: "none", "sum" or "mean" over the tokens that count (as in
      the unsharded function).
    batch_axis_name: Mesh axis the tokens are split over, for "sum"/"mean".
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `jxent.linear_softmax_cross_entropy`; "fast" needs reduction "mean"
      or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose.

  Returns:
    As `jxent.linear_js_divergence`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> js = jax.shard_map(
    ...     lambda x, p, q: sharded.linear_js_divergence(x, p, x, q, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(None, "vocab"), P(None, "vocab")),
    ...     out_specs=P())
    >>> p_w = jnp.log(jnp.array([[1.0, 0.0]]))
    >>> q_w = jnp.log(jnp.array([[0.0, 1.0]]))
    >>> print(js(jnp.ones((1, 1)), p_w, q_w).round(4))
    [0.6931]
  """
  return _linear_divergences.js_divergence(
      p_x, local_p_w, q_x, local_q_w,
      Walk(block_size, logit_softcap, temperature, vocab_size, axis_name,
           mode, token_chunk),
      beta=beta, p_bias=local_p_bias, q_bias=local_q_bias, where=where,
      reduction=reduction, batch_axis_name=batch_axis_name)


def linear_kl_divergence_from_top_k(
    top_k_indices: jax.typing.ArrayLike,
    top_k_log_probs: jax.typing.ArrayLike,
    x: jax.typing.ArrayLike,
    local_w: jax.typing.ArrayLike,
    axis_name: _AxisName,
    *,
    tail: str = "renormalize",
    local_bias: jax.typing.ArrayLike | None = None,
    vocab_size: int | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    reduction: _checks.Reduction = "none",
    batch_axis_name: _AxisName | None = None,
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""`jxent.linear_kl_divergence_from_top_k` with W split on the vocabulary.

  The teacher's top-k indices are global class indices, the same on every
  device of `axis_name`; each device picks the student's logits of those in
  its own columns. It equals `jxent.linear_kl_divergence_from_top_k` on the
  whole W, in value and gradient. Call it inside `jax.shard_map`.

  Args:
    top_k_indices: Global class indices, `x.shape[:-1] + (k,)`.
    top_k_log_probs: The teacher's log-probabilities of those classes.
    x: The student's hidden states, [..., D], the same on every device.
    local_w: This device's columns of the student's projection, [D, V / n].
    axis_name: The mesh axis (or axes) W's columns are split over.
    tail: "renormalize" or "bin" (see the unsharded function).
    local_bias: This device's slice of the student's bias, or None.
    vocab_size: The true vocabulary V when W was padded.
    temperature: :math:`T > 0`, the student's temperature.
    logit_softcap: The student's soft cap :math:`c > 0`, or None.
    where: Optional boolean token mask.
    block_size: Local vocabulary columns per block.
    reduction: "none", "sum" or "mean" over the tokens that count (as in
      the unsharded function).
    batch_axis_name: Mesh axis the tokens are split over, for "sum"/"mean".
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `jxent.linear_softmax_cross_entropy`; "fast" needs reduction "mean"
      or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose.

  Returns:
    As `jxent.linear_kl_divergence_from_top_k`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> from jxent import sharded
    >>> mesh = jax.sharding.Mesh(jax.devices()[:1], ("vocab",))
    >>> kl = jax.shard_map(
    ...     lambda i, t, x, w: sharded.linear_kl_divergence_from_top_k(
    ...         i, t, x, w, "vocab"),
    ...     mesh=mesh, in_specs=(P(), P(), P(), P(None, "vocab")),
    ...     out_specs=P())
    >>> teacher = jnp.log(jnp.array([[0.5, 0.5]]))
    >>> print(kl(jnp.array([[0, 1]]), teacher, jnp.ones((1, 2)),
    ...          jnp.zeros((2, 4))).round(4))
    [0.6931]
  """
  return _linear_top_k.kl_divergence_from_top_k(
      top_k_indices, top_k_log_probs, x, local_w,
      Walk(block_size, logit_softcap, temperature, vocab_size, axis_name,
           mode, token_chunk),
      tail=tail, bias=local_bias, where=where, reduction=reduction,
      batch_axis_name=batch_axis_name, names=("x", "local_w", "local_bias"))


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
    >>> from jxent import sharded
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
