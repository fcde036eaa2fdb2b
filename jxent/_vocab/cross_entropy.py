r"""Linear softmax cross-entropy without materialising the logits.

For a language model's output layer, `logits = x @ w (+ bias)` has shape
[tokens, vocabulary], and its float32 copy dominates memory. Here the
vocabulary is walked in blocks of `block_size` columns:

* forward: each block's logits are made, folded into online row statistics
  (a running max, a sum of exponentials rescaled to it, the label's logit
  and the smoothing sums), and dropped. The statistics are the `RowStats`
  of `jxent._cross_entropy.rows`, and the loss, its weight in the mean and the
  backward coefficients come from the same row step as every other
  cross-entropy;
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

import dataclasses
import math

import jax
import jax.numpy as jnp

from jxent._cross_entropy import rows as _rows
from jxent._numerics import checks as _checks
from jxent._numerics.logsumexp import is_nonempty, shift_of
from jxent._numerics.options import parse_options
from jxent._vocab import blocks as _blocks
from jxent._vocab import chunks as _chunks
from jxent._vocab import rule as _rule
from jxent._vocab import walks as _walks
from jxent._vocab.blocks import Config, Walk

default_block_size = _blocks.default_block_size


def online_stats(head, label_index, opts, cfg,
                 argmax=False) -> tuple[_rows.RowStats, jax.Array | None]:
  """The `RowStats` of `x @ w + bias`, one vocabulary block at a time, and
  with `argmax` each row's first most likely class (else None)."""
  walk = _walks.stats(head, cfg, label_index=label_index,
                      smoothing=opts.smoothing, argmax=argmax)
  shift = shift_of(walk.row_max)
  return _rows.RowStats(
      shift=shift, sumexp=walk.sumexp, target_dot=walk.label_logit - shift,
      valid_count=walk.valid_count if opts.smoothing else None,
      valid_mean=walk.valid_mean if opts.smoothing else None,
      excess=walk.excess), walk.argmax


@dataclasses.dataclass(frozen=True)
class _CrossEntropy(_rule.Op):
  """The softmax cross-entropy of one head's tokens against labels; with
  `lse` and `argmax`, each token's log-sum-exp and most likely class too
  (monitoring outputs, without a gradient)."""

  cfg: Config
  lse: bool = False
  argmax: bool = False

  def forward(self, heads, data):
    (head,), (labels, opts) = heads, data
    stats, arg = online_stats(head, labels.class_index, opts, self.cfg,
                              self.argmax)
    result = _rows.row_step(stats, opts, self.cfg.num_classes, labels)
    per_row = (stats.shift, result.log_sumexp, result.coefficients,
               result.d_smoothing, result.d_z_loss)
    outputs = (result.loss, result.weight)
    # Ignored tokens give 0 (-1 for the argmax), as in `linear_log_probs`;
    # an illegal label does not spoil them (its loss is NaN).
    shown = labels.counts | ~labels.legal
    if self.lse:
      outputs += (_walks.shown_lse(shown, stats.shift, result.log_sumexp,
                                   is_nonempty(stats.sumexp)),)
    if self.argmax:
      outputs += (_walks.shown_argmax(shown, arg, result.loss.dtype),)
    return outputs, per_row

  def row_cotangents(self, per_row, data, cotangents):
    g = cotangents[0]  # The weights are constants; the rest have none.
    if _rule.is_zero(g):
      return None
    return g

  def block_cotangents(self, per_row, data, g, blocks, want):
    shift, log_sumexp, coefficients, _, _ = per_row
    (labels, opts), (block,) = data, blocks
    coefficients = jax.tree.map(lambda c: g * c, coefficients)
    return (_rows.logits_gradient(
        block.logits, block.live, shift, log_sumexp, coefficients, opts,
        label_index=labels.class_index, offset=block.offset + block.start),)

  def token_mask(self, data):
    # Tokens labelled `ignore_index` are ignored, inputs and all; an
    # illegal label keeps its NaN.
    labels, _ = data
    return labels.counts | ~labels.legal

  def data_cotangents(self, per_row, data, g, combine=None):
    _, _, _, d_smoothing, d_z_loss = per_row
    _, opts = data
    return None, _rows.options_cotangent(opts, g, d_smoothing, d_z_loss,
                                         combine)


def cross_entropy(x, w, labels, walk: Walk, *, bias=None, ignore_index=None,
                  label_smoothing=0.0, z_loss=0.0, reduction="mean",
                  return_lse=False, return_argmax=False,
                  batch_axis_name=None, w_name="w", bias_name="bias"):
  """`linear_softmax_cross_entropy` and its sharded form (`walk.axis_name`).

  Validates the inputs, then runs the head in the mode `walk` asks for
  (`jxent._vocab.chunks.plan`).
  """
  head, batch = _blocks.prepare_head(x, w, bias, w_name=w_name,
                                     bias_name=bias_name)
  labels = _blocks.token_labels(labels, batch)
  cfg = _blocks.config_for([head], walk)
  opts = parse_options(label_smoothing=label_smoothing, z_loss=z_loss,
                       ignore_index=ignore_index, reduction=reduction)
  flat_labels = _checks.sort_labels(labels.reshape(math.prod(batch)),
                                    cfg.num_classes, opts.ignore_index)
  _checks.check_argmax_classes(return_argmax, cfg.num_classes)
  chunk = _chunks.plan(walk, opts.reduction, head)
  op = _CrossEntropy(cfg, bool(return_lse), bool(return_argmax))
  loss, extras = _chunks.reduce(op, (head,), (flat_labels, opts),
                                opts.reduction, chunk, batch,
                                batch_axis_name)
  if return_argmax:
    extras = extras[:-1] + (extras[-1].astype(jnp.int32),)
  return (loss, *extras) if extras else loss


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
    mode: str = "auto",
    token_chunk: int | None = None,
    return_lse: bool = False,
    return_argmax: bool = False,
) -> jax.Array | tuple[jax.Array, ...]:
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
  a few float32 [tokens, block_size] buffers are ever alive. Reverse mode
  (`grad`, `vjp`) and the second derivatives built on it (`jax.hessian`,
  Hessian-vector products) work; forward mode alone (`jax.jvp`) is refused
  by JAX (docs/conventions.md, "Derivatives").

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
    mode: "auto" (default), "fast" or "low_memory". The fast mode walks
      chunks of `token_chunk` tokens that hold whole rows and computes the
      gradients in the forward pass: each logit is made once (three
      matmul-sized units of work, where the low-memory walk takes four),
      in a few float32 [token_chunk, V] buffers and float32 copies of the
      gradients of x and w. It needs the reduction inside ("mean" or
      "sum"). The low-memory walk holds a few [tokens, block_size]
      buffers. "auto" is the fast mode for "mean" and "sum", unless
      `block_size` is given. See docs/vocabulary_scale.md, "Two modes".
    token_chunk: The fast mode's tokens per chunk; by default one float32
      [chunk, V] buffer near 1 GiB on a GPU, 32 MiB elsewhere.
    return_lse: Also return each token's log-sum-exp of the logits, of
      shape `x.shape[:-1]`, from the same walk, to monitor a z-loss (0 for
      ignored tokens, -inf for an empty one). A monitoring value: it has
      no gradient (the `z_loss` option trains it; `linear_log_probs` gives
      a differentiable one).
    return_argmax: Also return each token's most likely class (int32, the
      first on ties; -1 for ignored and empty tokens and rows with a NaN),
      for accuracy without the logits. At most 2**24 classes.

  Returns:
    Float32 (float64 for float64 inputs) scalar, or per-row losses of shape
    `x.shape[:-1]` for "none"; then, if asked, the log-sum-exps and the
    argmax, as a tuple. Smoothing spreads over the K classes whose
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
  return cross_entropy(
      x, w, labels, Walk(block_size, logit_softcap, mode=mode,
                         token_chunk=token_chunk),
      bias=bias, ignore_index=ignore_index, label_smoothing=label_smoothing,
      z_loss=z_loss, reduction=reduction, return_lse=return_lse,
      return_argmax=return_argmax)
