r"""Vocabulary-scale heads: log-probabilities, entropy, KL, JS, top-k KL.

What reinforcement learning and distillation need from a language model's
output layer, without ever holding its [tokens, vocabulary] logits: each
function walks the vocabulary in blocks (`jxent._blocks`), keeps a few
float32 numbers per token between its passes, and has a custom VJP that
walks again to compute the gradients block by block. Each is exact: it
equals the materialised computation to float tolerance, in value and
gradient.

The logits of a head are `cap(x @ w + bias) / temperature`. A token whose
`where` is False (or whose label is `ignore_index`) gives 0 and no
gradient, and so does a token whose logits are all -inf.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _blocks
from jxent._blocks import Config, Head, block_logits, walk_blocks
from jxent._logsumexp import is_nonempty, safe_log, shift_of

_PRIMAL = jax.custom_derivatives.CustomVJPPrimal
_ZERO = jax.custom_derivatives.SymbolicZero


def values(tree):
  """Unwraps a custom VJP rule's `CustomVJPPrimal`s into their values."""
  return jax.tree.map(lambda p: p.value, tree,
                      is_leaf=lambda p: isinstance(p, _PRIMAL))


def perturbed(head) -> tuple[bool, ...]:
  """Whether a head's x, w and bias are perturbed (need gradients)."""
  return tuple(isinstance(p, _PRIMAL) and p.perturbed for p in head)


def is_zero(cotangent) -> bool:
  return cotangent is None or isinstance(cotangent, _ZERO)


def times_finite(weight, value):
  """weight * value, 0 where weight is 0 (even if value is infinite)."""
  nonzero = weight != 0
  return jnp.where(nonzero, weight * jnp.where(nonzero, value, 0), 0)


def lse(row_max, sumexp):
  """The log-sum-exp of a row from its max and shifted sum (-inf if empty)."""
  return jnp.where(is_nonempty(sumexp), safe_log(sumexp) + shift_of(row_max),
                   -jnp.inf)


def jit_if_sharded(fn):
  """JAX 0.10 runs a custom VJP with symbolic zeros inside an eager
  `shard_map` only under `jit`; elsewhere the rule is called directly
  (checkify cannot linearise a jit that follows a check)."""
  jitted = jax.jit(fn, static_argnums=(0,))

  @functools.wraps(fn)
  def call(static, *args):
    return (jitted if static.cfg.axis_name is not None else fn)(static, *args)

  return call


# --- the walks -------------------------------------------------------------


def stats(head: Head, cfg: Config, *, label_index=None, entropy=False):
  """One head's max, sum, label logit and entropy sum, over every shard."""
  tokens, local_vocab = head.x.shape[0], head.w.shape[1]
  offset = _blocks.offset_of(cfg, local_vocab)

  def body(i, carry):
    row_max, sumexp, picked, ent = carry
    logits, columns, live, _ = block_logits(*head, i, cfg, offset)
    logits = jnp.where(live, logits, -jnp.inf)
    previous = sumexp
    new_max, sumexp, old, new = _blocks.online_lse(row_max, sumexp, logits)
    if label_index is not None:
      is_label = (columns == label_index[:, None]) & live
      picked = picked + jnp.sum(jnp.where(is_label, logits, 0), 1)
    if entropy:
      # sum e (z - shift), rescaled and rebased when the shift moves; a
      # class with e = 0 adds 0 even at -inf.
      e = jnp.exp(logits - new[:, None])
      ent = _blocks.rescale(row_max, new) * (ent + (old - new) * previous) + (
          jnp.sum(times_finite(e, logits - new[:, None]), 1))
    return new_max, sumexp, picked, ent

  zeros = jnp.zeros((tokens,), cfg.acc)
  init = (jnp.full((tokens,), -jnp.inf, cfg.acc), zeros, zeros, zeros)
  row_max, sumexp, picked, ent = walk_blocks(
      body, init, local_vocab, cfg.block, cfg.axis_name is not None)
  if cfg.axis_name is not None:
    row_max, sumexp, _, (picked,), (ent,) = _blocks.combine_lse(
        row_max, sumexp, cfg.axis_name, summed=(picked,),
        weighted=((sumexp, ent),))
  return row_max, sumexp, picked, ent


def pair_stats(p: Head, q: Head, cfg: Config):
  """P's and Q's max and sum, and sum over P of e_p (z_p - z_q), one walk."""
  tokens, local_vocab = p.x.shape[0], p.w.shape[1]
  offset = _blocks.offset_of(cfg, local_vocab)

  def body(i, carry):
    p_max, p_sum, q_max, q_sum, cross = carry
    zp, _, live, _ = block_logits(*p, i, cfg, offset)
    zq, _, _, _ = block_logits(*q, i, cfg, offset)
    zp, zq = jnp.where(live, zp, -jnp.inf), jnp.where(live, zq, -jnp.inf)
    new_p, p_sum, _, shift_p = _blocks.online_lse(p_max, p_sum, zp)
    q_max, q_sum, _, _ = _blocks.online_lse(q_max, q_sum, zq)
    ep = jnp.exp(zp - shift_p[:, None])
    # log p - log q up to the rows' log-sum-exps, in one term: nearly equal
    # P and Q do not cancel two large sums.
    cross = _blocks.rescale(p_max, shift_p) * cross + jnp.sum(
        times_finite(ep, zp - zq), 1)
    return new_p, p_sum, q_max, q_sum, cross

  zeros = jnp.zeros((tokens,), cfg.acc)
  minus_inf = jnp.full((tokens,), -jnp.inf, cfg.acc)
  p_max, p_sum, q_max, q_sum, cross = walk_blocks(
      body, (minus_inf, zeros, minus_inf, zeros, zeros), local_vocab,
      cfg.block, cfg.axis_name is not None)
  if cfg.axis_name is not None:
    local_p = shift_of(p_max)
    p_max, p_sum, _, _ = _blocks.combine_lse(p_max, p_sum, cfg.axis_name)
    cross = lax.psum(cross * jnp.exp(local_p - shift_of(p_max)),
                     cfg.axis_name)
    q_max, q_sum, _, _ = _blocks.combine_lse(q_max, q_sum, cfg.axis_name)
  return p_max, p_sum, q_max, q_sum, cross


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
