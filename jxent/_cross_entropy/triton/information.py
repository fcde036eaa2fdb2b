"""Forward kernels for the entropy, cross-entropy and KL of logits.

One Triton program per row walks the row's classes tile by tile and reads
each logit once, where XLA reads the logits twice (a max, then the sums):

* `entropy_stats`: the online max, the sum of exponentials rescaled to it
  (its terms at the max counted apart, for the excess over 1), and
  sum_c e_c (z_c - m), rebased when the max moves;
* `pair_stats`: the same sums for P and Q, and the row's
  sum_c p_c (shifted_p - shifted_q) / C (KL) or sum_c p_c (-shifted_q) / C
  (cross-entropy), rebased when either max moves.

They compute what `jxent._information.logits` computes with XLA (-inf,
masks and NaN included); the tests compare the two in Pallas' interpret
mode. Their backward kernels are in `information_gradient`; forward mode
and second derivatives stay XLA's (the custom JVPs recompute the softmax
from the logits and these per-row numbers).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jxent._cross_entropy.triton.row_stats import online_step
from jxent._numerics.logsumexp import shift_of


def times_finite(e, value):
  # e * value with 0 where e is 0, even if value is infinite (0 log 0 = 0).
  return jnp.where(e != 0, e * value, 0.0)


class Walk:
  """A row's tiles: masked loads only where the tiles do not divide it."""

  def __init__(self, width, block, m_ref):
    self.block = block
    self.ragged = width % block != 0
    self.width = width
    self.m_ref = m_ref

  def tiles(self):
    return pl.cdiv(self.width, self.block)

  def _load(self, ref, cols, other):
    if self.ragged:
      return plgpu.load(ref.at[cols], mask=cols < self.width, other=other)
    return plgpu.load(ref.at[cols])

  def keep(self, i):
    """Tile i of the mask (nonzero: kept), or None without one."""
    if self.m_ref is None:
      return None
    return self._load(self.m_ref, i * self.block + jnp.arange(self.block), 0)

  def logits(self, ref, i, keep):
    """Tile i of a row of logits in float32, -inf where masked or past it."""
    cols = i * self.block + jnp.arange(self.block)
    x = self._load(ref, cols, -jnp.inf).astype(jnp.float32)
    return x if keep is None else jnp.where(keep != 0, x, -jnp.inf)

  def store(self, ref, i, values):
    """Writes tile i of a row (its columns inside the row only)."""
    cols = i * self.block + jnp.arange(self.block)
    if self.ragged:
      plgpu.store(ref.at[cols], values, mask=cols < self.width)
    else:
      plgpu.store(ref.at[cols], values)


def _entropy_kernel(*refs, block, masked):
  x_ref = refs[0]
  m_ref = refs[1] if masked else None
  shift_ref, sum_ref, excess_ref, dot_ref = refs[-4:]
  walk = Walk(x_ref.shape[0], block, m_ref)

  def body(i, carry):
    run_max, rest, ties, dot = carry
    x = walk.logits(x_ref, i, walk.keep(i))
    sum_old = rest + ties
    run_max, old, new, scale, shifted, rest, ties = online_step(
        run_max, rest, ties, x)
    # sum e (z - shift), rebased: e scales by `scale`, and each z - shift
    # gains old - new. Before any mass both sums are 0. A scale of 0 (a
    # jump past exp's range) leaves no old term at all, as XLA's final
    # shift leaves them 0: the where keeps 0 * inf out (logits spanning
    # more than the float range make (old - new) * sum_old infinite).
    dot = jnp.where(scale == 0, 0.0, scale * (dot + (old - new) * sum_old))
    dot = dot + jnp.sum(times_finite(jnp.exp(shifted), shifted))
    return run_max, rest, ties, dot

  zero = jnp.float32(0)
  run_max, rest, ties, dot = lax.fori_loop(
      0, walk.tiles(), body, (jnp.float32(-jnp.inf), zero, zero, zero))
  # A NaN anywhere unmasked has made the sums NaN, as in the XLA path.
  shift_ref[...] = shift_of(run_max)
  sum_ref[...] = rest + ties
  excess_ref[...] = rest + (ties - 1.0)
  dot_ref[...] = dot


def _pair_kernel(*refs, block, masked, kind, num_classes):
  p_ref, q_ref = refs[0], refs[1]
  m_ref = refs[2] if masked else None
  outs = refs[-7:]
  walk = Walk(p_ref.shape[0], block, m_ref)

  def body(i, carry):
    p_max, p_rest, p_ties, q_max, q_rest, q_ties, dot, ruled_max = carry
    keep = walk.keep(i)
    zp, zq = walk.logits(p_ref, i, keep), walk.logits(q_ref, i, keep)
    p_sum_old = p_rest + p_ties
    p_max, p_old, p_new, p_scale, sp, p_rest, p_ties = online_step(
        p_max, p_rest, p_ties, zp)
    q_max, q_old, q_new, _, sq, q_rest, q_ties = online_step(
        q_max, q_rest, q_ties, zq)
    # sum p (per_class) / C, rebased: p's terms scale by p_scale; for the
    # KL each shifted_p gains p_old - p_new; for both each -shifted_q gains
    # q_new - q_old. A p_scale of 0 leaves no old term (the where keeps
    # 0 * inf out), as XLA's final shift leaves them 0.
    if kind == "kl":
      dot = dot + (p_old - p_new) / num_classes * p_sum_old
    dot = jnp.where(p_scale == 0, 0.0, p_scale * dot)
    old_mass = p_scale * p_sum_old  # The old P mass at the new shift.
    dot = dot + jnp.where(old_mass == 0, 0.0,
                          (q_new - q_old) / num_classes * old_mass)
    # A class that Q rules out (-inf) has per_class +inf: its term is inf
    # if p is not 0 at the final shift, which only the end knows. Its
    # largest p logit is kept apart, and its terms left out here.
    ruled_out = zq == -jnp.inf
    ruled_max = jnp.maximum(ruled_max,
                            jnp.max(jnp.where(ruled_out, zp, -jnp.inf)))
    per_class = sp - sq if kind == "kl" else -sq
    terms = times_finite(jnp.exp(sp), per_class / num_classes)
    dot = dot + jnp.sum(jnp.where(ruled_out, 0.0, terms))
    return (p_max, p_rest, p_ties, q_max, q_rest, q_ties, dot, ruled_max)

  zero, none = jnp.float32(0), jnp.float32(-jnp.inf)
  start = (none, zero, zero) * 2 + (zero, none)
  (p_max, p_rest, p_ties, q_max, q_rest, q_ties, dot,
   ruled_max) = lax.fori_loop(0, walk.tiles(), body, start)
  p_shift = shift_of(p_max)
  # P's mass on a class that Q rules out, at the final shift: inf then.
  # (A select between two literals fails Triton's lowering: one is dot.)
  dot = jnp.where(jnp.exp(ruled_max - p_shift) != 0, dot + jnp.inf, dot)
  values = (p_shift, p_rest + p_ties, p_rest + (p_ties - 1.0),
            shift_of(q_max), q_rest + q_ties, q_rest + (q_ties - 1.0), dot)
  for ref, value in zip(outs, values, strict=True):
    ref[...] = value


def _call(kernel, n_out, config, name):
  return pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct((), jnp.float32)] * n_out,
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret, name=name)


def _rows(a, num_classes):
  return a.reshape(-1, num_classes)


def entropy_stats(logits, mask, config):
  """`(shift, sumexp, excess, dot)` of logits [..., C], each [...].

  As `jxent._information.logits` computes them with XLA: the shift (the
  row max, 0 where infinite), the sum of the shifted exponentials and its
  excess over 1 (exact), and sum_c e_c (z_c - shift) with 0 where e_c is 0.
  """
  batch, num_classes = logits.shape[:-1], logits.shape[-1]
  inputs = [_rows(logits, num_classes)]
  if mask is not None:
    inputs.append(_rows(mask, num_classes).astype(jnp.int8))
  kernel = functools.partial(_entropy_kernel, block=config.block,
                             masked=mask is not None)
  outs = jax.vmap(_call(kernel, 4, config, "jxent_entropy_stats"))(*inputs)
  return tuple(o.reshape(batch) for o in outs)


def pair_stats(kind, p_logits, q_logits, mask, config):
  """`(shift_p, sum_p, excess_p, shift_q, sum_q, excess_q, dot)`, each
  [...], of P's and Q's logits [..., C] of one shape.

  `dot` is sum_c p_c (shifted_p - shifted_q) / C for `kind` "kl", and
  sum_c p_c (-shifted_q) / C for "cross_entropy" (unnormalised p_c, 0
  where it is 0), as `jxent._information.logits` computes it.
  """
  batch, num_classes = p_logits.shape[:-1], p_logits.shape[-1]
  inputs = [_rows(p_logits, num_classes), _rows(q_logits, num_classes)]
  if mask is not None:
    inputs.append(_rows(mask, num_classes).astype(jnp.int8))
  kernel = functools.partial(
      _pair_kernel, block=config.block, masked=mask is not None, kind=kind,
      num_classes=max(num_classes, 1))
  outs = jax.vmap(_call(kernel, 7, config, f"jxent_{kind}_stats"))(*inputs)
  return tuple(o.reshape(batch) for o in outs)
