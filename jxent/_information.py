r"""Information, entropy and divergences of categorical distributions.

Two families share one implementation of each quantity:

* over probability vectors `p` and `q` (`entropy`, `cross_entropy`, ...);
* over logits, unnormalised log-probabilities (`entropy_from_logits`, ...),
  which go through the shared log-sum-exp and never exponentiate raw logits.

All results are in nats unless `base` is given, and come back in float32 for
16-bit inputs (float32 accumulation), otherwise in the input dtype.

The functions of logits have custom derivatives (`jax.custom_jvp`), written
as the cross-entropies' are: one pass of row sums forward, and a tangent
recomputed element-wise from the logits and a few numbers per row, under
`jax.checkpoint`. Every differentiation mode works, and reverse mode keeps
no float32 [batch, classes] array, which distillation over a large
vocabulary needs.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jxent import _checks, _rows
from jxent._logsumexp import apply_mask, row_sums, safe_log, shift_of
from jxent._rows import keeps_exp

Axis = int | tuple[int, ...]


def _in_base(value: jax.Array, log_base: float | None) -> jax.Array:
  return value if log_base is None else value / log_base


def _reduce_classes(terms, axes, mask, log_base):
  """Sums per-class terms over `axes`; excluded classes contribute 0."""
  if mask is not None:
    terms = jnp.where(mask, terms, 0)
  return _in_base(jnp.sum(terms, axis=axes), log_base)


def _probabilities(name: str, p) -> jax.Array:
  p = jnp.asarray(p)
  _checks.check_floating(name, p)
  return p


def _pair(
    name_a: str, a: jax.Array, name_b: str, b: jax.Array, axis, where
) -> tuple[jax.Array, jax.Array, tuple[int, ...], jax.Array | None]:
  """Validates two arrays; returns them upcast and broadcast, axes, mask."""
  shape = _checks.broadcast_shapes(name_a, a, name_b, b)
  dtype = _checks.compute_dtype(a.dtype, b.dtype)
  a = jnp.broadcast_to(a.astype(dtype), shape)
  b = jnp.broadcast_to(b.astype(dtype), shape)
  axes = _checks.canonical_axes(axis, len(shape))
  return a, b, axes, _checks.broadcast_where(where, shape)


def _neg_x_log_y(x, y):
  """-x log y with 0 log 0 = 0 in value and gradient; NaN for x < 0."""
  # Double where: swap the 0/0 case for a safe 1 before the log, so neither
  # the value nor the gradient (-x/y) sees 0 * inf.
  y_safe = jnp.where((x == 0) & (y == 0), 1, y)
  return jnp.where(x < 0, jnp.nan, -x * jnp.log(y_safe))


def _rel_entr(p, q):
  """p log(p/q), as scipy.special.rel_entr, with finite gradients at p=0."""
  positive = p > 0
  # Double where: log of safe 1s where p = 0, then select 0 there, so the
  # gradient at p = 0 is 0, not 0 * -inf.
  p_safe = jnp.where(positive, p, 1)
  q_safe = jnp.where(positive, q, 1)
  value = p_safe * (jnp.log(p_safe) - jnp.log(q_safe))
  return jnp.where(positive, value, jnp.where(p == 0, 0, jnp.nan))


def information(
    p: jax.typing.ArrayLike, *, base: float | None = None
) -> jax.Array:
  r"""Self-information, or surprisal, of an outcome of probability `p`.

  .. math:: I(x) = -\log P(x)

  Rare outcomes carry more information: a certain one carries none, an
  impossible one infinitely much.

  Args:
    p: Probabilities, any shape.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of `p.shape`: `inf` where `p` is 0, NaN where `p` is negative.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.information(jnp.array(0.5), base=2))  # a coin: heads
    1.0
    >>> print(jxent.information(jnp.array(1 / 6), base=2).round(3))  # a six
    2.585
  """
  log_base = _checks.check_base(base)
  p = _probabilities("p", p)
  p = p.astype(_checks.compute_dtype(p.dtype))
  return _in_base(-jnp.log(p), log_base)


def entropy(
    p: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""Entropy of a categorical distribution: its expected information.

  .. math:: H(P) = -\sum_x P(x) \log P(x), \qquad 0 \log 0 = 0

  Args:
    p: Probabilities along `axis`. They are used as given, not normalised.
    axis: The class axis, or tuple of axes.
    where: Boolean mask broadcastable to `p`; excluded classes contribute
      nothing.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of `p.shape` without `axis`. Zero probabilities contribute 0, with
    a finite (zero) gradient; a negative probability gives NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.entropy(jnp.array([0.5, 0.5]), base=2))
    1.0
    >>> print(f"{jxent.entropy(jnp.full(6, 1 / 6)):.4f}")  # a fair die
    1.7918
  """
  log_base = _checks.check_base(base)
  p = _probabilities("p", p)
  p = p.astype(_checks.compute_dtype(p.dtype))
  axes = _checks.canonical_axes(axis, p.ndim)
  mask = _checks.broadcast_where(where, p.shape)
  return _reduce_classes(_neg_x_log_y(p, p), axes, mask, log_base)


def cross_entropy(
    p: jax.typing.ArrayLike,
    q: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""Cross-entropy of a model distribution `q` under data distribution `p`.

  .. math:: H(P, Q) = -\sum_x P(x) \log Q(x) = H(P) + D_{KL}(P \| Q)

  The expected information of outcomes drawn from P, coded for Q.

  Args:
    p: Data probabilities along `axis`.
    q: Model probabilities along `axis`; broadcastable with `p`.
    axis: The class axis, or tuple of axes.
    where: Boolean mask; excluded classes contribute nothing.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of the broadcast shape without `axis`. Classes with `p = 0`
    contribute 0 even where `q = 0`, with finite gradients; `p > 0` where
    `q = 0` gives `inf`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> p = jnp.array([1.0, 0.0, 0.0, 0.0])
    >>> q = jnp.array([0.7, 0.1, 0.05, 0.15])
    >>> print(jxent.cross_entropy(p, q).round(4))  # -ln 0.7
    0.3567
  """
  log_base = _checks.check_base(base)
  p, q = _probabilities("p", p), _probabilities("q", q)
  p, q, axes, mask = _pair("p", p, "q", q, axis, where)
  return _reduce_classes(_neg_x_log_y(p, q), axes, mask, log_base)


def kl_divergence(
    p: jax.typing.ArrayLike,
    q: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""Kullback-Leibler divergence of `q` from `p`: D_KL(P || Q).

  .. math:: D_{KL}(P \| Q) = \sum_x P(x) \log \frac{P(x)}{Q(x)}
     = H(P, Q) - H(P)

  The extra information paid for coding P with Q. It is not symmetric.

  Note:
    The arguments follow the mathematics: `p` is the data (target)
    distribution and comes first. This is the reverse of optax's
    `kl_divergence(log_predictions, targets)`, which also takes
    log-probabilities for the predictions.

  Args:
    p: Data probabilities along `axis`.
    q: Model probabilities along `axis`; broadcastable with `p`.
    axis: The class axis, or tuple of axes.
    where: Boolean mask; excluded classes contribute nothing.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of the broadcast shape without `axis`, >= 0 for normalised
    inputs. Classes with `p = 0` contribute 0 with finite gradients.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> p, q = jnp.array([0.9, 0.1]), jnp.array([0.5, 0.5])
    >>> print(jxent.kl_divergence(p, q).round(4),
    ...       jxent.kl_divergence(q, p).round(4))
    0.3681 0.5108
  """
  log_base = _checks.check_base(base)
  p, q = _probabilities("p", p), _probabilities("q", q)
  p, q, axes, mask = _pair("p", p, "q", q, axis, where)
  return _reduce_classes(_rel_entr(p, q), axes, mask, log_base)


def js_divergence(
    p: jax.typing.ArrayLike,
    q: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""Jensen-Shannon divergence: a symmetric, bounded KL.

  .. math:: \mathrm{JS}(P, Q) = \tfrac12 D_{KL}(P \| M)
     + \tfrac12 D_{KL}(Q \| M), \qquad M = \tfrac12 (P + Q)

  It is at most log 2 (1 bit) for normalised inputs.

  Args:
    p: Probabilities along `axis`.
    q: Probabilities along `axis`; broadcastable with `p`.
    axis: The class axis, or tuple of axes.
    where: Boolean mask; excluded classes contribute nothing.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of the broadcast shape without `axis`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.js_divergence(jnp.array([1.0, 0.0]),
    ...                           jnp.array([0.0, 1.0]), base=2))
    1.0
  """
  log_base = _checks.check_base(base)
  p, q = _probabilities("p", p), _probabilities("q", q)
  p, q, axes, mask = _pair("p", p, "q", q, axis, where)
  m = 0.5 * (p + q)
  terms = 0.5 * (_rel_entr(p, m) + _rel_entr(q, m))
  return _reduce_classes(terms, axes, mask, log_base)


def _logits(name: str, x) -> jax.Array:
  x = jnp.asarray(x)
  _checks.check_floating(name, x)
  return x


def _shifted(logits, mask, axis_name):
  """Masked logits minus their row's shift (classes last), and the shift."""
  x = apply_mask(logits, mask)
  row_max = jnp.max(x, axis=-1, initial=-jnp.inf).astype(
      _checks.compute_dtype(x.dtype))
  if axis_name is not None:
    row_max = lax.pmax(lax.stop_gradient(row_max), axis_name)
  shift = shift_of(row_max)
  return x.astype(shift.dtype) - shift[..., None], shift


def _recompute(logits, mask, shift, log_sumexp, exps=None):
  """The shifted logits and the softmax, from the saved per-row numbers.

  With `exps`, the forward pass's exp(logits - shift), the softmax is
  rescaled from it instead of recomputed.
  """
  x = apply_mask(logits, mask)
  shifted = x.astype(shift.dtype) - shift[..., None]
  if exps is not None:
    return shifted, exps * jnp.exp(-log_sumexp)[..., None]
  return shifted, jnp.exp(shifted - log_sumexp[..., None])


def _sums(axis_name, keep_exp, *terms):
  """Row sums of the terms, over every shard of `axis_name`.

  With `keep_exp` (see `jxent._rows.keeps_exp`) they are taken one by one,
  and XLA materialises the shared exp; else in one pass that keeps nothing.
  """
  if keep_exp:
    sums = tuple(jnp.sum(term, axis=-1) for term in terms)
  else:
    sums = row_sums((terms[0].ndim - 1,), *terms)
  return sums if axis_name is None else lax.psum(sums, axis_name)


def _times_finite(weight, value):
  """weight * value with 0 * (+-inf) = 0: value is swapped for 0 there.

  Double where: the swap keeps the derivative finite too. A NaN weight is
  not 0, so it still makes the product NaN.
  """
  has_mass = weight != 0
  return jnp.where(has_mass, weight * jnp.where(has_mass, value, 0), 0)


def _row_tangent(axis_name, grad, dlogits):
  tangent = jnp.sum(grad * dlogits.astype(grad.dtype), axis=-1)
  return tangent if axis_name is None else lax.psum(tangent, axis_name)


# --- entropy ------------------------------------------------------------------


def _entropy_parts(axis_name, logits, mask):
  keep = keeps_exp(logits.dtype)
  shifted, shift = _shifted(logits, mask, axis_name)
  e = jnp.exp(shifted)
  sumexp, dot = _sums(axis_name, keep, e, _times_finite(e, shifted))
  log_sumexp = safe_log(sumexp)
  # H = -sum p log p = log_sumexp - E_p[shifted]; an empty row has H = 0.
  entropy = jnp.where(sumexp != 0, log_sumexp - dot / sumexp, 0)
  return entropy, shift, log_sumexp, e if keep else None


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def entropy_rows(axis_name, logits, mask):
  """H(softmax(logits)) per row, classes last, in nats."""
  return _entropy_parts(axis_name, logits, mask)[0]


def _entropy_tangent(axis_name, logits, mask, shift, log_sumexp, entropy,
                     dlogits, exps=None):
  shifted, probs = _recompute(logits, mask, shift, log_sumexp, exps)
  # dH/dz_c = -p_c (log p_c + H), 0 where p_c = 0.
  grad = -_times_finite(
      probs, shifted - log_sumexp[..., None] + entropy[..., None])
  return _row_tangent(axis_name, grad, dlogits)


@functools.partial(entropy_rows.defjvp, symbolic_zeros=True)
def _entropy_rows_jvp(axis_name, primals, tangents):
  logits, mask = primals
  dlogits, _ = tangents
  entropy, shift, log_sumexp, exps = _entropy_parts(axis_name, logits, mask)
  if exps is not None:  # Kept by the forward pass (see keeps_exp).
    tangent = _entropy_tangent(axis_name, logits, mask, shift, log_sumexp,
                               entropy, dlogits, exps)
  else:
    # jax.checkpoint: reverse mode saves the logits and per-row numbers.
    tangent = jax.checkpoint(_entropy_tangent, static_argnums=(0,))(
        axis_name, logits, mask, shift, log_sumexp, entropy, dlogits)
  return entropy, tangent


# --- cross-entropy and KL divergence --------------------------------------------


def _pair_value(kind, axis_name, p_logits, q_logits, mask):
  """The row values and P's and Q's per-row numbers, in one pass of sums."""
  keep = keeps_exp(p_logits.dtype) and keeps_exp(q_logits.dtype)
  sp, shift_p = _shifted(p_logits, mask, axis_name)
  sq, shift_q = _shifted(q_logits, mask, axis_name)
  ep, eq = jnp.exp(sp), jnp.exp(sq)
  # KL sums p (shifted_p - shifted_q) in one term, so nearly equal P and Q
  # do not cancel two large sums; the cross-entropy sums p (-shifted_q).
  per_class = sp - sq if kind == "kl" else -sq
  sum_p, sum_q, dot = _sums(axis_name, keep, ep, eq,
                            _times_finite(ep, per_class))
  lse_p, lse_q = safe_log(sum_p), safe_log(sum_q)
  mean = dot / jnp.where(sum_p != 0, sum_p, 1)
  # D_KL = E_p[shifted_p - shifted_q] - lse_p + lse_q and H(P, Q) =
  # E_p[-shifted_q] + lse_q, for a P with any mass; an empty P gives 0.
  value = mean + lse_q - (lse_p if kind == "kl" else 0)
  value = jnp.where(sum_p != 0, value, 0)
  exps = (ep, eq) if keep else (None, None)
  return value, (shift_p, lse_p, sum_p), (shift_q, lse_q), exps


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def pair_rows(kind, axis_name, p_logits, q_logits, mask):
  """H(P, Q) (kind "cross_entropy") or D_KL(P || Q) (kind "kl") per row."""
  return _pair_value(kind, axis_name, p_logits, q_logits, mask)[0]


def _p_tangent(kind, axis_name, p_logits, q_logits, mask, p_shift, p_lse,
               q_shift, q_lse, value, dlogits, p_exps=None):
  sp, probs_p = _recompute(p_logits, mask, p_shift, p_lse, p_exps)
  sq, _ = _recompute(q_logits, mask, q_shift, q_lse)
  log_q = sq - q_lse[..., None]
  if kind == "kl":
    # dD/dz_p,c = p_c (log p_c - log q_c - D).
    per_class = sp - p_lse[..., None] - log_q - value[..., None]
  else:
    # dH/dz_p,c = p_c (-log q_c - H).
    per_class = -log_q - value[..., None]
  return _row_tangent(axis_name, _times_finite(probs_p, per_class), dlogits)


def _q_tangent(axis_name, p_logits, q_logits, mask, p_shift, p_lse, p_sum,
               q_shift, q_lse, dlogits, p_exps=None, q_exps=None):
  # d/dz_q,c of both H(P, Q) and D_KL(P || Q) is q_c - p_c (0 for an
  # empty P).
  _, probs_p = _recompute(p_logits, mask, p_shift, p_lse, p_exps)
  _, probs_q = _recompute(q_logits, mask, q_shift, q_lse, q_exps)
  grad = jnp.where((p_sum != 0)[..., None], probs_q - probs_p, 0)
  return _row_tangent(axis_name, grad, dlogits)


@functools.partial(pair_rows.defjvp, symbolic_zeros=True)
def _pair_rows_jvp(kind, axis_name, primals, tangents):
  p_logits, q_logits, mask = primals
  dp, dq, _ = tangents
  value, p, q, (p_exps, q_exps) = _pair_value(kind, axis_name, p_logits,
                                              q_logits, mask)
  tangent = jnp.zeros_like(value)
  # Without kept exps (see keeps_exp), under jax.checkpoint: reverse mode
  # then saves the logits and per-row numbers only.
  kept = p_exps is not None
  if not _rows.is_zero_tangent(dp):
    p_rule = _p_tangent if kept else jax.checkpoint(_p_tangent,
                                                    static_argnums=(0, 1))
    tangent = tangent + p_rule(
        kind, axis_name, p_logits, q_logits, mask, p[0], p[1], q[0], q[1],
        value, dp, *((p_exps,) if kept else ()))
  if not _rows.is_zero_tangent(dq):
    q_rule = _q_tangent if kept else jax.checkpoint(_q_tangent,
                                                    static_argnums=(0,))
    tangent = tangent + q_rule(
        axis_name, p_logits, q_logits, mask, p[0], p[1], p[2], q[0], q[1],
        dq, *((p_exps, q_exps) if kept else ()))
  return value, tangent


# --- public functions of logits -------------------------------------------------


def entropy_from_logits(
    logits: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""Entropy of the categorical distribution `softmax(logits)`.

  .. math:: H(P) = -\sum_x P(x) \log P(x), \qquad P = \operatorname{softmax}(z)

  Every differentiation mode works; reverse mode keeps only the logits and
  a few numbers per row, so an entropy bonus over a large vocabulary costs
  no float32 copy of the logits.

  Args:
    logits: Unnormalised log-probabilities along `axis`; -inf marks an
      impossible class. Log-probabilities are valid logits.
    axis: The class axis, or tuple of axes.
    where: Boolean mask; excluded classes get no probability.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of `logits.shape` without `axis`. A row with every class masked
    (or a zero-length class axis) has entropy 0; a NaN logit gives NaN.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> print(jxent.entropy_from_logits(jnp.zeros(4), base=2))
    2.0
  """
  log_base = _checks.check_base(base)
  logits = _logits("logits", logits)
  axes = _checks.canonical_axes(axis, logits.ndim)
  mask = _checks.broadcast_where(where, logits.shape)
  mask = None if mask is None else _rows.classes_last(mask, axes)
  value = entropy_rows(None, _rows.classes_last(logits, axes), mask)
  return _in_base(value, log_base)


def _logits_pair(
    p_logits, q_logits, axis, where
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  p_logits = _logits("p_logits", p_logits)
  q_logits = _logits("q_logits", q_logits)
  shape = _checks.broadcast_shapes("p_logits", p_logits, "q_logits",
                                   q_logits)
  axes = _checks.canonical_axes(axis, len(shape))
  mask = _checks.broadcast_where(where, shape)
  p_logits = _rows.classes_last(jnp.broadcast_to(p_logits, shape), axes)
  q_logits = _rows.classes_last(jnp.broadcast_to(q_logits, shape), axes)
  mask = None if mask is None else _rows.classes_last(mask, axes)
  return p_logits, q_logits, mask


def cross_entropy_from_logits(
    p_logits: jax.typing.ArrayLike,
    q_logits: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""Cross-entropy H(P, Q) with P and Q given by logits.

  .. math:: H(P, Q) = -\sum_x P(x) \log Q(x),
     \quad P = \operatorname{softmax}(z_p),\ Q = \operatorname{softmax}(z_q)

  Differentiable in both arguments, in every mode.

  Args:
    p_logits: Logits of the data distribution P.
    q_logits: Logits of the model distribution Q; broadcastable.
    axis: The class axis, or tuple of axes.
    where: Boolean mask applied to both; excluded classes get no
      probability in either.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of the broadcast shape without `axis`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> p_logits = jnp.log(jnp.array([1.0, 0.0, 0.0, 0.0]))
    >>> q_logits = jnp.log(jnp.array([0.7, 0.1, 0.05, 0.15]))
    >>> print(jxent.cross_entropy_from_logits(p_logits, q_logits).round(4))
    0.3567
  """
  log_base = _checks.check_base(base)
  p, q, mask = _logits_pair(p_logits, q_logits, axis, where)
  return _in_base(pair_rows("cross_entropy", None, p, q, mask), log_base)


def kl_divergence_from_logits(
    p_logits: jax.typing.ArrayLike,
    q_logits: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
) -> jax.Array:
  r"""KL divergence D_KL(P || Q) with P and Q given by logits.

  .. math:: D_{KL}(P \| Q) = \sum_x P(x) (\log P(x) - \log Q(x))

  Differentiable in both arguments, in every mode. Reverse mode keeps only
  the logits and a few numbers per row, as distillation needs.

  Note:
    `p_logits`, the data distribution, comes first. optax's
    `kl_divergence_with_log_targets(log_predictions, log_targets)` takes the
    reverse order.

  Args:
    p_logits: Logits of the data distribution P.
    q_logits: Logits of the model distribution Q; broadcastable.
    axis: The class axis, or tuple of axes.
    where: Boolean mask applied to both.
    base: Logarithm base; None gives nats, 2 gives bits.

  Returns:
    Array of the broadcast shape without `axis`: 0 where P is empty,
    `inf` where P has mass on a class that Q rules out.

  Examples:
    >>> import jax.numpy as jnp
    >>> import jxent
    >>> p_logits = jnp.log(jnp.array([0.9, 0.1]))
    >>> print(jxent.kl_divergence_from_logits(p_logits, jnp.zeros(2)).round(4))
    0.3681
  """
  log_base = _checks.check_base(base)
  p, q, mask = _logits_pair(p_logits, q_logits, axis, where)
  return _in_base(pair_rows("kl", None, p, q, mask), log_base)
