"""Log-probabilities and entropy of a linear head, for RL."""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _blocks, _checks, _vocab
from jxent._blocks import Config, Head, block_logits, walk_blocks
from jxent._logsumexp import is_nonempty, safe_log, shift_of

# --- log-probabilities and entropy ------------------------------------------


class _LogProbs(NamedTuple):
  cfg: Config
  entropy: bool


def _log_probs_forward(static, head, labels, keep):
  row_max, sumexp, picked, ent = _vocab.stats(
      head, static.cfg, label_index=labels.class_index,
      entropy=static.entropy)
  nonempty = is_nonempty(sumexp)
  s = safe_log(sumexp)
  shift = shift_of(row_max)
  counts = keep & labels.counts & nonempty
  log_prob = jnp.where(counts, picked - shift - s, 0)
  log_prob = jnp.where(labels.legal | ~keep, log_prob, jnp.nan)
  entropy = jnp.where(keep & nonempty & (labels.counts | ~labels.legal),
                      s - ent / jnp.where(nonempty, sumexp, 1), 0)
  return (log_prob, entropy), (shift, s, entropy, counts, keep & nonempty &
                               (labels.counts | ~labels.legal))


@_vocab.jit_if_sharded
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _log_probs(static, head, labels, keep):
  return _log_probs_forward(static, head, labels, keep)[0]


def _log_probs_fwd(static, head, labels, keep):
  perturbed = _vocab.perturbed(head)
  head, labels, keep = _vocab.values((head, labels, keep))
  outs, per_row = _log_probs_forward(static, head, labels, keep)
  return outs, (head, labels, per_row, perturbed)


def _log_probs_bwd(static, residuals, cotangents):
  head, labels, per_row, perturbed = residuals
  shift, s, entropy, counts, entropy_counts = per_row
  g_lp, g_h = cotangents
  cfg = static.cfg
  # An illegal label's log-probability is NaN, and so is its gradient.
  g_lp = None if _vocab.is_zero(g_lp) else jnp.where(
      counts, g_lp, 0) * jnp.where(labels.legal, 1, jnp.nan)
  g_h = None if _vocab.is_zero(g_h) else jnp.where(entropy_counts, g_h, 0)
  primals = tuple(head)
  head = Head(*lax.optimization_barrier(primals))
  offset = _blocks.offset_of(cfg, head.w.shape[1])

  def body(i, grads):
    logits, columns, live, start = block_logits(*head, i, cfg, offset)
    log_q = jnp.where(live, logits, -jnp.inf) - (shift + s)[:, None]
    q = jnp.exp(log_q)
    dlogits = jnp.zeros_like(logits)
    if g_lp is not None:
      # d log q_y / dz_c = [c = y] - q_c.
      onehot = columns == labels.class_index[:, None]
      dlogits = dlogits + g_lp[:, None] * (jnp.where(onehot, 1, 0) - q)
    if g_h is not None:
      # dH / dz_c = -q_c (log q_c + H), 0 where q_c = 0.
      dlogits = dlogits - g_h[:, None] * _vocab.times_finite(
          q, log_q + entropy[:, None])
    dlogits = jnp.where(live, dlogits, 0)
    return _blocks.accumulate(grads, head.x, head.w,
                              _blocks.raw_gradient(dlogits, logits, cfg),
                              start, cfg)

  grads = _blocks.zero_grads(*head, cfg, perturbed)
  if g_lp is not None or g_h is not None:
    grads = walk_blocks(body, grads, head.w.shape[1], cfg.block,
                        cfg.axis_name is not None)
  return Head(*_blocks.finish_grads(grads, *primals)), None, None


_log_probs.__wrapped__.defvjp(_log_probs_fwd, _log_probs_bwd,
                              symbolic_zeros=True)


def log_probs(x, w, labels, *, bias=None, temperature=1.0,
              logit_softcap=None, return_entropy=False, ignore_index=None,
              where=None, block_size=None, axis_name=None, vocab_size=None,
              names=("x", "w", "bias")):
  """`linear_log_probs` and its sharded form (with `axis_name`)."""
  head, batch = _blocks.prepare_head(x, w, bias, x_name=names[0],
                                     w_name=names[1], bias_name=names[2])
  cfg = _blocks.config_for([head], block_size, logit_softcap, temperature,
                           vocab_size, axis_name)
  labels = _blocks.token_labels(labels, batch)
  sorted_labels = _checks.sort_labels(
      labels.reshape(-1), cfg.num_classes,
      _checks.check_ignore_index(ignore_index))
  keep = _vocab.token_mask(where, batch)
  log_prob, entropy = _log_probs(
      _LogProbs(cfg, bool(return_entropy)), head, sorted_labels, keep)
  if return_entropy:
    return log_prob.reshape(batch), entropy.reshape(batch)
  return log_prob.reshape(batch)


def linear_log_probs(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    labels: jax.typing.ArrayLike,
    *,
    bias: jax.typing.ArrayLike | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    return_entropy: bool = False,
    ignore_index: int | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
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
  to float tolerance. Reverse-mode only.

  Args:
    x: Hidden states, floating, shape [..., D].
    w: Output projection, floating, shape [D, V].
    labels: Integer token labels, shape `x.shape[:-1]`, any integer dtype.
    bias: Optional bias, shape [V]; -inf marks a padded column.
    temperature: :math:`T > 0`; divides the logits after the soft cap.
    logit_softcap: Gemma 2's soft cap :math:`c > 0`, or None.
    return_entropy: Return the entropy too.
    ignore_index: Label value of tokens that give 0 and no gradient.
    where: Optional boolean mask of shape `x.shape[:-1]`; tokens where it is
      False give 0 and no gradient.
    block_size: Vocabulary columns per block (default from the shapes).

  Returns:
    The log-probabilities, float32 (float64 for float64 inputs) of shape
    `x.shape[:-1]`; with `return_entropy`, the pair (log-probabilities,
    entropies). A label outside [0, V) that is not `ignore_index` gives NaN
    (its entropy is still computed); a token whose logits are all -inf
    gives 0 for both.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x, w = jnp.ones((2, 3)), jnp.zeros((3, 4))
    >>> log_q, entropy = jxent.linear_log_probs(x, w, jnp.array([0, 3]),
    ...                                         return_entropy=True)
    >>> print(log_q.round(4), entropy.round(4))  # uniform over 4: log 4
    [-1.3863 -1.3863] [1.3863 1.3863]
  """
  return log_probs(x, w, labels, bias=bias, temperature=temperature,
                   logit_softcap=logit_softcap,
                   return_entropy=return_entropy, ignore_index=ignore_index,
                   where=where, block_size=block_size)
