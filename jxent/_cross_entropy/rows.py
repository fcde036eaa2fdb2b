r"""The row step every softmax cross-entropy shares.

A cross-entropy is computed in three steps, and every path (plain, linear,
sharded; XLA today, a GPU kernel later) shares the last two:

1. **Row statistics** (`RowStats`): one pass over each row of logits
   reduces it to a few float32 numbers: the shift (the row's max), the sum
   of shifted exponentials, the label's shifted logit (or, for soft labels,
   the target mass and its dot product with the shifted logits), and, with
   label smoothing, the count, weight and mean of the valid classes.
   `dense_row_stats` computes them with XLA from materialised logits; the
   linear losses compute them block by block; a kernel only has to produce
   the same numbers (`StatsKernel`; `row_statistics` runs it on its
   platform).
2. **The row step** (`row_step`): from the statistics alone come the loss,
   the row's weight in a "mean", and the per-row coefficients of the
   backward pass. Label legality, NaN propagation, smoothing, z-loss and
   class weights are decided here and nowhere else.
3. **The element-wise pass** (`logits_gradient`): the derivative of a row's
   loss with respect to its logits is

   .. math:: \partial \ell / \partial z_c = a\, q_c - b\, t_c - s\, w_c [c\ \mathrm{valid}]

   with per-row coefficients :math:`a, b, s` (`Coefficients`), the softmax
   :math:`q`, the target :math:`t` (one-hot or soft) and class weights
   :math:`w`. It reads the logits once and recomputes :math:`q` from the
   saved shift and log-sum-exp, so no float32 [rows, classes] array is kept
   between the passes.
"""

import functools
import math
from collections.abc import Callable, Hashable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks
from jxent._numerics import softmax_rows as _softmax_rows
from jxent._numerics.logsumexp import (
  apply_mask,
  exp_sum_terms,
  is_nonempty,
  log_sum,
  row_sums,
  sum_and_excess_of,
  takes_cpu_path,
)
from jxent._numerics.options import CrossEntropyOptions
from jxent._numerics.platforms import per_platform

AxisName = str | tuple[str, ...]

class RowStats(NamedTuple):
  """What one pass over a row of logits reduces it to (all float32, [rows]).

  Attributes:
    shift: The row's max, 0 where it is infinite (NaN stays NaN).
    sumexp: The sum over classes of exp(logit - shift).
    target_dot: Integer labels: the label's logit minus the shift. Soft
      labels: the sum of u_c (logit_c - shift), u = class weight * label.
    target_mass: Soft labels: the sum of u_c. None for integer labels.
    valid_count: With smoothing, K, the number of valid classes (not masked,
      logit above -inf); else None.
    valid_weight: With smoothing and class weights, the sum of w_c over the
      valid classes; else None (it is K).
    valid_mean: With smoothing, the sum over valid classes of
      w_c (logit_c - shift) / C, for C classes in all (divided by C so that
      logits near the float limits cannot overflow the sum); else None.
    excess: sumexp - 1. The Triton kernel, the vocabulary walks and the
      XLA path on accelerators sum it without rounding (the terms at the
      max counted apart), so that log(sumexp) = log1p(excess) keeps its
      digits near certainty; the XLA path on a CPU rounds it (1 + tiny is
      1, see `logsumexp.sum_and_excess_of`); None means sumexp - 1.
    target_cross: Soft labels, where a path sums it directly: the label
      part of the loss, sum_c u_c (log(sumexp) - (logit_c - shift)), which
      then replaces target_mass * log(sumexp) - target_dot; else None.
    nonempty: Whether the row has mass, where a path has its max (above
      -inf, or NaN); None means sumexp != 0, which is the same. From the
      max, XLA's CPU backend can fuse the sum of exponentials with the
      sums that follow it, as no later step reads that sum.
  """

  shift: jax.Array
  sumexp: jax.Array
  target_dot: jax.Array
  target_mass: jax.Array | None = None
  valid_count: jax.Array | None = None
  valid_weight: jax.Array | None = None
  valid_mean: jax.Array | None = None
  excess: jax.Array | None = None
  target_cross: jax.Array | None = None
  nonempty: jax.Array | None = None


class Coefficients(NamedTuple):
  """Per-row coefficients of the element-wise backward pass ([rows]).

  A row that does not count has coefficients 0; a row with an illegal label
  has NaN, so the backward pass needs no other bookkeeping.

  Attributes:
    prob: Multiplies the softmax q_c: the target mass, plus smoothing's
      weight, plus the z-loss term 2 z LSE.
    label: Multiplies the target: one-hot (times the label's class weight)
      for integer labels, 0 where the label's logit is -inf (its class is
      impossible, so it has no gradient); u_c = w_c * label_c for soft
      labels.
    smooth: Multiplies w_c on valid classes: alpha / K; None without
      smoothing.
  """

  prob: jax.Array
  label: jax.Array
  smooth: jax.Array | None


class RowResult(NamedTuple):
  """The outputs of the row step ([rows]).

  Attributes:
    loss: The row's loss; 0 for rows that do not count, NaN for illegal
      labels and for rows with a NaN.
    weight: The row's weight in a "mean": the label's class weight (1
      without class weights) for integer labels, 1 for soft labels; 0 for
      rows that do not count.
    log_sumexp: log(sumexp), 0 for an empty row.
    coefficients: The backward pass's `Coefficients`.
    d_smoothing: d loss / d label_smoothing.
    d_z_loss: d loss / d z_loss, LSE^2.
  """

  loss: jax.Array
  weight: jax.Array
  log_sumexp: jax.Array
  coefficients: Coefficients
  d_smoothing: jax.Array
  d_z_loss: jax.Array


def _class_weight_row(opts: CrossEntropyOptions, shape, dtype, offset=0):
  """Class weights of these columns, broadcast over rows, or None.

  `opts.class_weights` holds every class; inside `shard_map` this shard's
  columns start at `offset`.
  """
  weights = opts.class_weights
  if weights is None:
    return None
  if weights.shape[0] != shape[-1]:
    weights = lax.dynamic_slice_in_dim(weights, offset, shape[-1])
  return jnp.broadcast_to(weights.astype(dtype), shape)


def weighted_targets(targets: jax.Array, mask: jax.Array | None,
                     opts: CrossEntropyOptions, dtype,
                     offset: jax.Array | int = 0) -> jax.Array:
  """u_c = w_c * label_c, with labels on masked classes ignored."""
  u = targets.astype(dtype)
  if mask is not None:
    u = jnp.where(mask, u, 0)
  weights = _class_weight_row(opts, u.shape, dtype, offset)
  return u if weights is None else u * weights


def dense_row_stats(
    logits: jax.Array,
    mask: jax.Array | None,
    opts: CrossEntropyOptions,
    num_classes: int,
    *,
    label_index: jax.Array | None = None,
    targets: jax.Array | None = None,
    axis_name: AxisName | None = None,
    offset: jax.Array | int = 0,
    keep_exp: bool = False,
    loss_only: bool = False,
) -> tuple[RowStats, jax.Array | None]:
  """Row statistics of materialised logits [..., C], with XLA.

  Args:
    logits: Floating logits, classes last. Inside `shard_map` with
      `axis_name`, this device's columns [offset, offset + C_local).
    mask: Boolean mask of the logits' shape, or None.
    opts: The parsed options.
    num_classes: C, the number of classes in all (over every shard).
    label_index: Integer labels: int32 class indices (global), or None.
    targets: Soft labels of the logits' shape, or None.
    axis_name: The mesh axis the classes are split over, or None.
    offset: This shard's first class.
    keep_exp: Return exp(logits - shift) too (see `keeps_exp`), and take
      the sums one by one from it; else take every sum in one pass that
      keeps nothing.
    loss_only: The stats feed a loss that is not differentiated: on a CPU,
      with soft labels, the loss is then summed after the log-sum-exp
      (`target_cross`), first the plain way where nothing is masked, which
      a CPU runs faster.

  Returns:
    `(stats, exps)`: a `RowStats`, the same on every shard of `axis_name`,
    and exp(logits - shift) in float32 (or wider) if `keep_exp`, else None.
  """
  x, shifted, shift, row_max = _softmax_rows.shifted_and_max(
      logits, mask, axis_name)
  # A row has mass unless its max is -inf (a NaN max is not).
  nonempty = row_max != -jnp.inf
  dtype = shift.dtype
  e = jnp.exp(shifted)
  # The sum of exponentials, or on accelerators its split parts.
  terms = list(exp_sum_terms(e, shifted))
  n_exp = len(terms)
  # On a CPU, where nothing is masked, the soft-label sums are first taken
  # the plain way, as optax's are, and the careful way only for a batch
  # where they are not finite (`_unless_flagged`). Without a gradient the
  # loss's own sum comes after the log-sum-exp (`_soft_label_part`). With
  # one, 16-bit logits keep their one variadic pass: separate plain sums
  # would each read a float32 copy that XLA writes for them (`row_sums`).
  plain_first, cross_after = _soft_label_paths(
      targets is not None, mask is None and axis_name is None, keep_exp,
      loss_only)
  target_cross = target_mass = None
  if targets is not None:
    u = weighted_targets(targets, mask, opts, dtype, offset)
    mass_term, dot_term = _mass_and_dot_terms(shifted, u)
    if cross_after:
      # A sum of its own, which XLA drops, as the loss does not use it.
      target_mass = _softmax_rows.sums(axis_name, True, mass_term)[0]
    elif not plain_first:
      terms += [mass_term, dot_term]
  if opts.smoothing:
    valid = shifted > -jnp.inf
    weights = _class_weight_row(opts, shifted.shape, dtype, offset)
    w_valid = valid.astype(dtype) if weights is None else jnp.where(
        valid, weights, 0)
    terms.append(valid.astype(dtype))
    if weights is not None:
      terms.append(w_valid)
    # Divided by C before the sum, so logits near the float limits cannot
    # overflow it; the double where keeps -inf out of the product.
    terms.append(w_valid * jnp.where(valid, shifted / num_classes, 0))
  if keep_exp:
    # XLA materialises exp (the one kept buffer) and sums it on its own;
    # the label mass is a sum of an input. The rest, which would each need
    # a float32 array of their own, go in one pass that keeps nothing.
    one_by_one = n_exp + (targets is not None and not plain_first
                          and not cross_after)
    sums = [*_softmax_rows.sums(axis_name, True, *terms[:one_by_one])]
    if terms[one_by_one:]:
      sums += _softmax_rows.sums(axis_name, False, *terms[one_by_one:])
  else:
    # One pass for every sum, keeping nothing (see `row_sums`).
    sums = list(_softmax_rows.sums(axis_name, False, *terms))
  sumexp, excess = sum_and_excess_of(tuple(sums[:n_exp]))
  del sums[:n_exp]
  target_dot = None
  class_weights = () if opts.class_weights is None else (opts.class_weights,)
  if cross_after and plain_first:
    # Its own max, log-sum-exp and sum, which nothing else reads: XLA
    # fuses them into one pass over the logits, as optax's.
    top = jnp.max(logits, axis=-1, keepdims=True, initial=-jnp.inf)
    plain_shifted = logits.astype(dtype) - top.astype(dtype)
    plain_lse = jnp.log(jnp.sum(jnp.exp(plain_shifted), axis=-1,
                                keepdims=True))
    cross = jnp.sum(u * (plain_lse - plain_shifted), axis=-1)
    # Without a NaN every row has mass (an empty row's plain sum is NaN),
    # unless there are no classes at all.
    target_cross, nonempty = _unless_flagged_once(_careful_cross)(
        jnp.isnan(cross), (cross, jnp.full(cross.shape, logits.shape[-1] > 0)),
        logits, targets, *class_weights)
  elif cross_after:
    target_cross = _soft_label_part(shifted, u, sumexp, nonempty, axis_name)
  elif plain_first:
    # From the max itself, not the shift (0 where the max is infinite):
    # XLA fuses that subtraction into the sum, and an infinite max makes
    # the sum NaN, which is flagged.
    mass = jnp.sum(u, axis=-1)
    dot = jnp.sum(u * (x.astype(dtype) - row_max[..., None]), axis=-1)
    target_mass, target_dot = _unless_flagged(
        _careful_mass_and_dot, ~jnp.isfinite(dot), (mass, dot), logits,
        targets, *class_weights)
  elif targets is not None:
    target_mass, target_dot = sums.pop(0), sums.pop(0)
  if target_cross is not None:
    assert target_mass is not None
    target_dot = target_mass * log_sum(sumexp, excess) - target_cross
  valid_count = valid_weight = valid_mean = None
  if opts.smoothing:
    valid_count = sums.pop(0)
    if opts.class_weights is not None:
      valid_weight = sums.pop(0)
    valid_mean = sums.pop(0)
  if label_index is not None:
    target_dot = _label_logit(x, label_index, offset, axis_name) - shift
  assert target_dot is not None, "give integer labels or soft targets"
  stats = RowStats(shift, sumexp, target_dot, target_mass, valid_count,
                   valid_weight, valid_mean, excess, target_cross, nonempty)
  return stats, e if keep_exp else None


def _mass_and_dot_terms(shifted, u):
  """The per-class terms of the target mass and dot product, exactly.

  0 log 0 = 0: a class without label mass adds nothing, even at -inf.
  The mass counts the possible classes only: label mass on a -inf logit
  makes the loss inf through the dot product, and its gradient is 0 (see
  `targets_gradient`), so the mass must not depend on it either.
  """
  return jnp.where(shifted == -jnp.inf, 0, u), u * jnp.where(u != 0,
                                                              shifted, 0)


def _soft_label_paths(soft: bool, unmasked: bool, keep_exp: bool,
                      loss_only: bool) -> tuple[bool, bool]:
  """Whether `dense_row_stats` takes the soft-label sums the plain way
  first, and whether it sums the loss after the log-sum-exp
  (`target_cross`), which a kernel's branch then gives too."""
  plain_first = (soft and unmasked and takes_cpu_path()
                 and (keep_exp or loss_only))
  return plain_first, soft and loss_only and (keep_exp or plain_first)


def _unless_flagged(careful, flags, plain, logits, targets, *class_weights):
  """The tuple `plain` of per-row results, unless a row is flagged.

  If any row of the batch is flagged, ``careful(logits, targets,
  *class_weights)`` computes the tuple again for the whole batch, from the
  inputs alone, so that XLA writes no array of its own for the
  conditional. On a CPU the plain sums, without a select, run in XLA's
  fast row reductions; the careful ones, with the selects that keep every
  edge exact (0 log 0 = 0 at a -inf logit, empty rows, infinite logits),
  several times slower. Under `vmap` the condition is batched, and the
  conditional becomes a select that computes both; `_unless_flagged_once`
  avoids that where nothing differentiates it.
  """
  return lax.cond(jnp.any(flags),
                  lambda plain, *inputs: careful(*inputs),
                  lambda plain, *inputs: plain,
                  plain, logits, targets, *class_weights)


@functools.cache
def _unless_flagged_once(careful):
  """`_unless_flagged` whose batched calls under `vmap` are one call over
  the stacked batch (`_stacked`), so that the condition stays one for all.

  For a pass that is not differentiated only: a `custom_vmap` is not made
  for JAX's derivatives (under `jacfwd`, the stacking would copy the
  inputs once per tangent).
  """
  guarded = jax.custom_batching.custom_vmap(
      functools.partial(_unless_flagged, careful))
  guarded.def_vmap(functools.partial(_stacked, guarded))
  return guarded


def _stacked(function, axis_size, in_batched, flags, plain, logits, targets,
             *class_weights):
  """The vmap rule of `_unless_flagged_once`: one call over the stacked
  batch.

  Every argument is per-row, but the class weights, which broadcast over
  the rows: batched, they become [batch, 1, ..., classes].
  """
  flags_batched, plain_batched, *rest = in_batched

  def stack(x, batched):
    return x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))

  rows = logits.ndim + (not rest[0])
  weights = [w.reshape(w.shape[:1] + (1,) * (rows - 2) + w.shape[1:])
             if batched else w for w, batched in zip(class_weights, rest[2:],
                                                     strict=True)]
  plain = tuple(stack(x, b) for x, b in zip(plain, plain_batched,
                                             strict=True))
  out = function(stack(flags, flags_batched), plain, stack(logits, rest[0]),
                 stack(targets, rest[1]), *weights)
  return out, tuple(True for _ in out)


def _careful_inputs(logits, targets, class_weights):
  """The shifted logits, the shift, the row max and u, from the inputs."""
  _, shifted, shift, row_max = _softmax_rows.shifted_and_max(logits, None)
  u = targets.astype(shift.dtype)
  if class_weights:
    u = u * jnp.broadcast_to(class_weights[0].astype(shift.dtype), u.shape)
  return shifted, row_max, u


def _careful_cross(logits, targets, *class_weights):
  """`_soft_label_part` and `nonempty`, from the inputs alone."""
  shifted, row_max, u = _careful_inputs(logits, targets, class_weights)
  nonempty = row_max != -jnp.inf
  sumexp = jnp.sum(jnp.exp(shifted), axis=-1)
  return _soft_label_part(shifted, u, sumexp, nonempty, None), nonempty


def _careful_mass_and_dot(logits, targets, *class_weights):
  """The target mass and dot product of `RowStats`, from the inputs alone:
  the mass over the possible classes, 0 log 0 = 0 in the dot product."""
  shifted, _, u = _careful_inputs(logits, targets, class_weights)
  return row_sums((shifted.ndim - 1,), *_mass_and_dot_terms(shifted, u))


def _soft_label_part(shifted, u, sumexp, nonempty, axis_name):
  """sum_c u_c (log sumexp - shifted_c), a row's soft-label loss, [rows].

  One plain sum after the log-sum-exp, in add, multiply, min and max only:
  XLA's CPU backend runs a select or a clamp in a row sum several times
  slower. 0 log 0 = 0 without a select: the log-probability is capped at
  the float maximum, so 0 times it is 0. A class that the shift rules out
  (-inf) adds u times the float maximum squared: inf (or -inf) for any
  normal u != 0, and 0 for u = 0. NaN stays NaN.
  """
  top = jnp.finfo(shifted.dtype).max
  # A plain log, which XLA's CPU backend fuses into the sums that read the
  # logits; an empty row's -inf makes NaN here, replaced by 0 below.
  log_sumexp = jnp.log(sumexp)[..., None]
  neg_log_q = jnp.minimum(log_sumexp - shifted, top)
  ruled_out = jnp.maximum(-shifted - top, 0)  # inf for -inf, 0 otherwise
  # The float maximum there, 0 elsewhere; written so that XLA does not
  # make it a clamp, which its CPU backend does not vectorise.
  ruled_out = top - jnp.maximum(top - ruled_out, 0)
  # (u * top) * top, not u * (top * top), which would be 0 * inf for u = 0.
  terms = u * neg_log_q + (u * ruled_out) * ruled_out
  cross = _softmax_rows.sums(axis_name, True, terms)[0]
  return jnp.where(nonempty, cross, 0)


def _label_logit(x, label_index, offset, axis_name):
  """The logit of each row's label, in the compute dtype (a gather)."""
  if x.shape[-1] == 0:
    # No class to pick: every label is out of range, so the row is NaN.
    return jnp.zeros(label_index.shape, _checks.compute_dtype(x.dtype))
  local = label_index - offset
  owns = (local >= 0) & (local < x.shape[-1])
  local = jnp.where(owns, local, 0)
  # The barrier keeps XLA from moving the float32 conversion in front of
  # the gather, where the CPU backend would materialise a float32 copy of
  # all the logits to serve both the gather and the sum of exponentials.
  # The index is in range (made so above): no bounds checks, which XLA
  # would fuse into the gradient pass and redo for every class.
  picked = jnp.take_along_axis(
      lax.optimization_barrier(x), local[..., None], axis=-1,
      mode="promise_in_bounds")[..., 0]
  picked = picked.astype(_checks.compute_dtype(x.dtype))
  if axis_name is None:
    return picked
  # Only the owner of the label's column contributes; the others add 0.
  return lax.psum(jnp.where(owns, picked, 0), axis_name)


class StatsKernel(NamedTuple):
  """A kernel that computes `RowStats` on one platform (hashable, static).

  Attributes:
    platform: Where it runs, as `lax.platform_dependent` names platforms
      ("cuda", "rocm", "tpu", "cpu").
    compute: ``compute(logits, mask, opts, num_classes, config, *,
      label_index, targets) -> RowStats``, giving what `dense_row_stats`
      gives.
    config: Its static configuration (tile sizes).
    gradient: The backward kernel beside it, or None:
      ``gradient(g, *residuals, config=gradient_config)`` gives ``g[...,
      None]`` times the XLA gradient that its caller computes from the
      same residuals, in the logits' dtype (see
      `jxent._numerics.kernel_tangent`); for the cross-entropy the
      residuals are those of `logits_gradient`.
    gradient_config: The backward kernel's static configuration.
  """

  platform: str
  compute: Callable[..., RowStats]
  config: Hashable
  gradient: Callable[..., jax.Array] | None = None
  gradient_config: Hashable = None


def backward_kernels(kernels: tuple[StatsKernel, ...]
                     ) -> dict[str, Callable[..., jax.Array]]:
  """{platform: backward kernel} of `kernels` that have one, configured,
  for `jxent._numerics.kernel_tangent.row_tangent`."""
  return {k.platform: functools.partial(k.gradient, config=k.gradient_config)
          for k in kernels if k.gradient is not None}


def row_statistics(
    logits: jax.Array,
    mask: jax.Array | None,
    opts: CrossEntropyOptions,
    num_classes: int,
    kernels: tuple[StatsKernel, ...] = (),
    *,
    label_index: jax.Array | None = None,
    targets: jax.Array | None = None,
    axis_name: AxisName | None = None,
    offset: jax.Array | int = 0,
    keep_exp: bool = False,
    loss_only: bool = False,
) -> tuple[RowStats, jax.Array | None]:
  """Row statistics of materialised logits, on each platform's kernel.

  `dense_row_stats` (XLA) everywhere, except on the platforms of `kernels`,
  whose kernel gives the same numbers. The choice is made per platform
  when the function is lowered (`platforms.per_platform`), so one traced
  function runs XLA on a CPU and the kernel on a GPU, and `jax.export` for
  several platforms carries both. Their derivatives (which second-order
  differentiation of a loss takes) are XLA's everywhere. The arguments are
  as for `dense_row_stats`; `kernels` never run inside `shard_map`, nor
  on a batch of no rows (a kernel grid of no programs).
  """
  if not kernels or not math.prod(logits.shape[:-1]):
    return dense_row_stats(
        logits, mask, opts, num_classes, label_index=label_index,
        targets=targets, axis_name=axis_name, offset=offset,
        keep_exp=keep_exp, loss_only=loss_only)
  assert axis_name is None, "the kernels do not run inside shard_map"
  return _on_platforms(num_classes, kernels, (keep_exp, loss_only), logits,
                       mask, opts,
                       label_index, targets)


def _xla_stats(num_classes, keep_exp, loss_only=False):
  def xla(logits, mask, opts, label_index, targets):
    return dense_row_stats(logits, mask, opts, num_classes,
                           label_index=label_index, targets=targets,
                           keep_exp=keep_exp, loss_only=loss_only)
  return xla


def _kernel_stats(num_classes, keep_exp, kernel: StatsKernel,
                  loss_only=False):
  def run(logits, mask, opts, label_index, targets):
    stats = kernel.compute(logits, mask, opts, num_classes, kernel.config,
                           label_index=label_index, targets=targets)
    if _soft_label_paths(targets is not None, mask is None, keep_exp,
                         loss_only)[1]:
      # XLA's branch gives the soft-label loss itself (`target_cross`);
      # this is the same number, from the kernel's sums.
      stats = stats._replace(target_cross=_label_part(
          stats, stats.target_mass, log_sum(stats.sumexp, stats.excess)))
    # The same structure as XLA's branch, which knows it from the max.
    stats = stats._replace(nonempty=is_nonempty(stats.sumexp))
    exps = None
    if keep_exp:
      # Traced for a CPU (see `keeps_exp`), and lowered for this platform
      # too by `jax.export`: the same outputs as XLA's branch.
      x = apply_mask(logits, mask)
      exps = jnp.exp(x.astype(_checks.compute_dtype(x.dtype))
                     - stats.shift[..., None])
    return stats, exps
  return run


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _on_platforms(num_classes, kernels, modes, logits, mask, opts,
                  label_index, targets):
  keep_exp, loss_only = modes
  return per_platform(
      logits, mask, opts, label_index, targets,
      default=_xla_stats(num_classes, keep_exp, loss_only),
      **{k.platform: _kernel_stats(num_classes, keep_exp, k, loss_only)
         for k in kernels})


@_on_platforms.defjvp
def _on_platforms_jvp(num_classes, kernels, modes, primals, tangents):
  # The kernels give the numbers; their derivative is the XLA reference's.
  _, tangent = jax.jvp(_xla_stats(num_classes, modes[0]), primals, tangents)
  return _on_platforms(num_classes, kernels, modes, *primals), tangent


def _label_part(stats: RowStats, mass, s, dot=None):
  """The label's part of a row's loss: M s - D, or `target_cross`."""
  if stats.target_cross is not None:
    return stats.target_cross
  # -log q_y = s - (z_y - m): both sides exact after the shift.
  return mass * s - (stats.target_dot if dot is None else dot)


def row_step(
    stats: RowStats,
    opts: CrossEntropyOptions,
    num_classes: int,
    labels: _checks.Labels | None = None,
) -> RowResult:
  r"""From row statistics to the loss, its weight and backward coefficients.

  .. math::
     \ell = (1 - \alpha) (M\, s - D)
       + \frac{\alpha}{K} \Big(W s - \sum_{c\ \mathrm{valid}} w_c \bar z_c\Big)
       + \lambda_z (s + m)^2

  with :math:`\bar z = z - m` the shifted logits, :math:`s` the log of the
  shifted sum of exponentials, the target mass :math:`M` and dot product
  :math:`D` (:math:`w_y` and :math:`w_y \bar z_y` for an integer label),
  :math:`K` valid classes of total weight :math:`W`. Every term is exact
  after the shift: :math:`C` equal logits of 1e8 give :math:`\log C`.

  Args:
    stats: The `RowStats` of the rows.
    opts: The parsed options.
    num_classes: C, the number of classes in all.
    labels: The sorted integer labels, or None for soft labels.

  Returns:
    A `RowResult`.
  """
  dtype = stats.sumexp.dtype
  nonempty = (is_nonempty(stats.sumexp) if stats.nonempty is None
              else stats.nonempty)
  s = log_sum(stats.sumexp, stats.excess)
  alpha = opts.label_smoothing if opts.smoothing else 0.0
  if labels is not None:
    if opts.class_weights is None:
      mass = jnp.ones_like(s)
    else:
      mass = opts.class_weights.astype(dtype)[labels.class_index]
    dot = mass * stats.target_dot
    counts, legal = labels.counts & nonempty, labels.legal
  else:
    assert stats.target_mass is not None, "soft labels need the target mass"
    mass, dot = stats.target_mass, stats.target_dot
    counts, legal = nonempty, None
  label_part = _label_part(stats, mass, s, dot)
  loss = (1 - alpha) * label_part
  prob = (1 - alpha) * mass
  smooth = None
  d_smoothing = -label_part
  if opts.smoothing:
    assert stats.valid_count is not None and stats.valid_mean is not None
    count = jnp.maximum(stats.valid_count, 1)
    weight_sum = (stats.valid_count if stats.valid_weight is None
                  else stats.valid_weight)
    # Smoothing spreads alpha over the K valid classes of the row only.
    # W s / K - (C / K) valid_mean: scaled before it is summed, so logits
    # near the float limits cannot overflow.
    smooth_part = jnp.where(
        stats.valid_count > 0,
        weight_sum / count * s - (num_classes / count) * stats.valid_mean, 0)
    loss = loss + alpha * smooth_part
    prob = prob + alpha * weight_sum / count
    smooth = alpha / count
    d_smoothing = d_smoothing + smooth_part
  lse = s + stats.shift
  if opts.z:
    loss = loss + opts.z_loss * jnp.square(lse)
    prob = prob + 2 * opts.z_loss * lse
  # Rows that do not count weigh 0 and get coefficients 0; an illegal label
  # has no class to pick, so its row is NaN, never a wrapped-around class.
  # A row with a NaN counts (it is not empty), so a "mean" is NaN too.
  keep = counts.astype(dtype)
  loss = jnp.where(counts, loss, 0)
  if legal is not None:
    keep = jnp.where(legal, keep, jnp.nan)
    loss = loss * jnp.where(legal, 1, jnp.nan).astype(dtype)
  weight = jnp.where(counts, mass, 0) if labels is not None else keep
  label_coef = keep * (1 - alpha)
  if labels is not None:
    # An impossible label class gets no gradient (as every -inf class): 0
    # here, so the element-wise pass needs no -inf test at the label.
    # (A where, not a product: an illegal label's NaN coefficient is 0
    # there too.)
    label_coef = jnp.where(stats.target_dot == -jnp.inf, 0,
                           label_coef * mass)
  coefficients = Coefficients(
      keep * prob, label_coef, None if smooth is None else keep * smooth)
  return RowResult(loss, weight, s, coefficients, keep * d_smoothing,
                   keep * jnp.square(lse))


def logits_gradient(
    logits: jax.Array,
    mask: jax.Array | None,
    shift: jax.Array,
    log_sumexp: jax.Array,
    coefficients: Coefficients,
    opts: CrossEntropyOptions,
    *,
    label_index: jax.Array | None = None,
    targets: jax.Array | None = None,
    offset: jax.Array | int = 0,
    exps: jax.Array | None = None,
) -> jax.Array:
  """The element-wise pass: d loss / d logits from the per-row numbers.

  Args:
    logits: The logits [..., C] (this shard's columns inside `shard_map`).
    mask: Boolean mask of the logits' shape, or None.
    shift: The rows' shift ([...]).
    log_sumexp: The rows' log of the shifted sum of exponentials ([...]).
    coefficients: The rows' `Coefficients`.
    opts: The parsed options.
    label_index: Integer labels (global int32 indices), or None.
    targets: Soft labels, or None.
    offset: This shard's first class.
    exps: exp(logits - shift) kept by the forward pass, or None to
      recompute it.

  Returns:
    The derivative, in the compute dtype, of the logits' shape. Masked
    classes get exactly 0.
  """
  shifted, probs = _softmax_rows.recompute(logits, mask, shift, log_sumexp,
                                           exps)
  dtype = shift.dtype
  # With the kept exp, integer labels and no smoothing, the pass reads exp
  # (and the mask) alone, not the logits too: exp is 0 on an impossible
  # class (-inf or masked), and on one whose probability underflows, where
  # the softmax term is 0 anyway; the double where keeps that term 0 even
  # for a NaN or infinite coefficient. The label's own class has a
  # coefficient of 0 when it is impossible (`row_step`). A NaN logit makes
  # exp NaN on the whole row; the mask still zeroes masked classes.
  exp_only = (exps is not None and label_index is not None
              and coefficients.smooth is None)
  if exp_only:
    live = exps != 0
    grad = jnp.where(live, coefficients.prob[..., None] * jnp.where(
        live, probs, 0), 0)
  else:
    grad = coefficients.prob[..., None] * probs
  if label_index is not None:
    classes = offset + lax.broadcasted_iota(jnp.int32, probs.shape,
                                            probs.ndim - 1)
    # A compare and select per class, not a scatter: a scatter into a
    # gradient whose class axis is sharded makes XLA's SPMD partitioner
    # all-gather it.
    grad = grad - jnp.where(classes == label_index[..., None],
                            coefficients.label[..., None], 0)
  else:
    assert targets is not None, "give integer labels or soft targets"
    grad = grad - coefficients.label[..., None] * weighted_targets(
        targets, mask, opts, dtype, offset)
  if coefficients.smooth is not None:
    weights = _class_weight_row(opts, shifted.shape, dtype, offset)
    per_class = coefficients.smooth[..., None]
    if weights is not None:
      per_class = per_class * weights
    grad = grad - jnp.where(shifted > -jnp.inf, per_class, 0)
  if not exp_only:
    # A class whose logit is -inf is impossible: its gradient is 0, as for
    # a masked class, whatever its label mass (the label gradient is 0
    # there too, so mixed second derivatives agree). NaN is not -inf: it
    # stays.
    grad = jnp.where(shifted == -jnp.inf, 0, grad)
  if mask is not None:
    # A masked class does not enter the loss; its NaN cannot leak either.
    grad = jnp.where(mask, grad, 0)
  return grad


def targets_gradient(
    logits: jax.Array,
    mask: jax.Array | None,
    shift: jax.Array,
    log_sumexp: jax.Array,
    coefficients: Coefficients,
    opts: CrossEntropyOptions,
    offset: jax.Array | int = 0,
) -> jax.Array:
  r"""d loss / d soft labels: :math:`(1 - \alpha) w_c (s - \bar z_c)`.

  It is 0 on masked classes and on classes whose logit is -inf. There the
  loss is 0 at label 0 and infinite above it; 0 keeps forward- and
  reverse-mode finite for the labels that occur (0 on impossible classes),
  as in the sharded loss.
  """
  shifted, _ = _softmax_rows.recompute(logits, mask, shift, log_sumexp)
  dtype = shift.dtype
  valid = shifted > -jnp.inf
  neg_log_q = jnp.where(valid, log_sumexp[..., None] - shifted, 0)
  grad = coefficients.label[..., None] * neg_log_q
  weights = _class_weight_row(opts, shifted.shape, dtype, offset)
  if weights is not None:
    grad = grad * weights
  return jnp.where(valid, grad, 0)


def options_cotangent(opts: CrossEntropyOptions, g: jax.Array,
                      d_smoothing: jax.Array, d_z_loss: jax.Array,
                      sum_over_copies=None) -> CrossEntropyOptions:
  """Cotangents of the options' traced coefficients, for a custom VJP.

  Args:
    opts: The options the forward pass ran with.
    g: The rows' cotangent.
    d_smoothing: d loss / d label_smoothing, per row.
    d_z_loss: d loss / d z_loss, per row.
    sum_over_copies: Inside `shard_map`, ``f(cotangent, primal)`` summing a
      cotangent over the mesh axes its primal is replicated over.

  Returns:
    A `CrossEntropyOptions` of cotangents (0 for a coefficient that is off).
  """
  def total(primal, per_row, on):
    value = jnp.sum(g * per_row) if on else jnp.zeros(())
    if sum_over_copies is not None:
      value = sum_over_copies(value, primal)
    return value.astype(jnp.result_type(primal))
  return CrossEntropyOptions(
      label_smoothing=total(opts.label_smoothing, d_smoothing,
                            opts.smoothing),
      z_loss=total(opts.z_loss, d_z_loss, opts.z),
      class_weights=None, ignore_index=opts.ignore_index,
      reduction=opts.reduction, smoothing=opts.smoothing, z=opts.z)


def reduce(
    loss: jax.Array,
    weight: jax.Array,
    reduction: _checks.Reduction,
    batch_axis_name: AxisName | None = None,
) -> jax.Array:
  """Applies `reduction`; "mean" divides by the total weight that counts.

  Args:
    loss: Per-row losses.
    weight: Per-row weights in the "mean".
    reduction: "none", "sum" or "mean".
    batch_axis_name: Inside `shard_map`, the mesh axis the rows are split
      over: "sum" and "mean" are then over the global batch.

  Returns:
    `loss` for "none", else a scalar. An all-ignored batch has no weight:
    its "mean" is 0 (with a 0 gradient), not 0/0.
  """
  if reduction == "none":
    return loss
  total = jnp.sum(loss)
  if batch_axis_name is not None:
    total = lax.psum(total, batch_axis_name)
  if reduction == "sum":
    return total
  count = jnp.sum(weight)
  if batch_axis_name is not None:
    count = lax.psum(count, batch_axis_name)
  return total / jnp.where(count > 0, count, 1)
