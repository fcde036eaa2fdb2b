"""The forward kernel: each row of logits to its `RowStats`, in one pass.

One Triton program per row walks the row's classes tile by tile, keeping an
online max and a sum of exponentials rescaled to it (its terms at the max
counted apart, for the excess over 1), and, as the options
need, the label's logit, the soft labels' mass and dot product, and the
valid classes' count, weight and mean (`jxent._cross_entropy.rows.RowStats`).
It reads the logits once, where XLA reads them twice (a max, then the sums).

It computes what `jxent._cross_entropy.rows.dense_row_stats` computes, -inf,
masks and NaN included; the tests compare the two in Pallas' interpret mode.
Per tile it does no more than the sums need. With `lane_sums` (a
configuration the sweep tries) the sums are kept per lane of the tile and
added across lanes once, after the loop, so a tile's only reduction across
threads is its max (the running shift); otherwise each tile's sums are
reduced as it goes. The
label's logit is one scalar load after the loop, not a compare and a sum
per tile; a NaN reaches the sum
of exponentials whether or not Triton's max propagates it (exp(NaN - shift)
is NaN, and so is every shift after a NaN max), so it needs no count; and
the loads are masked only where the tiles do not divide the row.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy.triton.config import KernelConfig
from jxent._cross_entropy.triton.inputs import row_inputs
from jxent._numerics.logsumexp import shift_of, split_exp
from jxent._numerics.options import CrossEntropyOptions


def online_step(run_max, rest, ties, x, part=jnp.sum):
  """One tile's step of the online max and split sum of exponentials.

  `part` reduces a tile's terms (a sum, or per lane). Returns the new max,
  the old and new shifts, the old sums' scale, the shifted tile, and the
  rescaled sums with the tile's.
  """
  new_max = jnp.maximum(run_max, jnp.max(x))
  old, new = shift_of(run_max), shift_of(new_max)
  # Rescale the running sums to the new shift. Before any mass (max -inf)
  # the sums are 0 and need no rescaling (and exp(0 - new) could overflow).
  scale = jnp.where(jnp.isinf(run_max), 1.0, jnp.exp(old - new))
  shifted = x - new
  # The terms at the shift (each 1) are counted apart from the rest, so
  # the sum's excess over 1 keeps its digits (`RowStats.excess`). When
  # the shift moves, the old ties fall below it and join the rest.
  moved = new != old
  block_rest, block_ties = split_exp(shifted)
  rest = (rest + jnp.where(moved, ties, 0.0)) * scale + part(block_rest)
  ties = jnp.where(moved, 0.0, ties) + part(block_ties)
  return new_max, old, new, scale, shifted, rest, ties


def _kernel(*refs, num_classes, block, kind, smoothing, weighted, masked,
            lane_sums):
  """One row: the refs are its logits, then the optional inputs, then outs."""
  refs = list(refs)
  x_ref = refs.pop(0)
  l_ref = refs.pop(0) if kind == "integer" else None
  t_ref = refs.pop(0) if kind == "soft" else None
  m_ref = refs.pop(0) if masked else None
  w_ref = refs.pop(0) if weighted else None
  out = refs
  width = x_ref.shape[0]
  # Static: whether the last tile runs past the row and loads need a mask.
  ragged = width % block != 0

  def load(ref, cols, inside, other):
    if not ragged:
      return plgpu.load(ref.at[cols])
    return plgpu.load(ref.at[cols], mask=inside, other=other)

  # A tile's share of a running sum: per lane (added across lanes after the
  # loop), or reduced across the tile now. Every running sum is rescaled
  # and rebased by row scalars, so either way it is the same sum.
  part = (lambda v: v) if lane_sums else jnp.sum

  def body(i, carry):
    run_max, rest, ties, picked, mass, count, weight_sum, valid_mean = carry
    cols = i * block + jnp.arange(block)
    inside = cols < width if ragged else None
    x = load(x_ref, cols, inside, -jnp.inf).astype(jnp.float32)
    if masked:
      keep = load(m_ref, cols, inside, 0)
      x = jnp.where(keep != 0, x, -jnp.inf)
    run_max, old, new, scale, shifted, rest, ties = online_step(
        run_max, rest, ties, x, part)
    weights = None
    if weighted:
      weights = load(w_ref, cols, inside, 0.0).astype(jnp.float32)
    if kind == "soft":
      u = load(t_ref, cols, inside, 0.0).astype(jnp.float32)
      if masked:
        u = jnp.where(keep != 0, u, 0.0)
      if weighted:
        u = u * weights
      # sum u (z - shift), rebased when the shift moves; 0 log 0 = 0.
      picked = picked + mass * (old - new) + part(
          jnp.where(u != 0, u * shifted, 0.0))
      # The mass of the possible classes only, as the XLA path counts it.
      mass = mass + part(jnp.where(x == -jnp.inf, 0.0, u))
    if smoothing:
      valid = x > -jnp.inf
      w_valid = valid.astype(jnp.float32) if weights is None else jnp.where(
          valid, weights, 0.0)
      valid_mean = valid_mean + weight_sum * (old - new) / num_classes + (
          part(jnp.where(valid, w_valid * shifted / num_classes, 0.0)))
      count = count + part(valid.astype(jnp.float32))
      weight_sum = weight_sum + part(w_valid)
    return run_max, rest, ties, picked, mass, count, weight_sum, valid_mean

  zero = jnp.float32(0)
  # Running sums the options use start per lane; the others stay scalars.
  summed = jnp.zeros((block,), jnp.float32) if lane_sums else zero
  init = (jnp.float32(-jnp.inf), summed, summed,
          summed if kind == "soft" else zero,
          summed if kind == "soft" else zero,
          *((summed if smoothing else zero),) * 3)
  (run_max, rest, ties, picked, mass, count, weight_sum,
   valid_mean) = lax.fori_loop(0, pl.cdiv(width, block), body, init)
  if lane_sums:  # Across the lanes, once.
    rest, ties, picked, mass, count, weight_sum, valid_mean = (
        jnp.sum(v) for v in (rest, ties, picked, mass, count, weight_sum,
                             valid_mean))
  shift = shift_of(run_max)
  if kind == "integer":
    # The label's raw logit, one scalar load (masked: -inf). A label out of
    # range reads column 0, as the XLA path does; its row is NaN anyway.
    label = l_ref[...]
    at = jnp.where((label >= 0) & (label < width), label, 0)
    picked = x_ref[at].astype(jnp.float32)
    if masked:
      picked = jnp.where(m_ref[at] != 0, picked, -jnp.inf)
    picked = picked - shift
  # A NaN anywhere unmasked has made the sums NaN, as in the XLA path.
  values = [shift, rest + ties, rest + (ties - 1.0), picked]
  if kind == "soft":
    values.append(mass)
  if smoothing:
    values += [count, weight_sum, valid_mean]
  for ref, value in zip(out, values, strict=True):
    ref[...] = value


def row_stats(
    logits: jax.Array,
    mask: jax.Array | None,
    opts: CrossEntropyOptions,
    num_classes: int,
    config: KernelConfig,
    *,
    label_index: jax.Array | None = None,
    targets: jax.Array | None = None,
) -> _rows.RowStats:
  """`RowStats` of logits [..., C] with the Pallas kernel.

  Args:
    logits: Floating logits, classes last.
    mask: Boolean mask of the logits' shape, or None.
    opts: The parsed options.
    num_classes: C.
    config: The tile configuration.
    label_index: Integer labels (int32 class indices), or None.
    targets: Soft labels of the logits' shape, or None.

  Returns:
    The rows' `RowStats`, as `jxent._cross_entropy.rows.dense_row_stats` gives
    them.
  """
  batch = logits.shape[:-1]
  weighted = opts.class_weights is not None
  kind, inputs, axes = row_inputs(logits, mask, opts.class_weights,
                                  label_index, targets)
  n_out = 4 + (kind == "soft") + 3 * opts.smoothing
  kernel = functools.partial(
      _kernel, num_classes=num_classes, block=config.block, kind=kind,
      smoothing=opts.smoothing, weighted=weighted, masked=mask is not None,
      lane_sums=config.lane_sums)
  call = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct((), jnp.float32)] * n_out,
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret, name="jxent_row_stats")
  outs = list(jax.vmap(call, in_axes=tuple(axes))(*inputs))
  outs = [o.reshape(batch) for o in outs]
  shift, sumexp, excess, target_dot = outs[:4]
  rest = outs[4:]
  target_mass = rest.pop(0) if kind == "soft" else None
  valid_count = valid_weight = valid_mean = None
  if opts.smoothing:
    valid_count, valid_weight, valid_mean = rest
    if not weighted:
      valid_weight = None  # It is the count, as the XLA path leaves it.
  return _rows.RowStats(shift, sumexp, target_dot, target_mass, valid_count,
                        valid_weight, valid_mean, excess)

