"""Backward kernels for the entropy, cross-entropy and KL of logits.

One Triton program per row reads the row's logits tile by tile (P's and
Q's for a pair), recomputes the softmax from the saved shift and
log-sum-exp, and writes the cotangent g times the gradient, in the logits'
dtype, once:

* entropy: dH/dz_c = -p_c (log p_c + H);
* P's side of a pair: p_c (log p_c - log q_c - D) for the KL,
  p_c (-log q_c - H) for the cross-entropy;
* Q's side of either: q_c - p_c (0 for an empty P).

Each term with p_c = 0 is 0, even where its log is -inf. They compute what
`jxent._information.logits` computes with XLA (-inf, masks and NaN
included), which `jxent._numerics.kernel_tangent` runs everywhere else; the
tests compare the two in Pallas' interpret mode.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jxent._cross_entropy.triton.config import KernelConfig
from jxent._cross_entropy.triton.information import Walk, times_finite


def _kernel(*refs, block, side, kind, masked):
  refs = list(refs)
  p_ref = refs.pop(0)
  q_ref = refs.pop(0) if side != "entropy" else None
  m_ref = refs.pop(0) if masked else None
  (out_ref,) = refs[-1:]
  g, p_shift, p_lse, *rest = (r[...] for r in refs[:-1])
  walk = Walk(p_ref.shape[0], block, m_ref)

  @pl.loop(0, walk.tiles())
  def _(i):
    keep = walk.keep(i)
    log_p = walk.logits(p_ref, i, keep) - p_shift - p_lse
    p = jnp.exp(log_p)
    if side == "entropy":
      (entropy,) = rest
      grad = -times_finite(p, log_p + entropy)
    else:
      q_shift, q_lse, value, p_sum = rest
      log_q = walk.logits(q_ref, i, keep) - q_shift - q_lse
      if side == "p":
        per_class = (log_p - log_q if kind == "kl" else -log_q) - value
        grad = times_finite(p, per_class)
      else:
        grad = jnp.where(p_sum != 0, jnp.exp(log_q) - p, 0.0)
    walk.store(out_ref, i, (g * grad).astype(out_ref.dtype))


def _scalars(*values):
  return [v.reshape(-1).astype(jnp.float32) for v in values]


def _call(side, kind, config, logits, mask, inputs):
  num_classes = logits.shape[-1]
  kernel = functools.partial(_kernel, block=config.block, side=side,
                             kind=kind, masked=mask is not None)
  call = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((num_classes,), logits.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret, name=f"jxent_{side}_gradient")
  return jax.vmap(call)(*inputs).reshape(logits.shape)


def _rows(*arrays):
  return [a.reshape(-1, a.shape[-1]) for a in arrays]


def entropy_gradient(g, logits, mask, shift, log_sumexp, entropy, *,
                     config: KernelConfig) -> jax.Array:
  """g times dH/dz of the entropy of logits [..., C], in their dtype.

  Args:
    g: The cotangent per row, [...].
    logits: The logits [..., C].
    mask: Boolean mask of their shape, or None.
    shift, log_sumexp, entropy: The rows' numbers from the forward pass.
    config: The tile configuration.
  """
  inputs = _rows(logits)
  if mask is not None:
    inputs += _rows(mask.astype(jnp.int8))
  inputs += _scalars(g, shift, log_sumexp, entropy)
  return _call("entropy", None, config, logits, mask, inputs)


def pair_gradient(kind, side, g, p_logits, q_logits, mask, p_shift, p_lse,
                  p_sum, q_shift, q_lse, value, *,
                  config: KernelConfig) -> jax.Array:
  """g times d/dz of the KL (`kind` "kl") or cross-entropy of logits.

  Args:
    kind: "kl" or "cross_entropy".
    side: "p" for the derivative by P's logits, "q" for Q's.
    g: The cotangent per row, [...].
    p_logits, q_logits: The logits [..., C] of P and Q.
    mask: Boolean mask of their shape, or None.
    p_shift, p_lse, p_sum, q_shift, q_lse, value: The rows' numbers from
      the forward pass (`value` is the KL or the cross-entropy).
    config: The tile configuration.

  Returns:
    The cotangent of the side's logits, in their dtype.
  """
  if side not in ("p", "q"):
    raise ValueError(f"`side` must be 'p' or 'q', got {side!r}.")
  logits = p_logits if side == "p" else q_logits
  inputs = _rows(p_logits, q_logits)
  if mask is not None:
    inputs += _rows(mask.astype(jnp.int8))
  inputs += _scalars(g, p_shift, p_lse, q_shift, q_lse, value, p_sum)
  return _call(side, kind, config, logits, mask, inputs)
