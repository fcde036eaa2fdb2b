r"""Linear softmax cross-entropy without materialising the logits.

For a language model's output layer, `logits = x @ w (+ bias)` has shape
[tokens, vocabulary], and its float32 copy dominates memory. Here the
vocabulary is walked in blocks of `block_size` columns:

* forward: each block's logits are made, folded into an online log-sum-exp
  (a running max and a running sum rescaled by it), and dropped;
* backward: each block's logits are made again, turned into the gradient of
  the loss with respect to them, and pushed through the two matmuls that
  give `dx` (accumulated) and the block's own slice of `dw` (written once).

Only per-row float32 numbers are kept between the passes, so the temporary
memory is a few [tokens, block_size] buffers whatever the vocabulary.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _checks
from jxent._classification import _reduce, check_labels

# Bytes of one float32 [tokens, block] buffer that the automatic block size
# aims for; a few such buffers are alive at once.
_BLOCK_BYTES = 4 * 2**20
_MIN_BLOCK, _MAX_BLOCK = 128, 8192


def default_block_size(tokens: int, vocab: int) -> int:
  """Picks the vocabulary block size from the shapes.

  A power of two with one float32 [tokens, block] buffer near 4 MiB,
  clamped to [128, 8192] and never more than the vocabulary.
  """
  block = _BLOCK_BYTES // (4 * max(tokens, 1))
  block = 2 ** max(0, int(math.log2(max(block, 1))))
  return int(min(max(block, _MIN_BLOCK), _MAX_BLOCK, vocab))


class _Options(NamedTuple):
  """Static options, hashable for `nondiff_argnums`."""

  block: int
  smoothing: float
  z: float
  cap: float | None
  ignore: int | None
  acc: jnp.dtype  # the accumulation dtype


def _block_logits(x, w, bias, i, opts):
  """Logits of vocabulary block `i` in `opts.acc`, plus its columns."""
  vocab = w.shape[1]
  # The last block is shifted left to fit; its columns that earlier blocks
  # already covered are marked stale and take no part.
  start = jnp.minimum(i * opts.block, vocab - opts.block)
  w_block = lax.dynamic_slice_in_dim(w, start, opts.block, axis=1)
  raw = jnp.dot(x, w_block, preferred_element_type=opts.acc)
  if bias is not None:
    raw = raw + lax.dynamic_slice_in_dim(bias, start, opts.block).astype(
        opts.acc)[None, :]
  logits = raw if opts.cap is None else opts.cap * jnp.tanh(raw / opts.cap)
  columns = start + lax.broadcasted_iota(jnp.int32, (1, opts.block), 1)
  fresh = columns >= i * opts.block
  return logits, columns, fresh, start


def _num_blocks(vocab, block):
  return -(-vocab // block)


def _forward(x, w, bias, labels, opts):
  tokens, vocab = x.shape[0], w.shape[1]

  def body(i, carry):
    shift, sumexp, label_logit, count, shifted_mean = carry
    logits, columns, fresh, _ = _block_logits(x, w, bias, i, opts)
    logits = jnp.where(fresh, logits, -jnp.inf)
    new_shift = jnp.maximum(shift, jnp.max(logits, axis=1))
    # Online log-sum-exp: rescale the running sum to the new max before
    # adding this block, so no exp ever sees a positive argument. While a
    # row has seen only -inf, its shift is -inf; exp is then taken against
    # a safe 0, so -inf - -inf never makes a NaN.
    safe = jnp.where(jnp.isfinite(new_shift), new_shift, 0)
    sumexp = sumexp * jnp.exp(shift - safe) + jnp.sum(
        jnp.exp(logits - safe[:, None]), axis=1)
    is_label = (columns == labels[:, None]) & fresh
    label_logit = label_logit + jnp.sum(jnp.where(is_label, logits, 0), 1)
    if opts.smoothing:
      # Smoothing needs the mean shifted logit over the valid classes. It is
      # kept relative to the running shift (rebased when the shift moves),
      # so huge logits lose nothing, and summed as (z - shift) / V, so rows
      # near the float limits cannot overflow.
      valid = logits > -jnp.inf
      rebase = jnp.where(count > 0, count * (shift - safe) / vocab, 0)
      shifted_mean = shifted_mean + rebase + jnp.sum(
          jnp.where(valid, (logits - safe[:, None]) / vocab, 0), axis=1)
      count = count + jnp.sum(valid, axis=1).astype(opts.acc)
    return new_shift, sumexp, label_logit, count, shifted_mean

  zeros = jnp.zeros((tokens,), opts.acc)
  init = (jnp.full((tokens,), -jnp.inf, opts.acc), zeros, zeros, zeros,
          zeros)
  shift, sumexp, label_logit, count, shifted_mean = lax.fori_loop(
      0, _num_blocks(vocab, opts.block), body, init)
  nonempty = sumexp > 0
  shift = jnp.where(jnp.isfinite(shift), shift, 0)
  # Double where: an empty row (every logit -inf) keeps a finite log.
  log_sumexp = jnp.log(jnp.where(nonempty, sumexp, 1))
  # -log q_y = log_sumexp - (z_y - shift): exact for huge equal logits.
  loss = (1 - opts.smoothing) * (log_sumexp - (label_logit - shift))
  smooth_coef = None
  if opts.smoothing:
    # alpha / K sum over the K valid classes of (log_sumexp - shifted_c).
    per_class = vocab / jnp.maximum(count, 1)
    loss = loss + opts.smoothing * (
        jnp.where(count > 0, log_sumexp, 0) - per_class * shifted_mean)
    smooth_coef = opts.smoothing / jnp.maximum(count, 1)
  lse = log_sumexp + shift
  if opts.z:
    loss = loss + opts.z * jnp.square(lse)
  in_range = (labels >= 0) & (labels < vocab)
  legal, counts = in_range, in_range & nonempty
  if opts.ignore is not None:
    legal = legal | (labels == opts.ignore)
    counts = counts & (labels != opts.ignore)
  # Rows that do not count weigh 0; illegal labels NaN, never a wrapped class.
  keep = jnp.where(legal, counts.astype(opts.acc), jnp.nan)
  loss = jnp.where(counts, loss, 0) * jnp.where(legal, 1, jnp.nan)
  return loss, (shift, log_sumexp, keep, smooth_coef)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _linear_ce(x, w, bias, labels, opts):
  return _forward(x, w, bias, labels, opts)[0]


def _linear_ce_fwd(x, w, bias, labels, opts):
  loss, stats = _forward(x, w, bias, labels, opts)
  return loss, (x, w, bias, labels, stats)


def _linear_ce_bwd(opts, residuals, g):
  x, w, bias, labels, (shift, log_sumexp, keep, smooth_coef) = residuals
  vocab = w.shape[1]
  g = g * keep
  lse = log_sumexp + shift
  # d/dz of the row loss is (1 + 2 z LSE) q - (1 - a) onehot(y) - a / K on
  # the K valid classes (the target mass is 1 for a row that counts).
  prob_coef = (g * (1 + 2 * opts.z * lse))[:, None]
  label_coef = (g * (1 - opts.smoothing))[:, None]
  if smooth_coef is not None:
    smooth_coef = (g * smooth_coef)[:, None]
  matmul_dtype = x.dtype

  def body(i, carry):
    dx, dw, dbias = carry
    logits, columns, fresh, start = _block_logits(x, w, bias, i, opts)
    probs = jnp.exp(logits - shift[:, None] - log_sumexp[:, None])
    dlogits = prob_coef * probs - jnp.where(
        columns == labels[:, None], label_coef, 0)
    if smooth_coef is not None:
      dlogits = dlogits - jnp.where(logits > -jnp.inf, smooth_coef, 0)
    if opts.cap is not None:
      # Through the soft cap: d/dr c tanh(r / c) = 1 - (z / c)^2.
      dlogits = dlogits * (1 - jnp.square(logits / opts.cap))
    dlogits = jnp.where(fresh, dlogits, 0)
    d16 = dlogits.astype(matmul_dtype)
    w_block = lax.dynamic_slice_in_dim(w, start, opts.block, axis=1)
    dx = dx + jnp.dot(d16, w_block.T, preferred_element_type=opts.acc)
    dw_block = jnp.dot(x.T, d16, preferred_element_type=opts.acc)
    # Stale columns add 0, so the shifted last block can add in place.
    old = lax.dynamic_slice_in_dim(dw, start, opts.block, axis=1)
    dw = lax.dynamic_update_slice_in_dim(
        dw, (old.astype(opts.acc) + dw_block).astype(dw.dtype), start,
        axis=1)
    if dbias is not None:
      old_b = lax.dynamic_slice_in_dim(dbias, start, opts.block)
      dbias = lax.dynamic_update_slice_in_dim(
          dbias, (old_b.astype(opts.acc) + jnp.sum(dlogits, 0)).astype(
              dbias.dtype), start, axis=0)
    return dx, dw, dbias

  init = (
      jnp.zeros(x.shape, opts.acc),
      jnp.zeros(w.shape, w.dtype),
      None if bias is None else jnp.zeros(bias.shape, bias.dtype),
  )
  dx, dw, dbias = lax.fori_loop(0, _num_blocks(vocab, opts.block), body,
                                init)
  return dx.astype(x.dtype), dw, dbias, None


_linear_ce.defvjp(_linear_ce_fwd, _linear_ce_bwd)


def linear_softmax_cross_entropy(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    logit_softcap: float | None = None,
    reduction: str = "mean",
    block_size: int | None = None,
) -> jax.Array:
  r"""Softmax cross-entropy of `x @ w + bias`, never materialising the logits.

  .. math::
     z = c \tanh\!\big((x W + b) / c\big), \qquad
     \ell = (1 - \alpha)(-\log q_y) + \frac{\alpha}{K} \sum_{v\ \mathrm{valid}} (-\log q_v)
       + \lambda_z \operatorname{LSE}(z)^2, \quad q = \operatorname{softmax}(z)

  It is exact: the loss and the gradients for `x`, `w` and `bias` equal
  those of `softmax_cross_entropy_with_integer_labels(x @ w + bias, labels)`
  to float tolerance. The vocabulary is processed in blocks with an online
  log-sum-exp, and the backward pass recomputes each block, so only a few
  float32 [tokens, block_size] buffers are ever alive. Reverse-mode only.

  Args:
    x: Hidden states, floating, shape [..., D]. bfloat16 is allowed; the
      matmuls accumulate in float32.
    w: Output projection, floating, shape [D, V].
    labels: Integer token labels, shape `x.shape[:-1]`.
    bias: Optional floating bias, shape [V].
    ignore_index: Label value whose rows give loss 0 and no gradient, and do
      not count in the "mean".
    label_smoothing: :math:`\alpha` in [0, 1].
    z_loss: :math:`\lambda_z \ge 0`, PaLM's auxiliary z-loss.
    logit_softcap: Gemma 2's soft cap :math:`c > 0`, or None for no cap.
    reduction: "mean" (default, over the rows that count), "sum" or "none".
    block_size: Vocabulary columns per block; by default picked from the
      shapes (`default_block_size`). Any size works, including one that
      does not divide V.

  Returns:
    Float32 (float64 for float64 inputs) scalar, or per-row losses of shape
    `x.shape[:-1]` for "none". Smoothing spreads over the K classes whose
    logit is above -inf (a -inf bias marks padding). A row whose logits are
    all -inf gives 0.
    A label outside [0, V) that is not `ignore_index` gives NaN (raise with
    `jxent.checked`).

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x = jnp.ones((2, 3))
    >>> w = jnp.zeros((3, 5))
    >>> print(jxent.linear_softmax_cross_entropy(x, w, jnp.array([0, 4]))
    ...       .round(4))  # uniform over 5 tokens: log 5
    1.6094
  """
  x, w, labels = jnp.asarray(x), jnp.asarray(w), jnp.asarray(labels)
  _checks.check_floating("x", x)
  _checks.check_floating("w", w)
  labels = _checks.integer_labels(labels)
  if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(
        f"`x` must have shape [..., D] and `w` shape [D, V], got"
        f" x.shape={x.shape} and w.shape={w.shape}."
    )
  if labels.shape != x.shape[:-1]:
    raise ValueError(
        f"`labels` must have shape x.shape[:-1]={x.shape[:-1]}, got"
        f" labels.shape={labels.shape}."
    )
  vocab = w.shape[1]
  if bias is not None:
    bias = _checks.per_class("bias", bias, vocab)
  smoothing = _checks.check_label_smoothing(label_smoothing)
  z = _checks.check_z_loss(z_loss)
  reduction = _checks.check_reduction(reduction)
  cap = _checks.check_softcap(logit_softcap)
  ignore_index = _checks.check_ignore_index(ignore_index)
  tokens = math.prod(x.shape[:-1])
  if block_size is None:
    block = default_block_size(tokens, vocab)
  else:
    block = int(block_size)
    if block < 1:
      raise ValueError(f"`block_size` must be >= 1, got {block_size!r}.")
    block = min(block, vocab)
  # Accumulate in float32, or float64 if an input is float64; both matmul
  # operands in one dtype (the wider) when they differ.
  acc = _checks.compute_dtype(x.dtype, w.dtype)
  if x.dtype != w.dtype:
    x, w = x.astype(acc), w.astype(acc)
  flat_x = x.reshape(tokens, x.shape[-1])
  flat_labels = labels.reshape(tokens)
  check_labels(flat_labels, vocab, ignore_index=ignore_index)
  opts = _Options(block, smoothing, z, cap, ignore_index, acc)
  loss = _linear_ce(flat_x, w, bias, flat_labels, opts).reshape(labels.shape)
  weight = None
  if reduction == "mean":
    weight = (labels >= 0) & (labels < vocab)
    if ignore_index is not None:
      weight = weight & (labels != ignore_index)
    weight = weight.astype(acc)
  return _reduce(loss, weight, reduction)
