r"""The forward walks the vocabulary-scale heads share.

Each head (cross-entropy, log-probabilities and entropy, KL, JS, top-k KL)
reduces its logits to a few float32 numbers per token in one walk over the
vocabulary (`jxent._vocab.blocks`): `stats` for one head, `pair_stats` for
two over the same vocabulary. Its custom VJP (`jxent._vocab.rule`) walks
again to compute the gradients block by block. Each is exact: it equals the
materialised computation to float tolerance, in value and gradient.

The logits of a head are `cap(x @ w + bias) / temperature`. A token whose
`where` is False (or whose label is `ignore_index`) gives 0 and no
gradient, and so does a token whose logits are all -inf.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics.logsumexp import log_sum, shift_of, sum_and_excess
from jxent._numerics.softmax_rows import times_finite
from jxent._vocab import blocks as _blocks
from jxent._vocab.blocks import Config, Head, block_logits, walk_blocks


class Normaliser(NamedTuple):
  """A row's log-sum-exp kept in two parts: shift + log_sumexp.

  The parts are never added: a log-probability is (z - shift) - log_sumexp,
  exact when the logits are huge (a constant 1e8 added to every logit
  changes no probability, and changes nothing here). An empty row has
  shift 0 and log_sumexp 0, so its log-probabilities are -inf.
  """

  shift: jax.Array
  log_sumexp: jax.Array

  def log_probs(self, logits):
    """log softmax of [tokens, block] logits of these rows."""
    return (logits - self.shift[:, None]) - self.log_sumexp[:, None]

  def minus(self, other: "Normaliser") -> jax.Array:
    """This log-sum-exp minus `other`'s, the shifts subtracted first."""
    return (self.shift - other.shift) + (self.log_sumexp - other.log_sumexp)


def normaliser(row_max, sumexp, excess=None) -> Normaliser:
  """The `Normaliser` of rows with this max and shifted sum.

  With `excess`, the sum minus 1 without rounding, the log keeps its
  digits near certainty (`logsumexp.log_sum`).
  """
  return Normaliser(shift_of(row_max), log_sum(sumexp, excess))


# --- the walks -------------------------------------------------------------


class Stats(NamedTuple):
  """One head's per-token numbers over the whole vocabulary ([tokens]).

  Attributes:
    row_max: The max logit (-inf for an empty row).
    sumexp: The sum of exp(logit - shift_of(row_max)).
    excess: sumexp - 1 without rounding (`logsumexp.sum_and_excess`).
    label_logit: The label's logit (0 without labels).
    entropy_sum: The sum of e (z - shift), e = exp(z - shift), with
      `entropy`; else 0.
    valid_count: With `smoothing`, the number of classes above -inf.
    valid_mean: With `smoothing`, the sum of (z - shift) / V over them.
    argmax: With `argmax`, the global column of the max logit (the first on
      ties), int32, -1 for an empty row or one with a NaN; else None.
  """

  row_max: jax.Array
  sumexp: jax.Array
  label_logit: jax.Array
  entropy_sum: jax.Array
  valid_count: jax.Array
  valid_mean: jax.Array
  excess: jax.Array
  argmax: jax.Array | None = None


def stats(head: Head, cfg: Config, *, label_index=None, entropy=False,
          smoothing=False, argmax=False) -> Stats:
  """One head's `Stats`, in one walk, over every shard."""
  tokens, local_vocab = head.x.shape[0], head.w.shape[1]
  offset = _blocks.offset_of(cfg, local_vocab)
  num_classes = cfg.num_classes

  def body(i, carry):
    row_max, rest, ties, picked, ent, count, valid_mean, arg = carry
    logits, columns, live, start = block_logits(*head, i, cfg, offset)
    logits = jnp.where(live, logits, -jnp.inf)
    previous = rest + ties
    new_max, rest, ties, old, new = _blocks.online_split_lse(
        row_max, rest, ties, logits)
    if argmax:
      # The running max rose only if this block holds a logit strictly
      # above it: the first column wins a tie.
      best = jnp.argmax(logits, axis=1).astype(jnp.int32)
      arg = jnp.where(new_max > row_max, offset + start + best, arg)
    if label_index is not None:
      is_label = (columns == label_index[:, None]) & live
      picked = picked + jnp.sum(jnp.where(is_label, logits, 0), 1)
    if entropy:
      # sum e (z - shift), rescaled and rebased when the shift moves; a
      # class with e = 0 adds 0 even at -inf.
      e = jnp.exp(logits - new[:, None])
      # The rebasing term is 0 when the rescale is (a jump of the max so
      # large that old - new times the sum would overflow).
      scale = _blocks.rescale(row_max, new)
      ent = scale * ent + times_finite(scale * previous, old - new) + (
          jnp.sum(times_finite(e, logits - new[:, None]), 1))
    if smoothing:
      # The valid classes' mean logit, kept relative to the running shift
      # (rebased when the shift moves) so huge logits lose nothing, and
      # summed as (z - shift) / V so rows near the float limits cannot
      # overflow.
      valid = logits > -jnp.inf
      valid_mean = valid_mean + count * (old - new) / num_classes + jnp.sum(
          jnp.where(valid, (logits - new[:, None]) / num_classes, 0), 1)
      count = count + jnp.sum(valid, axis=1).astype(cfg.acc)
    return new_max, rest, ties, picked, ent, count, valid_mean, arg

  zeros = jnp.zeros((tokens,), cfg.acc)
  init = ((jnp.full((tokens,), -jnp.inf, cfg.acc),) + (zeros,) * 6
          + (jnp.full((tokens,), -1, jnp.int32),))
  row_max, rest, ties, picked, ent, count, valid_mean, arg = walk_blocks(
      body, init, local_vocab, cfg.block, cfg.axis_name is not None)
  local_max = row_max
  if cfg.axis_name is not None:
    # Combine the shards: one max, then sums rescaled to it.
    row_max, (rest, ties), (valid_mean,), (picked, count), *weighted = (
        _blocks.combine_lse(
            row_max, rest, cfg.axis_name,
            rebased=((count / num_classes, valid_mean),),
            summed=(picked, count),
            weighted=((rest + ties, ent),) if entropy else (), ties=ties))
    if entropy:
      (ent,), = weighted
  if not argmax:
    arg = None
  else:
    if cfg.axis_name is not None:
      # The first column of the shards that hold the global max.
      none = jnp.iinfo(jnp.int32).max
      arg = lax.pmin(jnp.where((local_max == row_max) & (arg >= 0), arg,
                               none), cfg.axis_name)
      arg = jnp.where(arg == none, -1, arg)
    # A NaN max: no class is the argmax (a NaN is not above anything).
    arg = jnp.where(jnp.isnan(row_max), -1, arg)
  sumexp, excess = sum_and_excess(rest, ties)
  return Stats(row_max, sumexp, picked, ent, count, valid_mean, excess, arg)


def shown_lse(shown, shift, log_sumexp, nonempty):
  """Tokens' log-sum-exps, for monitoring: 0 where not `shown` (masked,
  ignored), -inf for an empty token."""
  return jnp.where(shown, jnp.where(nonempty, shift + log_sumexp, -jnp.inf),
                   0)


def shown_argmax(shown, argmax, dtype):
  """Tokens' argmax (`Stats.argmax`), -1 where not `shown`, as `dtype`: a
  float leaves a custom VJP without an integer cotangent (exact below
  2**24 classes; `checks.check_argmax_classes`)."""
  return jnp.where(shown, argmax, -1).astype(dtype)


def pair_stats(p: Head, q: Head, cfg: Config):
  """P's and Q's max and sum, and sum over P of e_p (z_p - z_q), one walk.

  Returns:
    `(p_max, p_sum, q_max, q_sum, cross, p_excess, q_excess)`, the excesses
    being the sums minus 1 without rounding (`logsumexp.sum_and_excess`).
  """
  tokens, local_vocab = p.x.shape[0], p.w.shape[1]
  offset = _blocks.offset_of(cfg, local_vocab)

  def body(i, carry):
    p_max, p_rest, p_ties, q_max, q_rest, q_ties, cross = carry
    zp, _, live, _ = block_logits(*p, i, cfg, offset)
    zq, _, _, _ = block_logits(*q, i, cfg, offset)
    zp, zq = jnp.where(live, zp, -jnp.inf), jnp.where(live, zq, -jnp.inf)
    new_p, p_rest, p_ties, _, shift_p = _blocks.online_split_lse(
        p_max, p_rest, p_ties, zp)
    q_max, q_rest, q_ties, _, _ = _blocks.online_split_lse(
        q_max, q_rest, q_ties, zq)
    ep = jnp.exp(zp - shift_p[:, None])
    # log p - log q up to the rows' log-sum-exps, in one term: nearly equal
    # P and Q do not cancel two large sums.
    cross = _blocks.rescale(p_max, shift_p) * cross + jnp.sum(
        times_finite(ep, zp - zq), 1)
    return new_p, p_rest, p_ties, q_max, q_rest, q_ties, cross

  zeros = jnp.zeros((tokens,), cfg.acc)
  minus_inf = jnp.full((tokens,), -jnp.inf, cfg.acc)
  p_max, p_rest, p_ties, q_max, q_rest, q_ties, cross = walk_blocks(
      body, (minus_inf, zeros, zeros, minus_inf, zeros, zeros, zeros),
      local_vocab, cfg.block, cfg.axis_name is not None)
  if cfg.axis_name is not None:
    local_p = shift_of(p_max)
    p_max, p_rest, p_ties = _blocks.combine_split_lse(p_max, p_rest, p_ties,
                                                      cfg.axis_name)
    cross = lax.psum(cross * jnp.exp(local_p - shift_of(p_max)),
                     cfg.axis_name)
    q_max, q_rest, q_ties = _blocks.combine_split_lse(q_max, q_rest, q_ties,
                                                      cfg.axis_name)
  p_sum, p_excess = sum_and_excess(p_rest, p_ties)
  q_sum, q_excess = sum_and_excess(q_rest, q_ties)
  return p_max, p_sum, q_max, q_sum, cross, p_excess, q_excess


def token_mask(where, batch, name="where"):
  """The token mask as a flat bool array (all True without one)."""
  if where is None:
    return jnp.ones((math.prod(batch),), bool)
  where = jnp.asarray(where)
  if where.dtype != jnp.bool_:
    raise TypeError(f"`{name}` must be a boolean mask, got {where.dtype}.")
  if where.shape != batch:
    raise ValueError(
        f"`{name}` must have the tokens' shape {batch}, got {where.shape}.")
  return where.reshape(-1)
