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

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _blocks, _checks, _rows
from jxent._blocks import Config, block_logits, walk_blocks
from jxent._logsumexp import shift_of
from jxent._options import parse_options

default_block_size = _blocks.default_block_size


def online_stats(x, w, bias, label_index, opts, cfg) -> _rows.RowStats:
  """The `RowStats` of `x @ w + bias`, one vocabulary block at a time."""
  tokens, local_vocab = x.shape[0], w.shape[1]
  offset = _blocks.offset_of(cfg, local_vocab)
  num_classes = cfg.num_classes

  def body(i, carry):
    row_max, sumexp, label_logit, count, valid_mean = carry
    logits, columns, live, _ = block_logits(x, w, bias, i, cfg, offset)
    logits = jnp.where(live, logits, -jnp.inf)
    row_max, sumexp, old, new = _blocks.online_lse(row_max, sumexp, logits)
    is_label = (columns == label_index[:, None]) & live
    label_logit = label_logit + jnp.sum(jnp.where(is_label, logits, 0), 1)
    if opts.smoothing:
      # The valid classes' mean logit, kept relative to the running shift
      # (rebased when the shift moves) so huge logits lose nothing, and
      # summed as (z - shift) / V so rows near the float limits cannot
      # overflow.
      valid = logits > -jnp.inf
      valid_mean = valid_mean + count * (old - new) / num_classes + jnp.sum(
          jnp.where(valid, (logits - new[:, None]) / num_classes, 0), 1)
      count = count + jnp.sum(valid, axis=1).astype(cfg.acc)
    return row_max, sumexp, label_logit, count, valid_mean

  zeros = jnp.zeros((tokens,), cfg.acc)
  init = (jnp.full((tokens,), -jnp.inf, cfg.acc), zeros, zeros, zeros,
          zeros)
  row_max, sumexp, label_logit, count, valid_mean = walk_blocks(
      body, init, local_vocab, cfg.block, cfg.axis_name is not None)
  if cfg.axis_name is not None:
    # Combine the shards: one max, then sums rescaled to it.
    row_max, sumexp, (valid_mean,), (label_logit, count) = _blocks.combine_lse(
        row_max, sumexp, cfg.axis_name,
        rebased=((count / num_classes, valid_mean),),
        summed=(label_logit, count))
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
  offset = _blocks.offset_of(cfg, w.shape[1])

  def body(i, grads):
    logits, _, live, start = block_logits(x, w, bias, i, cfg, offset)
    dlogits = _rows.logits_gradient(
        logits, live, shift, log_sumexp, coefficients, opts,
        label_index=labels.class_index, offset=offset + start)
    return _blocks.accumulate(grads, x, w,
                              _blocks.raw_gradient(dlogits, logits, cfg),
                              start, cfg)

  grads = walk_blocks(body, _blocks.zero_grads(x, w, bias, cfg,
                                               (True, True, True)),
                      w.shape[1], cfg.block, cfg.axis_name is not None)
  d_opts = _rows.options_cotangent(opts, g, d_smoothing, d_z_loss,
                                   _blocks.sum_over_copies)
  return (*_blocks.finish_grads(grads, *primals), None, d_opts)


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
            logit_softcap, reduction, block_size, vocab_size=None,
            axis_name=None, w_name="w", bias_name="bias"):
  """Validates a linear cross-entropy's inputs; returns what it runs on.

  Returns:
    `(flat_x, w, bias, labels, opts, cfg)`: x flattened to [tokens, D] and
    both matmul operands in one dtype, the sorted flat labels, the parsed
    options and the static `Config`.
  """
  head, batch = _blocks.prepare_head(x, w, bias, w_name=w_name,
                                     bias_name=bias_name)
  labels = _blocks.token_labels(labels, batch)
  cfg = _blocks.config_for([head], block_size, logit_softcap,
                           vocab_size=vocab_size, axis_name=axis_name)
  opts = parse_options(label_smoothing=label_smoothing, z_loss=z_loss,
                       ignore_index=ignore_index, reduction=reduction)
  flat_labels = _checks.sort_labels(labels.reshape(math.prod(batch)),
                                    cfg.num_classes, opts.ignore_index)
  return head.x, head.w, head.bias, flat_labels, opts, cfg


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
