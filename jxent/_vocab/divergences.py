"""KL and generalised JS divergences between two linear heads."""

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks
from jxent._numerics.logsumexp import is_nonempty
from jxent._vocab import blocks as _blocks
from jxent._vocab import chunks as _chunks
from jxent._vocab import rule as _rule
from jxent._vocab import walks as _walks
from jxent._vocab.blocks import Config, Walk, block_logits, walk_blocks

# --- KL divergence -------------------------------------------------------------


class _Pair(_rule.Op):
  """What KL and JS share: two heads, a token mask; `per_row` ends with
  the rows that have a gradient."""

  def row_cotangents(self, per_row, data, cotangents):
    g, _ = cotangents  # The weights in the mean are constants.
    if _rule.is_zero(g):
      return None
    return jnp.where(per_row[-1], g, 0)

  def block_cotangents(self, per_row, data, g, blocks, want):
    p, q = blocks
    # Rows that do not count are skipped outright: an empty row's
    # probabilities are exp(-inf + inf) = NaN, and 0 * NaN is NaN.
    live = p.live & per_row[-1][:, None]
    dzp, dzq = self.logits_cotangents(per_row, g, p.logits, q.logits, live,
                                      want)
    return tuple(None if dz is None else jnp.where(live, dz, 0)
                 for dz in (dzp, dzq))


@dataclasses.dataclass(frozen=True)
class _KL(_Pair):
  """KL(P || Q) between two heads' softmaxes."""

  cfg: Config

  def forward(self, heads, data):
    (p, q), (keep,) = heads, data
    p_max, p_sum, q_max, q_sum, cross, p_excess, q_excess = (
        _walks.pair_stats(p, q, self.cfg))
    norm_p = _walks.normaliser(p_max, p_sum, p_excess)
    norm_q = _walks.normaliser(q_max, q_sum, q_excess)
    p_nonempty, q_nonempty = is_nonempty(p_sum), is_nonempty(q_sum)
    counts = keep & p_nonempty
    # D = E_p[z_p - z_q] - lse_p + lse_q, the log-sum-exps' shifts
    # subtracted apart from their sums (exact for huge logits); an empty P
    # gives 0, an empty Q against a live P inf, with no gradient (a NaN
    # would spread into every weight).
    value = cross / jnp.where(p_nonempty, p_sum, 1) + norm_q.minus(norm_p)
    value = jnp.where(q_nonempty, value, jnp.inf)
    value = jnp.where(counts, value, 0)
    return (value, counts.astype(value.dtype)), (norm_p, norm_q, value,
                                                 counts & q_nonempty)

  def logits_cotangents(self, per_row, g, zp, zq, live, want):
    norm_p, norm_q, value, _ = per_row
    log_p = norm_p.log_probs(jnp.where(live, zp, -jnp.inf))
    log_q = norm_q.log_probs(jnp.where(live, zq, -jnp.inf))
    probs_p = jnp.exp(log_p)
    # dD/dz_p = p (log p - log q - D), 0 where p = 0; dD/dz_q = q - p.
    dzp = g[:, None] * _walks.times_finite(
        probs_p, log_p - log_q - value[:, None]) if want[0] else None
    dzq = g[:, None] * (jnp.exp(log_q) - probs_p) if want[1] else None
    return dzp, dzq


def _two_heads(p_x, p_w, q_x, q_w, p_bias, q_bias, prefix="p_",
               other="q_"):
  p, batch = _blocks.prepare_head(p_x, p_w, p_bias, x_name=f"{prefix}x",
                                  w_name=f"{prefix}w",
                                  bias_name=f"{prefix}bias")
  q, q_batch = _blocks.prepare_head(
      q_x, q_w, q_bias, x_name=f"{other}x", w_name=f"{other}w",
      bias_name=f"{other}bias", vocab=p.w.shape[1])
  if q_batch != batch:
    raise ValueError(
        f"`{prefix}x` and `{other}x` must have the same tokens, got"
        f" {batch} and {q_batch}.")
  return p, q, batch


def kl_divergence(p_x, p_w, q_x, q_w, walk: Walk, *, p_bias=None,
                  q_bias=None, where=None, reduction="none",
                  batch_axis_name=None):
  """`linear_kl_divergence` and its sharded form (`walk.axis_name`)."""
  p, q, batch = _two_heads(p_x, p_w, q_x, q_w, p_bias, q_bias)
  cfg = _blocks.config_for([p, q], walk)
  reduction = _checks.check_reduction(reduction)
  keep = _walks.token_mask(where, batch)
  loss, _ = _chunks.reduce(_KL(cfg), (p, q), (keep,), reduction,
                           _chunks.plan(walk, reduction, p, heads=2), batch,
                           batch_axis_name)
  return loss


# --- generalised Jensen-Shannon divergence --------------------------------------


def _mixture_terms(zp, zq, norm_p, norm_q, beta, live):
  """log p, log q, p, q and log m of one block, m = beta p + (1 - beta) q."""
  log_p = norm_p.log_probs(jnp.where(live, zp, -jnp.inf))
  log_q = norm_q.log_probs(jnp.where(live, zq, -jnp.inf))
  # log m in log space: stable, and -inf only where both are 0. The double
  # where gives logaddexp finite stand-ins there: its derivative at
  # (-inf, -inf) is NaN, which a zero cotangent would not cancel in reverse
  # over reverse.
  either = (log_p > -jnp.inf) | (log_q > -jnp.inf)
  log_m = jnp.where(either, jnp.logaddexp(
      math.log(beta) + jnp.where(either, log_p, 0),
      math.log1p(-beta) + jnp.where(either, log_q, 0)), -jnp.inf)
  return log_p, log_q, jnp.exp(log_p), jnp.exp(log_q), log_m


@dataclasses.dataclass(frozen=True)
class _JS(_Pair):
  """The generalised JS divergence between two heads' softmaxes."""

  cfg: Config
  beta: float

  def forward(self, heads, data):
    (p, q), (keep,) = heads, data
    cfg, beta = self.cfg, self.beta
    p_max, p_sum, q_max, q_sum, _, p_excess, q_excess = _walks.pair_stats(
        p, q, cfg)
    norm_p = _walks.normaliser(p_max, p_sum, p_excess)
    norm_q = _walks.normaliser(q_max, q_sum, q_excess)
    offset = _blocks.offset_of(cfg, p.w.shape[1])

    # A second walk, now that both log-sum-exps are known: KL(P || M) and
    # KL(Q || M).
    def body(i, carry):
      kl_pm, kl_qm = carry
      zp, _, live, _ = block_logits(*p, i, cfg, offset)
      zq, _, _, _ = block_logits(*q, i, cfg, offset)
      log_p, log_q, probs_p, probs_q, log_m = _mixture_terms(
          zp, zq, norm_p, norm_q, beta, live)
      kl_pm = kl_pm + jnp.sum(_walks.times_finite(probs_p, log_p - log_m), 1)
      kl_qm = kl_qm + jnp.sum(_walks.times_finite(probs_q, log_q - log_m), 1)
      return kl_pm, kl_qm

    zeros = jnp.zeros(p_sum.shape, cfg.acc)
    kl_pm, kl_qm = walk_blocks(body, (zeros, zeros), p.w.shape[1],
                               cfg.block, cfg.axis_name is not None)
    if cfg.axis_name is not None:
      kl_pm, kl_qm = lax.psum((kl_pm, kl_qm), cfg.axis_name)
    # Rows with an empty P or Q have no mixture to speak of: 0.
    counts = keep & is_nonempty(p_sum) & is_nonempty(q_sum)
    value = jnp.where(counts, beta * kl_pm + (1 - beta) * kl_qm, 0)
    return (value, counts.astype(value.dtype)), (norm_p, norm_q, kl_pm,
                                                 kl_qm, counts)

  def logits_cotangents(self, per_row, g, zp, zq, live, want):
    norm_p, norm_q, kl_pm, kl_qm, _ = per_row
    beta = self.beta
    log_p, log_q, probs_p, probs_q, log_m = _mixture_terms(
        zp, zq, norm_p, norm_q, beta, live)
    # dJS/dz_p = beta p (log p - log m - KL(P || M)), and for Q alike with
    # 1 - beta; 0 where the probability is 0.
    dzp = (g * beta)[:, None] * _walks.times_finite(
        probs_p, log_p - log_m - kl_pm[:, None]) if want[0] else None
    dzq = (g * (1 - beta))[:, None] * _walks.times_finite(
        probs_q, log_q - log_m - kl_qm[:, None]) if want[1] else None
    return dzp, dzq


def js_divergence(p_x, p_w, q_x, q_w, walk: Walk, *, beta=0.5, p_bias=None,
                  q_bias=None, where=None, reduction="none",
                  batch_axis_name=None):
  """`linear_js_divergence` and its sharded form (`walk.axis_name`)."""
  beta = _checks.static_number("beta", beta)
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"`beta` must be in [0, 1], got {beta!r}.")
  if beta in (0.0, 1.0):
    # The limits, exactly: forward KL at 0, reverse KL at 1.
    first, second = (("p", "q") if beta == 0.0 else ("q", "p"))
    heads = dict(p=(p_x, p_w, p_bias), q=(q_x, q_w, q_bias))
    (ax, aw, ab), (bx, bw, bb) = heads[first], heads[second]
    return kl_divergence(ax, aw, bx, bw, walk, p_bias=ab, q_bias=bb,
                         where=where, reduction=reduction,
                         batch_axis_name=batch_axis_name)
  p, q, batch = _two_heads(p_x, p_w, q_x, q_w, p_bias, q_bias)
  cfg = _blocks.config_for([p, q], walk)
  reduction = _checks.check_reduction(reduction)
  keep = _walks.token_mask(where, batch)
  loss, _ = _chunks.reduce(_JS(cfg, beta), (p, q), (keep,), reduction,
                           _chunks.plan(walk, reduction, p, heads=2), batch,
                           batch_axis_name)
  return loss


def linear_kl_divergence(
    p_x: jax.typing.ArrayLike,
    p_w: jax.typing.ArrayLike,
    q_x: jax.typing.ArrayLike,
    q_w: jax.typing.ArrayLike,
    *,
    p_bias: jax.typing.ArrayLike | None = None,
    q_bias: jax.typing.ArrayLike | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    reduction: _checks.Reduction = "none",
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""KL divergence D_KL(P || Q) between two linear heads, per token.

  .. math::
     D_{KL}(P \| Q) = \sum_v P_v (\log P_v - \log Q_v), \quad
     P = \operatorname{softmax}(z_p), \ Q = \operatorname{softmax}(z_q),
     \quad z = c \tanh\!\big((x W + b) / c\big) / T

  For distillation over a large vocabulary, without the logits of either
  head: one walk over the vocabulary forward, one backward. The argument
  order follows the mathematics, as in `kl_divergence`: forward KL is
  (teacher, student), reverse KL is (student, teacher). The hidden sizes
  of the heads may differ; their vocabularies must match. A frozen head
  (not differentiated, say a teacher under `stop_gradient` or outside
  `grad`'s arguments) costs no gradient matmuls. Exact; reverse mode and
  second derivatives (no forward mode alone).

  Args:
    p_x: Hidden states of P, shape [..., D_p].
    p_w: Output projection of P, shape [D_p, V].
    q_x: Hidden states of Q, shape [..., D_q], the same tokens.
    q_w: Output projection of Q, shape [D_q, V].
    p_bias: Optional bias of P, shape [V].
    q_bias: Optional bias of Q, shape [V].
    temperature: :math:`T > 0`, applied to both heads after the soft cap.
    logit_softcap: Soft cap :math:`c > 0` of both heads, or None.
    where: Optional boolean mask of the tokens' shape; tokens where it is
      False give 0 and no gradient.
    block_size: Vocabulary columns per block (default from the shapes).
    reduction: "none" (per token), "sum", or "mean" over the tokens that
      count (kept by `where`, with P's logits not all -inf).
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `linear_softmax_cross_entropy`; "fast" needs reduction "mean" or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose (one
      float32 [chunk, V] buffer per head, both near 32 MiB in all on a CPU,
      1 GiB on a GPU).

  Returns:
    Float32 (or float64) divergences of shape `p_x.shape[:-1]`, or a
    scalar. P mass on a class Q rules out (-inf) gives inf. Masked and
    empty tokens: see docs/conventions.md, "Masked and empty rows and tokens".

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x = jnp.ones((1, 1))
    >>> p_w = jnp.log(jnp.array([[0.9, 0.1]]))
    >>> q_w = jnp.zeros((1, 2))
    >>> print(jxent.linear_kl_divergence(x, p_w, x, q_w).round(4))
    [0.3681]
  """
  return kl_divergence(p_x, p_w, q_x, q_w,
                       Walk(block_size, logit_softcap, temperature,
                            mode=mode, token_chunk=token_chunk),
                       p_bias=p_bias, q_bias=q_bias, where=where,
                       reduction=reduction)


def linear_js_divergence(
    p_x: jax.typing.ArrayLike,
    p_w: jax.typing.ArrayLike,
    q_x: jax.typing.ArrayLike,
    q_w: jax.typing.ArrayLike,
    *,
    beta: float = 0.5,
    p_bias: jax.typing.ArrayLike | None = None,
    q_bias: jax.typing.ArrayLike | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    reduction: _checks.Reduction = "none",
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""Generalised Jensen-Shannon divergence between two linear heads.

  .. math::
     \mathrm{JS}_\beta(P, Q) = \beta D_{KL}(P \| M)
       + (1 - \beta) D_{KL}(Q \| M), \qquad M = \beta P + (1 - \beta) Q

  for :math:`0 < \beta < 1` (at 0.5 the usual JS divergence), computed
  without the logits: one walk for the log-sum-exps, one for the two
  divergences to the mixture (in log space, so the mixture is exact), one
  backward. At :math:`\beta = 0` and 1 the divergence itself is 0; as in
  the generalised JSD of on-policy distillation (TRL's GKD, Liger), the
  endpoints are its limits after dividing by :math:`\beta` or
  :math:`1 - \beta`: :math:`\beta = 0` gives exactly the forward KL
  D_KL(P || Q) and :math:`\beta = 1` the reverse KL D_KL(Q || P)
  (`linear_kl_divergence`), never NaN.

  Args:
    p_x: Hidden states of P, shape [..., D_p].
    p_w: Output projection of P, shape [D_p, V].
    q_x: Hidden states of Q, shape [..., D_q], the same tokens.
    q_w: Output projection of Q, shape [D_q, V].
    beta: :math:`\beta` in [0, 1], a Python number.
    p_bias: Optional bias of P, shape [V].
    q_bias: Optional bias of Q, shape [V].
    temperature: :math:`T > 0`, applied to both heads after the soft cap.
    logit_softcap: Soft cap :math:`c > 0` of both heads, or None.
    where: Optional boolean token mask; masked tokens give 0.
    block_size: Vocabulary columns per block (default from the shapes).
    reduction: "none" (per token), "sum", or "mean" over the tokens that
      count (kept by `where`, with neither P's nor Q's logits all -inf).
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `linear_softmax_cross_entropy`; "fast" needs reduction "mean" or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose (one
      float32 [chunk, V] buffer per head, both near 32 MiB in all on a CPU,
      1 GiB on a GPU).

  Returns:
    Float32 (or float64) divergences of the tokens' shape, or a scalar.
    Masked and empty tokens: see docs/conventions.md, "Masked and empty
    rows and tokens".

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x = jnp.ones((1, 1))
    >>> p_w = jnp.log(jnp.array([[1.0, 0.0]]))
    >>> q_w = jnp.log(jnp.array([[0.0, 1.0]]))
    >>> print(jxent.linear_js_divergence(x, p_w, x, q_w).round(4))  # log 2
    [0.6931]
  """
  return js_divergence(p_x, p_w, q_x, q_w,
                       Walk(block_size, logit_softcap, temperature,
                            mode=mode, token_chunk=token_chunk),
                       beta=beta, p_bias=p_bias, q_bias=q_bias, where=where,
                       reduction=reduction)
