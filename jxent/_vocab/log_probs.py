"""Log-probabilities and entropy of a linear head, and a policy-gradient
loss on them, for RL."""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks
from jxent._numerics.logsumexp import is_nonempty, log_sum, shift_of
from jxent._vocab import blocks as _blocks
from jxent._vocab import chunks as _chunks
from jxent._vocab import rule as _rule
from jxent._vocab import walks as _walks
from jxent._vocab.blocks import Config, Walk

# --- log-probabilities and entropy ------------------------------------------


@dataclasses.dataclass(frozen=True)
class _LogProbs(_rule.Op):
  """log q_y (and the entropy H) of one head's tokens."""

  cfg: Config
  entropy: bool
  argmax: bool = False

  def forward(self, heads, data):
    (head,), (labels, keep) = heads, data
    walk = _walks.stats(head, self.cfg, label_index=labels.class_index,
                        entropy=self.entropy, argmax=self.argmax)
    row_max, sumexp, picked, ent, excess = (
        walk.row_max, walk.sumexp, walk.label_logit, walk.entropy_sum,
        walk.excess)
    nonempty = is_nonempty(sumexp)
    s = log_sum(sumexp, excess)
    shift = shift_of(row_max)
    counts = keep & labels.counts & nonempty
    log_prob = jnp.where(counts, picked - shift - s, 0)
    log_prob = jnp.where(labels.legal | ~keep, log_prob, jnp.nan)
    entropy_counts = keep & nonempty & (labels.counts | ~labels.legal)
    entropy = jnp.where(entropy_counts,
                        s - ent / jnp.where(nonempty, sumexp, 1), 0)
    # The log-sum-exp counts where the entropy does; an empty token's is
    # -inf, as `logsumexp`'s of an empty row.
    lse_counts = keep & (labels.counts | ~labels.legal)
    lse = _walks.shown_lse(lse_counts, shift, s, nonempty)
    # The argmax leaves the rule as a float (exact below 2**24 classes; the
    # caller checks), which needs no integer cotangent; it has no gradient.
    arg = jnp.zeros_like(lse) if walk.argmax is None else (
        _walks.shown_argmax(lse_counts, walk.argmax, lse.dtype))
    return (log_prob, entropy, lse, arg), (shift, s, entropy, counts,
                                           entropy_counts)

  def row_cotangents(self, per_row, data, cotangents):
    _, _, _, counts, entropy_counts = per_row
    labels, keep = data
    g_lp, g_h, g_lse, _ = cotangents  # The argmax has no gradient.
    if _rule.is_zero(g_lp) and _rule.is_zero(g_h) and _rule.is_zero(g_lse):
      return None
    # An illegal label's log-probability is NaN, and so is its gradient;
    # a masked token gives 0 and no gradient, whatever its label.
    g_lp = None if _rule.is_zero(g_lp) else jnp.where(
        counts, g_lp, 0) * jnp.where(labels.legal | ~keep, 1, jnp.nan)
    g_h = None if _rule.is_zero(g_h) else jnp.where(entropy_counts, g_h, 0)
    # An empty token's -inf has no gradient (its softmax has no mass).
    g_lse = None if _rule.is_zero(g_lse) else jnp.where(entropy_counts,
                                                        g_lse, 0)
    return g_lp, g_h, g_lse

  def block_cotangents(self, per_row, data, g, blocks, want):
    shift, s, entropy, _, _ = per_row
    labels, _ = data
    (block,), (g_lp, g_h, g_lse) = blocks, g
    log_q = jnp.where(block.live, block.logits, -jnp.inf) - (
        shift + s)[:, None]
    q = jnp.exp(log_q)
    dlogits = jnp.zeros_like(block.logits)
    if g_lp is not None:
      # d log q_y / dz_c = [c = y] - q_c.
      onehot = block.columns == labels.class_index[:, None]
      dlogits = dlogits + g_lp[:, None] * (jnp.where(onehot, 1, 0) - q)
    if g_h is not None:
      # dH / dz_c = -q_c (log q_c + H), 0 where q_c = 0.
      dlogits = dlogits - g_h[:, None] * _walks.times_finite(
          q, log_q + entropy[:, None])
    if g_lse is not None:
      # d LSE / dz_c = q_c.
      dlogits = dlogits + g_lse[:, None] * q
    return (dlogits,)


def log_probs(x, w, labels, walk: Walk, *, bias=None, return_entropy=False,
              return_lse=False, return_argmax=False, ignore_index=None,
              where=None, names=("x", "w", "bias")):
  """`linear_log_probs` and its sharded form (`walk.axis_name`)."""
  head, batch = _blocks.prepare_head(x, w, bias, x_name=names[0],
                                     w_name=names[1], bias_name=names[2])
  cfg = _blocks.config_for([head], walk)
  labels = _blocks.token_labels(labels, batch)
  keep = _walks.token_mask(where, batch)
  # A masked token's label is never looked at (docs/conventions.md).
  sorted_labels = _checks.sort_labels(
      labels.reshape(-1), cfg.num_classes,
      _checks.check_ignore_index(ignore_index), ~keep)
  _checks.check_argmax_classes(return_argmax, cfg.num_classes)
  log_prob, entropy, lse, arg = _rule.apply(
      _LogProbs(cfg, bool(return_entropy), bool(return_argmax)), (head,),
      (sorted_labels, keep))
  out = [log_prob.reshape(batch)]
  if return_entropy:
    out.append(entropy.reshape(batch))
  if return_lse:
    out.append(lse.reshape(batch))
  if return_argmax:
    out.append(lax.stop_gradient(arg).astype(jnp.int32).reshape(batch))
  return out[0] if len(out) == 1 else tuple(out)


def linear_log_probs(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    return_entropy: bool = False,
    return_lse: bool = False,
    return_argmax: bool = False,
    ignore_index: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
) -> jax.Array | tuple[jax.Array, ...]:
  r"""Log-probability of each token's label, and entropy, of a linear head.

  .. math::
     z = c \tanh\!\big((x W + b) / c\big) / T, \qquad
     \log q_y = z_y - \operatorname{LSE}(z), \qquad
     H(q) = -\sum_v q_v \log q_v

  What policy-gradient fine-tuning (PPO, GRPO) needs per token, computed
  without the [tokens, vocabulary] logits: the vocabulary is walked in
  blocks with an online log-sum-exp, and the custom VJP walks again, so
  only a few float32 numbers per token are kept. Both outputs are
  differentiable with respect to `x`, `w` and `bias` (an entropy bonus is
  trainable); when only one of them is differentiated, the backward pass
  does no work for the other. Exact: equal to the materialised computation
  to float tolerance. Reverse mode and second derivatives (no forward
  mode alone).

  Args:
    x: Hidden states, floating, shape [..., D].
    w: Output projection, floating, shape [D, V].
    labels: Integer token labels, shape `x.shape[:-1]`, any integer dtype.
    bias: Optional bias, shape [V]; -inf marks a padded column.
    temperature: :math:`T > 0`; divides the logits after the soft cap.
    logit_softcap: Gemma 2's soft cap :math:`c > 0`, or None.
    return_entropy: Return the entropy too.
    return_lse: Return each token's log-sum-exp :math:`\operatorname{LSE}(z)`
      too (for z-loss monitoring), from the same walk; differentiable, with
      gradient the softmax.
    return_argmax: Return each token's most likely class too (int32, the
      first on ties), for accuracy without the logits, from the same walk;
      -1 for masked, ignored and empty tokens and rows with a NaN. At most
      2**24 classes.
    ignore_index: Label value of tokens that give 0 and no gradient.
    where: Optional boolean mask of shape `x.shape[:-1]`; tokens where it is
      False give 0 and no gradient.
    block_size: Vocabulary columns per block (default from the shapes).

  Returns:
    The log-probabilities, float32 (float64 for float64 inputs) of shape
    `x.shape[:-1]`; with any `return_*` flag, a tuple: the
    log-probabilities, then the entropies, the log-sum-exps and the argmax,
    each if asked for. A label outside [0, V) that is not `ignore_index` gives
    NaN (its entropy and log-sum-exp are still computed); an empty token's
    log-sum-exp is -inf, with no gradient. Masked and empty tokens: see
    docs/conventions.md, "Masked and empty rows and tokens".

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x, w = jnp.ones((2, 3)), jnp.zeros((3, 4))
    >>> log_q, entropy = jxent.linear_log_probs(x, w, jnp.array([0, 3]),
    ...                                         return_entropy=True)
    >>> print(log_q.round(4), entropy.round(4))  # uniform over 4: log 4
    [-1.3863 -1.3863] [1.3863 1.3863]
  """
  return log_probs(x, w, labels, Walk(block_size, logit_softcap, temperature),
                   bias=bias, return_entropy=return_entropy,
                   return_lse=return_lse, return_argmax=return_argmax,
                   ignore_index=ignore_index, where=where)


# --- a policy-gradient loss, linear in the log-probabilities -----------------


@dataclasses.dataclass(frozen=True)
class _PolicyGradient(_rule.Op):
  """-(A log q_y) - beta H per token: `_LogProbs` with per-token weights, so
  that the reduced loss has one scalar cotangent (the fast mode applies)."""

  cfg: Config
  entropy_bonus: float

  @property
  def inner(self) -> _LogProbs:
    return _LogProbs(self.cfg, self.entropy_bonus != 0.0)

  def forward(self, heads, data):
    labels, keep, advantages = data
    (log_prob, entropy, _, _), per_row = self.inner.forward(heads,
                                                             (labels, keep))
    counts = per_row[3]
    # A masked or ignored token's advantage is never looked at (0 * NaN
    # would be NaN); an illegal label's NaN log-probability stays.
    weighted = jnp.where(counts, advantages, 0) * log_prob
    value = -weighted - self.entropy_bonus * entropy
    return (value, counts.astype(value.dtype)), (per_row, log_prob)

  def row_cotangents(self, per_row, data, cotangents):
    g = cotangents[0]  # The weights in the mean are constants.
    if _rule.is_zero(g):
      return None
    labels, keep, advantages = data
    inner_rows, _ = per_row
    counts = inner_rows[3]
    g_h = -self.entropy_bonus * g if self.entropy_bonus else None
    # The inner head's cotangents, and the loss's own for the advantages.
    return self.inner.row_cotangents(
        inner_rows, (labels, keep),
        (-g * jnp.where(counts, advantages, 0), g_h, None, None)), g

  def block_cotangents(self, per_row, data, g, blocks, want):
    labels, keep, _ = data
    return self.inner.block_cotangents(per_row[0], (labels, keep), g[0],
                                       blocks, want)

  def data_cotangents(self, per_row, data, g, combine=None):
    # d loss / d A = -log q_y where the token counts (NaN for an illegal
    # label, as its loss), 0 elsewhere.
    inner_rows, log_prob = per_row
    counts = inner_rows[3]
    labels, keep, advantages = data
    d_advantages = jnp.where(counts | ~(labels.legal | ~keep),
                             -g[1] * log_prob, 0).astype(advantages.dtype)
    if combine is not None:
      d_advantages = combine(d_advantages, advantages)
    return None, None, d_advantages

  def token_mask(self, data):
    labels, keep, _ = data
    return self.inner.token_mask((labels, keep))


def policy_gradient_loss(x, w, labels, advantages, walk: Walk, *, bias=None,
                         entropy_bonus=0.0, ignore_index=None, where=None,
                         reduction="mean", batch_axis_name=None,
                         names=("x", "w", "bias")):
  """`linear_policy_gradient_loss` and its sharded form (`walk.axis_name`)."""
  head, batch = _blocks.prepare_head(x, w, bias, x_name=names[0],
                                     w_name=names[1], bias_name=names[2])
  cfg = _blocks.config_for([head], walk)
  labels = _blocks.token_labels(labels, batch)
  advantages = jnp.asarray(advantages)
  _checks.check_floating("advantages", advantages)
  if advantages.shape != batch:
    raise ValueError(
        f"`advantages` must have the tokens' shape {batch}, got"
        f" {advantages.shape}.")
  bonus = _checks.static_number("entropy_bonus", entropy_bonus)
  if not math.isfinite(bonus):
    raise ValueError(f"`entropy_bonus` must be finite, got {bonus!r}.")
  reduction = _checks.check_reduction(reduction)
  keep = _walks.token_mask(where, batch)
  sorted_labels = _checks.sort_labels(
      labels.reshape(-1), cfg.num_classes,
      _checks.check_ignore_index(ignore_index), ~keep)
  loss, _ = _chunks.reduce(
      _PolicyGradient(cfg, bonus), (head,),
      (sorted_labels, keep, advantages.reshape(-1).astype(cfg.acc)),
      reduction, _chunks.plan(walk, reduction, head), batch,
      batch_axis_name)
  return loss


def linear_policy_gradient_loss(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    advantages: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    entropy_bonus: float = 0.0,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    ignore_index: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    reduction: _checks.Reduction = "mean",
    block_size: int | None = None,
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""A policy-gradient loss, linear in the log-probabilities of a head.

  .. math::
     \ell_t = -A_t \log q_{y_t} - \beta H(q_t), \qquad
     q_t = \operatorname{softmax}\!\big(c \tanh((x_t W + b) / c) / T\big)

  REINFORCE, or GRPO without clipping (the advantages :math:`A_t` already
  normalised per group), with an entropy bonus :math:`\beta`, computed
  without the [tokens, vocabulary] logits. It equals
  `-(advantages * log_q) - entropy_bonus * entropy` of `linear_log_probs(...,
  return_entropy=True)`, reduced; given the weights inside, the reduced
  loss has one scalar cotangent, so by default it runs in the fast mode
  (token chunks, each logit made once; docs/vocabulary_scale.md, "Two
  modes"). A loss that is not linear in the log-probabilities, such as
  PPO's clipped ratio, needs `linear_log_probs` and its per-token
  cotangents. Differentiable in `x`, `w`, `bias` and `advantages` (whose
  gradient is :math:`-\log q_{y_t}`); reverse mode and second derivatives
  (no forward mode alone).

  Args:
    x: Hidden states, floating, shape [..., D].
    w: Output projection, floating, shape [D, V].
    labels: The sampled tokens, integer, shape `x.shape[:-1]`.
    advantages: Floating, shape `x.shape[:-1]`: each token's weight
      :math:`A_t`.
    bias: Optional bias, shape [V]; -inf marks a padded column.
    entropy_bonus: :math:`\beta`, a finite Python number (0 computes no
      entropy).
    temperature: :math:`T > 0`; divides the logits after the soft cap.
    logit_softcap: Gemma 2's soft cap :math:`c > 0`, or None.
    ignore_index: Label value of tokens that give 0 and no gradient.
    where: Optional boolean mask of shape `x.shape[:-1]`; tokens where it
      is False give 0 and no gradient.
    reduction: "mean" (default, over the tokens that count: kept by
      `where`, not ignored, with logits not all -inf), "sum" or "none".
    block_size: The low-memory walk's vocabulary columns per block.
    mode: "auto", "fast" or "low_memory", as for
      `linear_softmax_cross_entropy`.
    token_chunk: The fast mode's tokens per chunk, as there.

  Returns:
    Float32 (float64 for float64 inputs) scalar, or per-token losses of
    shape `x.shape[:-1]` for "none". A label outside [0, V) that is not
    `ignore_index` gives NaN, and so does a NaN in the inputs or the
    advantages of a token that counts.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x, w = jnp.ones((2, 3)), jnp.zeros((3, 4))  # uniform over 4
    >>> loss = jxent.linear_policy_gradient_loss(
    ...     x, w, jnp.array([0, 3]), jnp.array([1.0, 1.0]))
    >>> print(loss.round(4))  # -log q = log 4
    1.3863
  """
  return policy_gradient_loss(
      x, w, labels, advantages,
      Walk(block_size, logit_softcap, temperature, mode=mode,
           token_chunk=token_chunk),
      bias=bias, entropy_bonus=entropy_bonus, ignore_index=ignore_index,
      where=where, reduction=reduction)
