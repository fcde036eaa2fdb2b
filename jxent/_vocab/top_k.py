"""KL from a sparse teacher (its top-k log-probabilities) to a head."""

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks
from jxent._numerics.logsumexp import is_nonempty, sum_and_excess
from jxent._vocab import blocks as _blocks
from jxent._vocab import chunks as _chunks
from jxent._vocab import rule as _rule
from jxent._vocab import walks as _walks
from jxent._vocab.blocks import Config, Walk, block_logits, walk_blocks

# --- a sparse teacher: its top-k log-probabilities -------------------------------

_TAILS = ("renormalize", "bin")


def _in_block(indices, columns_start, i, cfg, offset):
  """Where each top-k index falls in block i: local position and whether."""
  local = indices - offset - columns_start
  inside = (local >= 0) & (local < cfg.block) & (
      indices >= offset + i * cfg.block) & (indices < cfg.num_classes)
  return jnp.clip(local, 0, cfg.block - 1), inside


def _at_top(array, local):
  """`array.at[...]` of each row's top-k local columns ([tokens, k]), for
  an in-place update of a [tokens, block] array (no buffer of its own)."""
  rows = lax.broadcasted_iota(jnp.int32, local.shape, 0)
  return array.at[rows, local]


def _rule_out_top(logits, local, inside):
  """The logits with the top k's columns at -inf, in place (a min with -inf
  there, and with +inf, which changes nothing, for an index outside the
  block)."""
  return _at_top(logits, local).min(jnp.where(inside, -jnp.inf, jnp.inf))


@dataclasses.dataclass(frozen=True)
class _TopK(_rule.Op):
  """KL from a teacher's top k to one head's softmax."""

  cfg: Config
  tail: str

  def forward(self, heads, data):
    (head,), (indices, teacher_log_probs, legal, keep) = heads, data
    cfg, static = self.cfg, self
    tokens, local_vocab = head.x.shape[0], head.w.shape[1]
    offset = _blocks.offset_of(cfg, local_vocab)
    k = indices.shape[1]

    def body(i, carry):
      row_max, rest, ties, picked, tail_max, tail_sum = carry
      logits, _, live, start = block_logits(*head, i, cfg, offset)
      logits = jnp.where(live, logits, -jnp.inf)
      new_max, rest, ties, _, _ = _blocks.online_split_lse(
          row_max, rest, ties, logits)
      local, inside = _in_block(indices, start, i, cfg, offset)
      found = jnp.take_along_axis(logits, local, axis=1)
      picked = picked + jnp.where(inside, found, 0)
      if static.tail == "bin":
        # The student's mass outside the teacher's top k, as a log-sum-exp
        # of its own (not 1 - the top k's, which would cancel when it is
        # small, nor relative to the row's max, where it could underflow).
        tail_max, tail_sum, _, _ = _blocks.online_lse(
            tail_max, tail_sum, _rule_out_top(logits, local, inside))
      return new_max, rest, ties, picked, tail_max, tail_sum

    zeros = jnp.zeros((tokens,), cfg.acc)
    minus_inf = jnp.full((tokens,), -jnp.inf, cfg.acc)
    init = (minus_inf, zeros, zeros, jnp.zeros((tokens, k), cfg.acc),
            minus_inf, zeros)
    row_max, rest, ties, picked, tail_max, tail_sum = walk_blocks(
        body, init, local_vocab, cfg.block, cfg.axis_name is not None)
    if cfg.axis_name is not None:
      picked = lax.psum(picked, cfg.axis_name)
      row_max, rest, ties = _blocks.combine_split_lse(row_max, rest, ties,
                                                      cfg.axis_name)
      if static.tail == "bin":
        tail_max, tail_sum, _, _ = _blocks.combine_lse(tail_max, tail_sum,
                                                       cfg.axis_name)
    # The log-sum-exps keep their shifts apart from their sums, so huge
    # logits lose nothing (see `walks.Normaliser`).
    sumexp, excess = sum_and_excess(rest, ties)
    norm_q = _walks.normaliser(row_max, sumexp, excess)
    log_q = (picked - norm_q.shift[:, None]) - norm_q.log_sumexp[:, None]
    teacher = teacher_log_probs.astype(cfg.acc)
    counts = keep
    if static.tail == "renormalize":
      # The teacher's top k, renormalised to sum to 1. A teacher without
      # mass (every log-probability -inf) has nothing to renormalise: its
      # token is empty, 0, and does not count; the double where keeps
      # -inf - -inf out of the logs and their derivatives.
      live = jnp.any(teacher > -jnp.inf, axis=1)
      counts = counts & live
      safe = jnp.where(live[:, None], teacher, 0)
      log_p = jnp.where(live[:, None], safe - jax.nn.logsumexp(
          safe, axis=1, keepdims=True), -jnp.inf)
      probs_p = jnp.exp(log_p)
      value = jnp.sum(_walks.times_finite(probs_p, log_p - log_q), 1)
      tail_mass = jnp.zeros_like(value)
      norm_tail = norm_q
    else:
      # The teacher's missing mass r as one more bin, against the student's
      # mass outside the top k. When the top k cover every class the student
      # can reach, there is no tail, and r (rounding) is dropped; a teacher
      # whose top k sum to more than 1 (bfloat16 rounding, a sloppy teacher)
      # has r = 0: the value is then sum p (log p - log q), and the gradient
      # is its derivative.
      log_p = teacher
      probs_p = jnp.exp(log_p)
      has_tail = is_nonempty(tail_sum)
      tail_mass = jnp.where(has_tail, jnp.maximum(1 - jnp.sum(probs_p, 1), 0),
                            0)
      norm_tail = _walks.normaliser(tail_max, tail_sum)
      log_r = jnp.log(jnp.where(tail_mass > 0, tail_mass, 1))
      # r (log r - log Q_tail), log Q_tail = lse_tail - lse_q.
      value = jnp.sum(_walks.times_finite(probs_p, log_p - log_q), 1) + (
          _walks.times_finite(tail_mass, log_r - norm_tail.minus(norm_q)))
    # An empty student against a live teacher gives inf, as the dense KL
    # does, with no gradient (a NaN would spread into every weight). A bad
    # index gives NaN, unless `where` masks its token.
    value = jnp.where(counts, value, 0)
    value = jnp.where(legal | ~keep, value, jnp.nan)
    grad_rows = counts & is_nonempty(sumexp)
    per_row = (norm_q, probs_p, tail_mass, norm_tail, grad_rows)
    return (value, counts.astype(value.dtype)), per_row

  def row_cotangents(self, per_row, data, cotangents):
    g, _ = cotangents  # The weights in the mean are constants.
    if _rule.is_zero(g):
      return None
    _, _, _, _, grad_rows = per_row
    _, _, legal, keep = data
    return jnp.where(grad_rows, g, 0) * jnp.where(legal | ~keep, 1, jnp.nan)

  def block_cotangents(self, per_row, data, g, blocks, want):
    norm_q, probs_p, tail_mass, norm_tail, counts = per_row
    indices = data[0]
    (block,), cfg = blocks, self.cfg
    logits, live = block.logits, block.live
    q = jnp.exp(norm_q.log_probs(jnp.where(live, logits, -jnp.inf)))
    local, inside = _in_block(indices, block.start, block.number, cfg,
                              block.offset)
    # d/dz_c = M q_c - p_c on the top k, with M = sum p + r the teacher's
    # mass (1, unless the top k sum to more than 1); with a tail bin, minus
    # r q_c / q_tail = r exp(z_c - lse_tail) outside it.
    mass = jnp.sum(probs_p, 1) + tail_mass
    dlogits = mass[:, None] * q
    if self.tail == "bin":
      share = jnp.exp(norm_tail.log_probs(_rule_out_top(
          jnp.where(live, logits, -jnp.inf), local, inside)))
      dlogits = dlogits - _walks.times_finite(tail_mass[:, None], share)
    # - p_c on the top k, added in place: no [tokens, block] buffer of its
    # own.
    dlogits = _at_top(dlogits, local).add(jnp.where(inside, -probs_p, 0))
    # Rows that do not count are skipped outright: an empty row's q is
    # exp(-inf + inf) = NaN, and 0 * NaN is NaN.
    return (jnp.where(counts[:, None], g[:, None] * dlogits, 0),)


def kl_divergence_from_top_k(top_k_indices, top_k_log_probs, x, w,
                             walk: Walk, *, tail="renormalize", bias=None,
                             where=None, reduction="none",
                             batch_axis_name=None, names=("x", "w", "bias")):
  """`linear_kl_divergence_from_top_k` and its sharded form."""
  if tail not in _TAILS:
    raise ValueError(f"`tail` must be one of {_TAILS}, got {tail!r}.")
  head, batch = _blocks.prepare_head(x, w, bias, x_name=names[0],
                                     w_name=names[1], bias_name=names[2])
  cfg = _blocks.config_for([head], walk)
  num_classes = cfg.num_classes
  indices = _checks.as_labels("top_k_indices", top_k_indices)
  teacher = jnp.asarray(top_k_log_probs)
  _checks.check_floating("top_k_log_probs", teacher)
  if indices.ndim < 1 or indices.shape[:-1] != batch:
    raise ValueError(
        f"`top_k_indices` must have shape x.shape[:-1] + (k,) ="
        f" {batch} + (k,), got {indices.shape}.")
  _checks.check_same_shape("top_k_indices", indices, "top_k_log_probs",
                           teacher)
  k = indices.shape[-1]
  if not 0 < k <= num_classes:
    raise ValueError(
        f"k = top_k_indices.shape[-1] must be in [1, {num_classes}], got {k}.")
  flat = indices.reshape(-1, k)
  keep = _walks.token_mask(where, batch)
  # A token with an index out of range gives NaN, never a wrapped class;
  # so does one that repeats an index (its teacher would count a class
  # twice). A masked token's indices are never looked at.
  sorted_indices = _checks.sort_labels(
      flat, num_classes, None, jnp.broadcast_to(~keep[:, None], flat.shape))
  ordered = jnp.sort(flat, axis=1)
  distinct = jnp.all(ordered[:, 1:] != ordered[:, :-1], axis=1) | ~keep
  _checks.declare_distinct_indices("top_k_indices", distinct)
  legal = jnp.all(sorted_indices.legal, axis=1) & distinct
  reduction = _checks.check_reduction(reduction)
  loss, _ = _chunks.reduce(
      _TopK(cfg, tail), (head,),
      (sorted_indices.class_index, lax.stop_gradient(teacher.reshape(-1, k)),
       legal, keep),
      reduction, _chunks.plan(walk, reduction, head), batch, batch_axis_name)
  return loss


def linear_kl_divergence_from_top_k(
    top_k_indices: jax.typing.ArrayLike,
    top_k_log_probs: jax.typing.ArrayLike,
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    *,
    tail: str = "renormalize",
    bias: jax.typing.ArrayLike | None = None,
    temperature: float = 1.0,
    logit_softcap: float | None = None,
    where: jax.typing.ArrayLike | None = None,
    block_size: int | None = None,
    reduction: _checks.Reduction = "none",
    mode: str = "auto",
    token_chunk: int | None = None,
) -> jax.Array:
  r"""KL from a sparse teacher (its top-k log-probabilities) to a linear head.

  The teacher P is given by its k most likely classes and their
  log-probabilities, as stored offline; the student Q is the full softmax of
  `cap(x @ w + bias) / T`, never materialised. The teacher's missing mass,
  :math:`r = 1 - \sum_{i \le k} P_i`, is handled one of two ways:

  * ``tail="renormalize"``: P is renormalised over its k classes,

    .. math:: D = \sum_{i \le k} \tilde P_i (\log \tilde P_i - \log Q_i),
       \quad \tilde P_i = P_i / \textstyle\sum_{j \le k} P_j

  * ``tail="bin"``: the missing mass is one more bin, against the student's
    mass outside the top k,

    .. math:: D = \sum_{i \le k} P_i (\log P_i - \log Q_i)
       + r (\log r - \log Q_{\mathrm{tail}}),
       \quad Q_{\mathrm{tail}} = \textstyle\sum_{v \notin \mathrm{top}\,k} Q_v

    (summed over those classes directly, not as 1 minus the top k's). When
    the top k cover every class the student can reach (no tail), r is
    rounding and is dropped. A teacher whose top-k probabilities sum to
    more than 1 (bfloat16 rounding, a sloppy teacher) has r = 0: the value
    is the first sum alone, and the gradient is its derivative.

  Differentiable with respect to `x`, `w` and `bias`; the teacher's
  log-probabilities are data (no gradient). Exact; reverse mode and
  second derivatives (no forward mode alone).

  Args:
    top_k_indices: Integer class indices of the teacher's top k, shape
      `x.shape[:-1] + (k,)`, distinct within a token.
    top_k_log_probs: The teacher's log-probabilities of those classes, the
      same shape.
    x: The student's hidden states, shape [..., D].
    w: The student's output projection, shape [D, V].
    tail: "renormalize" or "bin", as above.
    bias: Optional student bias, shape [V].
    temperature: :math:`T > 0`, the student's temperature (after the cap).
    logit_softcap: The student's soft cap :math:`c > 0`, or None.
    where: Optional boolean token mask; masked tokens give 0.
    block_size: Vocabulary columns per block (default from the shapes).
    reduction: "none" (per token), "sum", or "mean" over the tokens that
      count (kept by `where`, with student logits not all -inf).
    mode: "auto" (default), "fast" (token chunks, the gradients made in
      the forward pass) or "low_memory" (the vocabulary walk), as for
      `linear_softmax_cross_entropy`; "fast" needs reduction "mean" or "sum".
    token_chunk: The fast mode's tokens per chunk, or None to choose.

  Returns:
    Float32 (or float64) divergences of the tokens' shape, or a scalar. An
    index outside [0, V), or one repeated within a token, makes its token
    NaN. Masked and empty tokens, and an empty teacher: see
    docs/conventions.md, "Masked and empty rows and tokens".

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> x, w = jnp.ones((1, 2)), jnp.zeros((2, 4))  # student: uniform
    >>> teacher = jnp.log(jnp.array([[0.5, 0.5]]))  # on classes 0 and 1
    >>> print(jxent.linear_kl_divergence_from_top_k(
    ...     jnp.array([[0, 1]]), teacher, x, w).round(4))  # log 2
    [0.6931]
  """
  return kl_divergence_from_top_k(
      top_k_indices, top_k_log_probs, x, w,
      Walk(block_size, logit_softcap, temperature, mode=mode,
           token_chunk=token_chunk), tail=tail, bias=bias,
      where=where, reduction=reduction)
