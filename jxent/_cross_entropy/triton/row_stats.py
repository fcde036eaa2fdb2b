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

When the rows are too few to keep a GPU busy (`config.splits_for`), each
row is split: several programs walk its tiles, a share each, and XLA
combines their maxima and sums (`_combine_splits`) as the kernel combines
its tiles.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy.triton.config import KernelConfig, splits_for
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
            lane_sums, split_tiles=None):
  """One row, or one split of it: the refs are its logits, then the
  optional inputs, then (with `split_tiles`, the tiles a split walks) the
  split's index, then outs."""
  refs = list(refs)
  x_ref = refs.pop(0)
  l_ref = refs.pop(0) if kind == "integer" else None
  t_ref = refs.pop(0) if kind == "soft" else None
  m_ref = refs.pop(0) if masked else None
  w_ref = refs.pop(0) if weighted else None
  first = 0 if split_tiles is None else refs.pop(0)[...] * split_tiles
  out = refs
  width = x_ref.shape[0]
  tiles = pl.cdiv(width, block) if split_tiles is None else split_tiles
  # Static: whether the last tile runs past the row and loads need a mask
  # (a split's tiles may all lie past it).
  ragged = width % block != 0 or split_tiles is not None

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
    cols = (first + i) * block + jnp.arange(block)
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
   valid_mean) = lax.fori_loop(0, tiles, body, init)
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
    # A split's numbers are combined first (`_combine_splits`).
    picked = picked if split_tiles is not None else picked - shift
  # A NaN anywhere unmasked has made the sums NaN, as in the XLA path.
  if split_tiles is not None:
    values = [run_max, rest, ties, picked]
  else:
    values = [shift, rest + ties, rest + (ties - 1.0), picked]
  if kind == "soft":
    values.append(mass)
  if smoothing:
    values += [count, weight_sum, valid_mean]
  for ref, value in zip(out, values, strict=True):
    ref[...] = value


def _combine_splits(outs, kind, smoothing, num_classes):
  """The splits' numbers [rows, splits] to the rows' [rows], as one program
  per row gives them: `(shift, sumexp, excess, target_dot, ...)`.

  Each split's sums are rescaled (exp(local shift - row shift)) and its
  sums of w (z - shift) rebased (plus their weight times the shifts'
  difference), as the kernel does when its running max moves. A split
  with no mass (max -inf) has sums of 0 and adds nothing; its ties (the
  terms at its max, each 1) stay ties only where its max is the row's.
  """
  run_max, rest, ties, picked, *more = outs
  shift = shift_of(jnp.max(run_max, axis=-1))
  empty = run_max == -jnp.inf
  delta = jnp.where(empty, 0.0, shift_of(run_max) - shift[:, None])
  scale = jnp.where(empty, 0.0, jnp.exp(delta))
  at_max = ~empty & (delta == 0)
  rest = jnp.sum((rest + jnp.where(at_max, 0.0, ties)) * scale, axis=-1)
  ties = jnp.sum(jnp.where(at_max, ties, 0.0), axis=-1)
  combined = [shift, rest + ties, rest + (ties - 1.0)]
  if kind == "integer":
    combined.append(picked[:, 0] - shift)  # Every split read the label.
  else:
    mass = more.pop(0)
    combined += [jnp.sum(picked + mass * delta, axis=-1),
                 jnp.sum(mass, axis=-1)]
  if smoothing:
    count, weight_sum, valid_mean = more
    combined += [jnp.sum(count, axis=-1), jnp.sum(weight_sum, axis=-1),
                 jnp.sum(valid_mean + weight_sum * delta / num_classes,
                         axis=-1)]
  return combined


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
  tiles = pl.cdiv(logits.shape[-1], config.block)
  splits = config.splits
  if splits is None:
    splits = splits_for(math.prod(batch), tiles)
  # Each split walks as many tiles, and none walks only tiles past the row.
  split_tiles = pl.cdiv(tiles, min(splits, tiles))
  splits = pl.cdiv(tiles, split_tiles)
  kernel = functools.partial(
      _kernel, num_classes=num_classes, block=config.block, kind=kind,
      smoothing=opts.smoothing, weighted=weighted, masked=mask is not None,
      lane_sums=config.lane_sums,
      split_tiles=split_tiles if splits > 1 else None)
  call = pl.pallas_call(
      kernel,
      out_shape=[jax.ShapeDtypeStruct((), jnp.float32)] * n_out,
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret, name="jxent_row_stats")
  if splits > 1:
    # Programs (row, split): the row's inputs are shared by its splits.
    per_split = jax.vmap(call, in_axes=(None,) * len(inputs) + (0,))
    call = lambda *a: per_split(*a, jnp.arange(splits))  # noqa: E731
  outs = list(jax.vmap(call, in_axes=tuple(axes))(*inputs))
  if splits > 1:
    outs = _combine_splits(outs, kind, opts.smoothing, num_classes)
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

