r"""Information, entropy and divergences of probability vectors.

`information`, `entropy`, `cross_entropy`, `kl_divergence` and
`js_divergence` take probabilities; their counterparts of logits live in
`jxent._information.logits`. All results are in nats unless `base` is
given, and come back in float32 for 16-bit inputs (float32 accumulation),
otherwise in the input dtype.
"""

import jax
import jax.numpy as jnp

from jxent._numerics import checks as _checks

Axis = int | tuple[int, ...]


def in_base(value: jax.Array, log_base: float | None) -> jax.Array:
  return value if log_base is None else value / log_base


def _reduce_classes(terms, axes, mask, log_base):
  """Sums per-class terms over `axes`; excluded classes contribute 0."""
  if mask is not None:
    terms = jnp.where(mask, terms, 0)
  return in_base(jnp.sum(terms, axis=axes), log_base)


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
  return in_base(-jnp.log(p), log_base)


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
