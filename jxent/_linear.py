r"""Linear softmax cross-entropy without materialising the logits.

For a language model's output layer, `logits = x @ w (+ bias)` has shape
[tokens, vocabulary], and its float32 copy dominates memory. Here the
vocabulary is walked in blocks of `block_size` columns:

* forward: each block's logits are made, folded into online row statistics
  (a running max, a sum of exponentials rescaled to it, the label's logit
  and the smoothing sums), and dropped. The statistics are the `RowStats`
  of `jxent._rows`, and the loss, its weight in the mean and the backward
  coefficients come from the same row step as every other cross-entropy;
* backward: each block's logits are made again, turned into the gradient
  of the loss with respect to them by the shared element-wise pass, and
  pushed through the two matmuls that give `dx` (accumulated) and the
  block's own slice of `dw` (written once).

Only per-row float32 numbers are kept between the passes, so the temporary
memory is a few [tokens, block_size] buffers whatever the vocabulary.

With `axis_name` (inside `shard_map`, W split by columns over that mesh
axis), each device walks its own columns, the row statistics are combined
with one `pmax` and `psum`s of per-row numbers, and `dx` is summed over the
axis; nothing of vocabulary size is communicated.
"""

import functools
import math
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _checks, _rows
from jxent._logsumexp import shift_of
from jxent._options import parse_options

# Bytes of one float32 [tokens, block] buffer that the automatic block size
# aims for; a few such buffers are alive at once.
_BLOCK_BYTES = 4 * 2**20
_MIN_BLOCK, _MAX_BLOCK = 128, 8192


def default_block_size(tokens: int, vocab: int) -> int:
  """Picks the vocabulary block size from the shapes.

  A power of two with one float32 [tokens, block] buffer near 4 MiB,
  clamped to [128, 8192] and never more than the vocabulary (at least 1).
  """
  block = _BLOCK_BYTES // (4 * max(tokens, 1))
  block = 2 ** max(0, int(math.log2(max(block, 1))))
  return int(max(min(max(block, _MIN_BLOCK), _MAX_BLOCK, vocab), 1))


class Config(NamedTuple):
  """Static settings of a vocabulary walk (hashable).

  Attributes:
    block: Columns per block.
    cap: The logit soft cap, or None.
    acc: The accumulation dtype.
    num_classes: The true vocabulary size V. Columns at or past it (padding
      of a sharded W) are masked out.
    axis_name: The mesh axis W's columns are split over, or None.
  """

  block: int
  cap: float | None
  acc: jnp.dtype
  num_classes: int
  axis_name: _rows.AxisName | None = None


def _num_blocks(local_vocab, block):
  return -(-local_vocab // block)


def walk_blocks(body, init, local_vocab, block, sharded):
  """`fori_loop` over the vocabulary blocks; no blocks (V = 0) give `init`.

  Inside `shard_map` the first block is peeled off: it gives the loop a
  carry typed by the first block's results, which vary over the mesh axes
  (vocabulary, and batch when x is split) that zeros made outside cannot
  know. Elsewhere the loop runs whole, which lets XLA update the carried
  `dw` in place.
  """
  blocks = _num_blocks(local_vocab, block)
  if not blocks:
    return init
  if not sharded:
    return lax.fori_loop(0, blocks, body, init)
  carry = body(0, init)
  return lax.fori_loop(1, blocks, body, carry) if blocks > 1 else carry


def _offset(cfg, local_vocab):
  if cfg.axis_name is None:
    return 0
  return lax.axis_index(cfg.axis_name) * local_vocab


def block_logits(x, w, bias, i, cfg, offset):
  """Logits of local block `i` in `cfg.acc`, and which columns count.

  Returns:
    `(logits, columns, live, start)`: the [tokens, block] logits, their
    global column indices [1, block], whether each column takes part
    [1, block], and the block's first local column.
  """
  local_vocab = w.shape[1]
  # The last block is shifted left to fit; its columns that earlier blocks
  # already covered are stale and take no part.
  start = jnp.minimum(i * cfg.block, local_vocab - cfg.block)
  w_block = lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
  raw = jnp.dot(x, w_block, preferred_element_type=cfg.acc)
  if bias is not None:
    raw = raw + lax.dynamic_slice_in_dim(bias, start, cfg.block).astype(
        cfg.acc)[None, :]
  logits = raw if cfg.cap is None else cfg.cap * jnp.tanh(raw / cfg.cap)
  local = start + lax.broadcasted_iota(jnp.int32, (1, cfg.block), 1)
  columns = offset + local
  live = (local >= i * cfg.block) & (columns < cfg.num_classes)
  return logits, columns, live, start


def online_stats(x, w, bias, label_index, opts, cfg) -> _rows.RowStats:
  """The `RowStats` of `x @ w + bias`, one vocabulary block at a time."""
  tokens, local_vocab = x.shape[0], w.shape[1]
  offset = _offset(cfg, local_vocab)
  num_classes = cfg.num_classes

  def body(i, carry):
    row_max, sumexp, label_logit, count, valid_mean = carry
    logits, columns, live, _ = block_logits(x, w, bias, i, cfg, offset)
    logits = jnp.where(live, logits, -jnp.inf)
    new_max = jnp.maximum(row_max, jnp.max(logits, axis=1))
    # Online log-sum-exp: rescale the running sum to the new max before
    # adding this block, so no exp ever sees a positive argument. While a
    # row has seen only -inf its max is -inf; exp is then taken against a
    # safe 0, so -inf - -inf never makes a NaN. A NaN max stays NaN.
    safe = shift_of(new_max)
    sumexp = sumexp * jnp.exp(row_max - safe) + jnp.sum(
        jnp.exp(logits - safe[:, None]), axis=1)
    is_label = (columns == label_index[:, None]) & live
    label_logit = label_logit + jnp.sum(jnp.where(is_label, logits, 0), 1)
    if opts.smoothing:
      # The valid classes' mean logit, kept relative to the running shift
      # (rebased when the shift moves) so huge logits lose nothing, and
      # summed as (z - shift) / V so rows near the float limits cannot
      # overflow.
      valid = logits > -jnp.inf
      rebase = jnp.where(count > 0,
                         count * (shift_of(row_max) - safe) / num_classes, 0)
      valid_mean = valid_mean + rebase + jnp.sum(
          jnp.where(valid, (logits - safe[:, None]) / num_classes, 0), 1)
      count = count + jnp.sum(valid, axis=1).astype(cfg.acc)
    return new_max, sumexp, label_logit, count, valid_mean

  zeros = jnp.zeros((tokens,), cfg.acc)
  init = (jnp.full((tokens,), -jnp.inf, cfg.acc), zeros, zeros, zeros,
          zeros)
  row_max, sumexp, label_logit, count, valid_mean = walk_blocks(
      body, init, local_vocab, cfg.block, cfg.axis_name is not None)
  if cfg.axis_name is not None:
    # Combine the shards: one max, then sums rescaled to it.
    local_shift = shift_of(row_max)
    row_max = lax.pmax(lax.stop_gradient(row_max), cfg.axis_name)
    scale = jnp.exp(local_shift - shift_of(row_max))
    rebase = count * (local_shift - shift_of(row_max)) / num_classes
    sumexp, label_logit, count, valid_mean = lax.psum(
        (sumexp * scale, label_logit, count, valid_mean + rebase),
        cfg.axis_name)
  shift = shift_of(row_max)
  return _rows.RowStats(
      shift=shift, sumexp=sumexp, target_dot=label_logit - shift,
      valid_count=count if opts.smoothing else None,
      valid_mean=valid_mean if opts.smoothing else None)


def _forward(cfg, x, w, bias, labels, opts):
  stats = online_stats(x, w, bias, labels.class_index, opts, cfg)
  result = _rows.row_step(stats, opts, cfg.num_classes, labels)
  return stats, result


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _linear_ce(cfg, x, w, bias, labels, opts):
  _, result = _forward(cfg, x, w, bias, labels, opts)
  return result.loss, result.weight


def _linear_ce_fwd(cfg, x, w, bias, labels, opts):
  # With symbolic zeros the rule sees which inputs are perturbed (unused
  # here), and, unlike the default, the rule composes with checkify under
  # `grad` (`jxent.checked`).
  x, w, bias, labels, opts = jax.tree.map(
      lambda p: p.value, (x, w, bias, labels, opts),
      is_leaf=lambda p: isinstance(p, jax.custom_derivatives.CustomVJPPrimal))
  stats, result = _forward(cfg, x, w, bias, labels, opts)
  per_row = (stats.shift, result.log_sumexp, result.coefficients,
             result.d_smoothing, result.d_z_loss)
  return (result.loss, result.weight), (x, w, bias, labels, opts, per_row)


def _linear_ce_bwd(cfg, residuals, cotangents):
  x, w, bias, labels, opts, per_row = residuals
  shift, log_sumexp, coefficients, d_smoothing, d_z_loss = per_row
  g, _ = cotangents  # The weights are constants.
  coefficients = jax.tree.map(lambda c: g * c, coefficients)
  # Recompute the blocks from x and W behind a barrier: when the whole
  # vocabulary is one block, XLA would otherwise reuse the forward pass's
  # logits and keep them alive until here.
  primals = (x, w, bias)
  x, w, bias = lax.optimization_barrier(primals)
  offset = _offset(cfg, w.shape[1])
  matmul_dtype = x.dtype

  def body(i, carry):
    dx, dw, dbias = carry
    logits, _, live, start = block_logits(x, w, bias, i, cfg, offset)
    dlogits = _rows.logits_gradient(
        logits, live, shift, log_sumexp,
        coefficients, opts, label_index=labels.class_index, offset=offset + start)
    if cfg.cap is not None:
      # Through the soft cap: d/dr c tanh(r / c) = 1 - (z / c)^2.
      dlogits = dlogits * (1 - jnp.square(logits / cfg.cap))
    d16 = dlogits.astype(matmul_dtype)
    w_block = lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
    dx = dx + jnp.dot(d16, w_block.T, preferred_element_type=cfg.acc)
    dw_block = jnp.dot(x.T, d16, preferred_element_type=cfg.acc)
    # Stale columns add 0, so the shifted last block can add in place.
    old = lax.dynamic_slice_in_dim(dw, start, cfg.block, axis=1)
    dw = lax.dynamic_update_slice_in_dim(
        dw, (old.astype(cfg.acc) + dw_block).astype(dw.dtype), start,
        axis=1)
    if dbias is not None:
      old_b = lax.dynamic_slice_in_dim(dbias, start, cfg.block)
      dbias = lax.dynamic_update_slice_in_dim(
          dbias, (old_b.astype(cfg.acc) + jnp.sum(dlogits, 0)).astype(
              dbias.dtype), start, axis=0)
    return dx, dw, dbias

  init = (
      jnp.zeros(x.shape, cfg.acc),
      jnp.zeros(w.shape, w.dtype),
      None if bias is None else jnp.zeros(bias.shape, bias.dtype),
  )
  dx, dw, dbias = walk_blocks(body, init, w.shape[1], cfg.block,
                              cfg.axis_name is not None)
  d_opts = _rows.options_cotangent(opts, g, d_smoothing, d_z_loss,
                                   _sum_over_copies)
  x, w, bias = primals  # Whose mesh axes the cotangents must match.
  return (_sum_over_copies(dx, x).astype(x.dtype), _sum_over_copies(dw, w),
          None if bias is None else _sum_over_copies(dbias, bias), None,
          d_opts)


def _vma(x) -> frozenset:
  """The mesh axes `x` varies over inside `shard_map` (empty outside).

  JAX records them on the abstract value: as `vma` in recent versions, as
  `mat.varying` in 0.10.
  """
  aval = jax.typeof(x)
  vma = getattr(aval, "vma", None)
  if vma is None:
    vma = getattr(getattr(aval, "mat", None), "varying", None)
  return frozenset(vma or ())


def _sum_over_copies(cotangent, primal):
  """Sums a cotangent over the mesh axes its primal is replicated over.

  Inside `shard_map`, x is the same on every device of the vocabulary axis
  (and W on every device of a batch axis), while each device's cotangent
  covers only its own columns (or rows): the cotangent of a replicated
  value is the sum of the devices' parts.
  """
  extra = _vma(cotangent) - _vma(primal)
  return lax.psum(cotangent, tuple(sorted(extra))) if extra else cotangent


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd, symbolic_zeros=True)
_linear_ce_jit = jax.jit(_linear_ce, static_argnums=(0,))


def linear_ce_rows(cfg: Config, x, w, bias, labels, opts):
  """Per-row loss and "mean" weight of the linear cross-entropy."""
  if cfg.axis_name is not None:
    # JAX 0.10 cannot run a custom VJP with symbolic zeros eagerly inside
    # shard_map, but can trace one there. (Elsewhere no jit: checkify fails
    # to linearise a jit that follows a check.)
    return _linear_ce_jit(cfg, x, w, bias, labels, opts)
  return _linear_ce(cfg, x, w, bias, labels, opts)


def prepare(x, w, labels, bias, *, ignore_index, label_smoothing, z_loss,
            logit_softcap, reduction, block_size, num_classes=None,
            axis_name=None, w_name="w", bias_name="bias"):
  """Validates a linear cross-entropy's inputs; returns what it runs on.

  Returns:
    `(flat_x, w, bias, labels, opts, cfg)`: x flattened to [tokens, D] and
    both matmul operands in one dtype, the sorted flat labels, the parsed
    options and the static `Config`.
  """
  x, w, labels = jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels)
  _checks.check_floating("x", x)
  _checks.check_floating(w_name, w)
  _checks.check_integer("labels", labels)
  if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(
        f"`x` must have shape [..., D] and `{w_name}` shape [D, V], got"
        f" x.shape={x.shape} and {w_name}.shape={w.shape}."
    )
  if labels.shape != x.shape[:-1]:
    raise ValueError(
        f"`labels` must have shape x.shape[:-1]={x.shape[:-1]}, got"
        f" labels.shape={labels.shape}."
    )
  local_vocab = w.shape[1]
  if bias is not None:
    bias = _checks.per_class(bias_name, bias, local_vocab)
  if num_classes is None:
    num_classes = local_vocab
  cap = _checks.check_softcap(logit_softcap)
  tokens = math.prod(x.shape[:-1])
  if block_size is None:
    block = default_block_size(tokens, local_vocab)
  else:
    try:
      if isinstance(block_size, bool):
        raise TypeError  # A flag passed by mistake.
      block = operator.index(block_size)
    except TypeError:
      raise TypeError(
          f"`block_size` must be an int or None, got {block_size!r}.") from None
    if block < 1:
      raise ValueError(f"`block_size` must be >= 1, got {block_size!r}.")
    block = max(min(block, local_vocab), 1)
  # Accumulate in float32, or float64 if an input is float64; both matmul
  # operands in one dtype (the wider) when they differ.
  acc = _checks.compute_dtype(x.dtype, w.dtype)
  if x.dtype != w.dtype:
    x, w = x.astype(acc), w.astype(acc)
  opts = parse_options(label_smoothing=label_smoothing, z_loss=z_loss,
                       ignore_index=ignore_index, reduction=reduction)
  flat_labels = _checks.sort_labels(labels.reshape(tokens), num_classes,
                                    opts.ignore_index)
  cfg = Config(block, cap, acc, num_classes, axis_name)
  return x.reshape(tokens, x.shape[-1]), w, bias, flat_labels, opts, cfg


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float | jax.typing.ArrayLike = 0.0,
    z_loss: float | jax.typing.ArrayLike = 0.0,
    logit_softcap: float | None = None,
    reduction: _checks.Reduction = "mean",
    block_size: int | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy of `x @ w + bias`, never materialising the logits.

  .. math::
     z = c \tanh\!\big((x W + b) / c\big), \qquad
     \ell = (1 - \alpha)(-\log q_y) + \frac{\alpha}{K} \sum_{v\ \mathrm{valid}} (-\log q_v)
       + \lambda_z \operatorname{LSE}(z)^2, \quad q = \operatorname{softmax}(z)

  It is exact: the loss and the gradients for `x`, `w` and `bias` equal
  those of `softmax_cross_entropy_with_integer_labels(x @ w + bias, labels)`
  to float tolerance, "mean" included (rows whose logits are all -inf do
  not count, as there). The vocabulary is processed in blocks with an
  online log-sum-exp, and the backward pass recomputes each block, so only
  a few float32 [tokens, block_size] buffers are ever alive. Reverse-mode
  only (`grad`, `vjp`, Hessian-vector products by reverse over reverse are
  not supported either: the backward pass is a custom loop).

  Args:
    x: Hidden states, floating, shape [..., D]. bfloat16 is allowed; the
      matmuls accumulate in float32.
    w: Output projection, floating, shape [D, V].
    labels: Integer token labels, shape `x.shape[:-1]`, any integer dtype.
    bias: Optional floating bias, shape [V].
    ignore_index: Label value whose rows give loss 0 and no gradient, and do
      not count in the "mean".
    label_smoothing: :math:`\alpha` in [0, 1], a number or a traced scalar.
    z_loss: :math:`\lambda_z \ge 0`, a number or a traced scalar.
    logit_softcap: Gemma 2's soft cap :math:`c > 0` (finite), or None for no
      cap.
    reduction: "mean" (default, over the rows that count), "sum" or "none".
    block_size: Vocabulary columns per block; by default picked from the
      shapes (`default_block_size`). Any size works, including one that
      does not divide V.

  Returns:
    Float32 (float64 for float64 inputs) scalar, or per-row losses of shape
    `x.shape[:-1]` for "none". Smoothing spreads over the K classes whose
    logit is above -inf (a -inf bias marks padding). A row whose logits are
    all -inf gives 0. A label outside [0, V) that is not `ignore_index`
    gives NaN (raise with `jxent.checked`), and so does a NaN in `x`, `w`
    or `bias` for the rows it reaches.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x = jnp.ones((2, 3))
    >>> w = jnp.zeros((3, 5))
    >>> print(jxent.linear_softmax_cross_entropy(x, w, jnp.array([0, 4]))
    ...       .round(4))  # uniform over 5 tokens: log 5
    1.6094
  """
  labels_shape = jnp.shape(labels)
  flat_x, w, bias, flat_labels, opts, cfg = prepare(
      x, w, labels, bias, ignore_index=ignore_index,
      label_smoothing=label_smoothing, z_loss=z_loss,
      logit_softcap=logit_softcap, reduction=reduction,
      block_size=block_size)
  loss, weight = linear_ce_rows(cfg, flat_x, w, bias, flat_labels, opts)
  return _rows.reduce(loss.reshape(labels_shape),
                      weight.reshape(labels_shape), opts.reduction)
