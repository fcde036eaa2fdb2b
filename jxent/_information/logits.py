r"""Entropy, cross-entropy and KL divergence of logits.

Logits are unnormalised log-probabilities; they go through the shared
log-sum-exp and are never exponentiated raw. Results are in nats unless
`base` is given.

The functions have custom derivatives (`jax.custom_jvp`), built on the row
mechanics the cross-entropies use (`jxent._numerics.softmax_rows`): one
pass of row sums forward, and a tangent recomputed element-wise from the
logits and a few numbers per row, under `jax.checkpoint` (on a platform
with a backward kernel, `jxent._numerics.kernel_tangent.row_tangent`,
whose reverse mode runs the kernel). Every
differentiation mode works, and reverse mode keeps no float32
[batch, classes] array, which distillation over a large vocabulary needs.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jxent._cross_entropy import api as _api
from jxent._cross_entropy import rows as _rows
from jxent._information.probabilities import in_base
from jxent._numerics import checks as _checks
from jxent._numerics import kernel_tangent
from jxent._numerics import softmax_rows as _softmax_rows
from jxent._numerics.logsumexp import exp_sum_terms, log_sum, sum_and_excess_of
from jxent._numerics.platforms import per_platform

Axis = int | tuple[int, ...]


def _logits(name: str, x) -> jax.Array:
  x = jnp.asarray(x)
  _checks.check_floating(name, x)
  return x


# --- entropy ------------------------------------------------------------------


def _entropy_stats(axis_name, keep, logits, mask):
  """XLA's `(shift, sumexp, excess, dot)` per row, and the exp if `keep`.

  dot is sum_c e_c (z_c - shift), 0 where e_c is 0; one pass of sums.
  """
  _, shifted, shift = _softmax_rows.shifted(logits, mask, axis_name)
  e = jnp.exp(shifted)
  exp_terms = exp_sum_terms(e, shifted)
  *exp_sums, dot = _softmax_rows.sums(
      axis_name, keep, *exp_terms, _softmax_rows.times_finite(e, shifted))
  sumexp, excess = sum_and_excess_of(tuple(exp_sums))
  return (shift, sumexp, excess, dot), e if keep else None


def _entropy_parts(axis_name, implementation, logits, mask):
  keep = _softmax_rows.keeps_exp(logits.dtype)
  # Inside shard_map (axis_name) the sums are combined over the mesh: XLA.
  kernels = () if axis_name is not None else _api.information_kernels(
      implementation, "entropy", (logits.dtype,), logits.shape[-1],
      math.prod(logits.shape[:-1]))
  if kernels and logits.size:  # (No rows: a kernel grid of no programs.)
    stats, e = _on_platforms(_entropy_stats, kernels, (None, keep), logits,
                             mask)
  else:
    kernels = ()
    stats, e = _entropy_stats(axis_name, keep, logits, mask)
  shift, sumexp, excess, dot = stats
  # log1p of the excess: exact near certainty where the sums split it.
  log_sumexp = log_sum(sumexp, excess)
  # H = -sum p log p = log_sumexp - E_p[shifted]; an empty row has H = 0.
  entropy = jnp.where(sumexp != 0, log_sumexp - dot / sumexp, 0)
  return entropy, shift, log_sumexp, e, _rows.backward_kernels(kernels)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _on_platforms(xla_stats, kernels, static, *arrays):
  """`xla_stats(*static, *arrays)`, computed on each platform's kernel.

  XLA everywhere, except on the platforms of `kernels`
  (`jxent._cross_entropy.api.information_kernels`), whose kernel gives the
  same per-row numbers; chosen per platform when the function is lowered
  (`platforms.per_platform`). A kept exp (a CPU's choice, traced for
  another platform too by a multi-platform `jax.export`) comes from XLA on
  every branch. The derivative is XLA's everywhere: the kernels have none.
  """
  def on(kernel):
    def run(*arrays):
      # XLA's exps, if kept, beside the kernel's sums (else XLA's unused
      # sums are dead code).
      _, exps = xla_stats(*static, *arrays)
      return tuple(kernel.compute(*arrays, kernel.config)), exps
    return run

  return per_platform(
      *arrays, default=lambda *a: xla_stats(*static, *a),
      **{k.platform: on(k) for k in kernels})


@_on_platforms.defjvp
def _on_platforms_jvp(xla_stats, kernels, static, primals, tangents):
  # The kernels give the numbers; their derivative is the XLA reference's.
  _, tangent = jax.jvp(lambda *a: xla_stats(*static, *a), primals, tangents)
  return _on_platforms(xla_stats, kernels, static, *primals), tangent


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def entropy_rows(axis_name, implementation, logits, mask):
  """H(softmax(logits)) per row, classes last, in nats.

  `implementation` chooses the forward pass's sums (see
  `jxent._cross_entropy.api.information_kernels`); ignored inside
  `shard_map`.
  """
  return _entropy_parts(axis_name, implementation, logits, mask)[0]


def _entropy_gradient(logits, mask, shift, log_sumexp, entropy, exps=None):
  shifted, probs = _softmax_rows.recompute(logits, mask, shift, log_sumexp,
                                           exps)
  # dH/dz_c = -p_c (log p_c + H), 0 where p_c = 0.
  return -_softmax_rows.times_finite(
      probs, shifted - log_sumexp[..., None] + entropy[..., None])


def _entropy_tangent(axis_name, logits, mask, shift, log_sumexp, entropy,
                     dlogits, exps=None):
  grad = _entropy_gradient(logits, mask, shift, log_sumexp, entropy, exps)
  return _softmax_rows.row_tangent(axis_name, grad, dlogits)


@functools.partial(entropy_rows.defjvp, symbolic_zeros=True)
def _entropy_rows_jvp(axis_name, implementation, primals, tangents):
  logits, mask = primals
  dlogits, _ = tangents
  entropy, shift, log_sumexp, exps, gradients = _entropy_parts(
      axis_name, implementation, logits, mask)
  if exps is not None:  # Kept by the forward pass (see keeps_exp).
    tangent = _entropy_tangent(axis_name, logits, mask, shift, log_sumexp,
                               entropy, dlogits, exps)
  elif gradients:
    # Reverse mode runs the backward kernel on its platform (XLA
    # elsewhere), and saves the logits and per-row numbers only.
    tangent = kernel_tangent.row_tangent(
        dlogits, (logits, mask, shift, log_sumexp, entropy),
        gradient=_entropy_gradient, kernels=gradients)
  else:
    # jax.checkpoint: reverse mode saves the logits and per-row numbers.
    tangent = jax.checkpoint(_entropy_tangent, static_argnums=(0,))(
        axis_name, logits, mask, shift, log_sumexp, entropy, dlogits)
  return entropy, tangent


# --- cross-entropy and KL divergence --------------------------------------------


def _pair_stats(kind, axis_name, keep, p_logits, q_logits, mask):
  """XLA's `(shift_p, sum_p, excess_p, shift_q, sum_q, excess_q, dot)` per
  row, and the exps `(ep, eq)` if `keep`: one pass of sums.

  dot is sum_c p_c per_class_c / C, with unnormalised p_c (0 where it is 0)
  and per_class shifted_p - shifted_q (KL) or -shifted_q (cross-entropy).
  """
  _, sp, shift_p = _softmax_rows.shifted(p_logits, mask, axis_name)
  _, sq, shift_q = _softmax_rows.shifted(q_logits, mask, axis_name)
  ep, eq = jnp.exp(sp), jnp.exp(sq)
  # KL sums p (shifted_p - shifted_q) in one term, so nearly equal P and Q
  # do not cancel two large sums; the cross-entropy sums p (-shifted_q).
  per_class = sp - sq if kind == "kl" else -sq
  # Divided by C before the sum and multiplied back after dividing by
  # sum_p, so that logits near the float limits cannot overflow the sum
  # when the mean itself is finite.
  classes = max(p_logits.shape[-1] * (
      1 if axis_name is None else lax.axis_size(axis_name)), 1)
  p_terms, q_terms = exp_sum_terms(ep, sp), exp_sum_terms(eq, sq)
  sums = _softmax_rows.sums(
      axis_name, keep, *p_terms, *q_terms,
      _softmax_rows.times_finite(ep, per_class / classes))
  n = len(p_terms)
  sum_p, excess_p = sum_and_excess_of(sums[:n])
  sum_q, excess_q = sum_and_excess_of(sums[n:2 * n])
  stats = (shift_p, sum_p, excess_p, shift_q, sum_q, excess_q, sums[-1])
  return stats, (ep, eq) if keep else (None, None)


def _pair_value(kind, axis_name, implementation, p_logits, q_logits, mask):
  """The row values and P's and Q's per-row numbers."""
  keep = (_softmax_rows.keeps_exp(p_logits.dtype)
          and _softmax_rows.keeps_exp(q_logits.dtype))
  # Inside shard_map (axis_name) the sums are combined over the mesh: XLA.
  kernels = () if axis_name is not None else _api.information_kernels(
      implementation, kind, (p_logits.dtype, q_logits.dtype),
      p_logits.shape[-1], math.prod(p_logits.shape[:-1]))
  if kernels and p_logits.size:  # (No rows: no kernel grid.)
    stats, exps = _on_platforms(_pair_stats, kernels, (kind, None, keep),
                                p_logits, q_logits, mask)
  else:
    kernels = ()
    stats, exps = _pair_stats(kind, axis_name, keep, p_logits, q_logits,
                              mask)
  shift_p, sum_p, excess_p, shift_q, sum_q, excess_q, dot = stats
  classes = max(p_logits.shape[-1] * (
      1 if axis_name is None else lax.axis_size(axis_name)), 1)
  # log1p of the excesses: exact where the sums split them.
  lse_p, lse_q = log_sum(sum_p, excess_p), log_sum(sum_q, excess_q)
  mean = dot / jnp.where(sum_p != 0, sum_p, 1) * classes
  # Each term p (shifted_p - shifted_q) is at most the float maximum (both
  # shifts are at most 0), so their mean is too; a finite mean that rounds
  # past it on the multiply back is saturated, not turned into inf. An
  # infinite dot (P's mass on a class that Q rules out) or NaN stays.
  top = jnp.finfo(mean.dtype).max
  mean = jnp.where(jnp.isfinite(dot), jnp.minimum(mean, top), mean)
  # D_KL = E_p[shifted_p - shifted_q] - lse_p + lse_q and H(P, Q) =
  # E_p[-shifted_q] + lse_q, for a P with any mass; an empty P gives 0.
  value = mean + lse_q - (lse_p if kind == "kl" else 0)
  value = jnp.where(sum_p != 0, value, 0)
  return (value, (shift_p, lse_p, sum_p), (shift_q, lse_q), exps,
          _rows.backward_kernels(kernels))


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def pair_rows(kind, axis_name, implementation, p_logits, q_logits, mask):
  """H(P, Q) (kind "cross_entropy") or D_KL(P || Q) (kind "kl") per row.

  `implementation` as for `entropy_rows`.
  """
  return _pair_value(kind, axis_name, implementation, p_logits, q_logits,
                     mask)[0]


def _p_gradient(kind, p_logits, q_logits, mask, p_shift, p_lse, p_sum,
                q_shift, q_lse, value, p_exps=None):
  del p_sum
  sp, probs_p = _softmax_rows.recompute(p_logits, mask, p_shift, p_lse, p_exps)
  sq, _ = _softmax_rows.recompute(q_logits, mask, q_shift, q_lse)
  log_q = sq - q_lse[..., None]
  if kind == "kl":
    # dD/dz_p,c = p_c (log p_c - log q_c - D).
    per_class = sp - p_lse[..., None] - log_q - value[..., None]
  else:
    # dH/dz_p,c = p_c (-log q_c - H).
    per_class = -log_q - value[..., None]
  return _softmax_rows.times_finite(probs_p, per_class)


def _q_gradient(p_logits, q_logits, mask, p_shift, p_lse, p_sum, q_shift,
                q_lse, value, p_exps=None, q_exps=None):
  # d/dz_q,c of both H(P, Q) and D_KL(P || Q) is q_c - p_c (0 for an
  # empty P).
  del value
  _, probs_p = _softmax_rows.recompute(p_logits, mask, p_shift, p_lse, p_exps)
  _, probs_q = _softmax_rows.recompute(q_logits, mask, q_shift, q_lse, q_exps)
  return jnp.where((p_sum != 0)[..., None], probs_q - probs_p, 0)


def _p_tangent(kind, axis_name, *residuals_and_tangent, p_exps=None):
  *residuals, dlogits = residuals_and_tangent
  grad = _p_gradient(kind, *residuals, p_exps=p_exps)
  return _softmax_rows.row_tangent(axis_name, grad, dlogits)


def _q_tangent(axis_name, *residuals_and_tangent, p_exps=None, q_exps=None):
  *residuals, dlogits = residuals_and_tangent
  grad = _q_gradient(*residuals, p_exps=p_exps, q_exps=q_exps)
  return _softmax_rows.row_tangent(axis_name, grad, dlogits)


@functools.partial(pair_rows.defjvp, symbolic_zeros=True)
def _pair_rows_jvp(kind, axis_name, implementation, primals, tangents):
  p_logits, q_logits, mask = primals
  dp, dq, _ = tangents
  value, p, q, (p_exps, q_exps), gradients = _pair_value(
      kind, axis_name, implementation, p_logits, q_logits, mask)
  residuals = (p_logits, q_logits, mask, *p, *q, value)
  tangent = jnp.zeros_like(value)
  kept = p_exps is not None
  for side, d in (("p", dp), ("q", dq)):
    if _softmax_rows.is_zero_tangent(d):
      continue
    if kept:  # The forward pass's exps (see keeps_exp).
      exps = dict(p_exps=p_exps) if side == "p" else dict(
          p_exps=p_exps, q_exps=q_exps)
      part = (functools.partial(_p_tangent, kind) if side == "p"
              else _q_tangent)(axis_name, *residuals, d, **exps)
    elif gradients:
      # Reverse mode runs the side's backward kernel on its platform (XLA
      # elsewhere), and saves the logits and per-row numbers only.
      part = kernel_tangent.row_tangent(
          d, residuals,
          gradient=(functools.partial(_p_gradient, kind) if side == "p"
                    else _q_gradient),
          kernels={platform: functools.partial(fn, side)
                   for platform, fn in gradients.items()})
    else:
      # Under jax.checkpoint: reverse mode saves the logits and per-row
      # numbers only.
      rule = (functools.partial(_p_tangent, kind) if side == "p"
              else _q_tangent)
      part = jax.checkpoint(rule, static_argnums=(0,))(
          axis_name, *residuals, d)
    tangent = tangent + part
  return value, tangent


# --- public functions of logits -------------------------------------------------


def entropy_from_logits(
    logits: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
    implementation: _api.Implementation = None,
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
    implementation: None (the default) chooses per platform when the
      function is lowered: on an NVIDIA GPU (CUDA), a Pallas Triton kernel
      computes the forward pass's per-row sums in one read of the logits;
      elsewhere, XLA. "xla" forces XLA; "triton" asks for the kernel and
      raises a `ValueError` without an NVIDIA GPU. The reverse-mode
      gradient runs the kernel's backward kernel there too; forward mode
      and second derivatives are XLA's custom JVP, so every mode works.

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
  mask = None if mask is None else _softmax_rows.classes_last(mask, axes)
  value = entropy_rows(None, implementation,
                       _softmax_rows.classes_last(logits, axes), mask)
  return in_base(value, log_base)


def _logits_pair(
    p_logits, q_logits, axis, where
) -> tuple[jax.Array, jax.Array, jax.Array | None]:
  p_logits = _logits("p_logits", p_logits)
  q_logits = _logits("q_logits", q_logits)
  shape = _checks.broadcast_shapes("p_logits", p_logits, "q_logits",
                                   q_logits)
  axes = _checks.canonical_axes(axis, len(shape))
  mask = _checks.broadcast_where(where, shape)
  p_logits = _softmax_rows.classes_last(jnp.broadcast_to(p_logits, shape), axes)
  q_logits = _softmax_rows.classes_last(jnp.broadcast_to(q_logits, shape), axes)
  mask = None if mask is None else _softmax_rows.classes_last(mask, axes)
  return p_logits, q_logits, mask


def cross_entropy_from_logits(
    p_logits: jax.typing.ArrayLike,
    q_logits: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
    implementation: _api.Implementation = None,
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
    implementation: None (the default) chooses per platform when the
      function is lowered: on an NVIDIA GPU (CUDA), a Pallas Triton kernel
      computes the forward pass's per-row sums in one read of the logits;
      elsewhere, XLA. "xla" forces XLA; "triton" asks for the kernel and
      raises a `ValueError` without an NVIDIA GPU. The reverse-mode
      gradient runs the kernel's backward kernel there too; forward mode
      and second derivatives are XLA's custom JVP, so every mode works.

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
  return in_base(pair_rows("cross_entropy", None, implementation, p, q,
                           mask), log_base)


def kl_divergence_from_logits(
    p_logits: jax.typing.ArrayLike,
    q_logits: jax.typing.ArrayLike,
    axis: Axis = -1,
    *,
    where: jax.typing.ArrayLike | None = None,
    base: float | None = None,
    implementation: _api.Implementation = None,
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
    implementation: None (the default) chooses per platform when the
      function is lowered: on an NVIDIA GPU (CUDA), a Pallas Triton kernel
      computes the forward pass's per-row sums in one read of the logits;
      elsewhere, XLA. "xla" forces XLA; "triton" asks for the kernel and
      raises a `ValueError` without an NVIDIA GPU. The reverse-mode
      gradient runs the kernel's backward kernel there too; forward mode
      and second derivatives are XLA's custom JVP, so every mode works.

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
  return in_base(pair_rows("kl", None, implementation, p, q, mask),
                 log_base)
