"""The vocabulary walk behind every linear (vocabulary-scale) loss.

For an output layer `logits = cap(x @ w + bias) / temperature` of shape
[tokens, vocabulary], the linear losses never hold the logits: they walk
the vocabulary in blocks of columns, making each block's logits, folding
them into a few per-token numbers (an online log-sum-exp and what else the
loss needs), and dropping them. The backward pass walks again, remakes
each block, turns it into the block's gradient and pushes that through the
two matmuls that give `dx` (accumulated) and the block's slice of `dw`.

This module holds what every such loss shares: the static `Config`, the
block's logits (`block_logits`), the walk (`walk_blocks`), the online
log-sum-exp step (`online_lse`, and `online_split_lse` for the heads that
need the sum's excess over 1), the combination of per-shard numbers over
a mesh axis (`combine_lse`), the chain rule back to the raw matmul output
(`raw_gradient`), the matmuls of the backward pass (`accumulate`), and the
validation of a head (`prepare_head`).
"""

import math
import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jxent._numerics import checks as _checks
from jxent._numerics.logsumexp import shift_of, split_exp
from jxent._numerics.softmax_rows import times_finite

AxisName = str | tuple[str, ...]

# Bytes of one float32 [tokens, block] buffer that the automatic block size
# aims for, and its bounds; a few such buffers are alive at once. A GPU wants
# few, large matmuls: on an H100 at 8192 x 2304 x 256000 bfloat16, blocks of
# 128 columns took 3.4 times as long as the materialised logits, and 4096
# columns (a 128 MiB buffer) 0.76 times, in 1/57 of the memory
# (bench/results/nvidia-h100-2026-11-27-blocks). A CPU wants small ones.
_BLOCK_BYTES = {"gpu": 128 * 2**20}
_DEFAULT_BLOCK_BYTES = 4 * 2**20
_MIN_BLOCK = 128
_MAX_BLOCK = {"gpu": 16384}
_DEFAULT_MAX_BLOCK = 8192


def default_block_size(tokens: int, vocab: int,
                       platform: str | None = None) -> int:
  """Picks the vocabulary block size from the shapes and the platform.

  A power of two with one float32 [tokens, block] buffer near 128 MiB on a
  GPU (4 MiB elsewhere), clamped to [128, 16384] on a GPU ([128, 8192]
  elsewhere) and never more than the vocabulary (at least 1). `platform`
  defaults to `jax.default_backend()`.
  """
  platform = jax.default_backend() if platform is None else platform
  budget = _BLOCK_BYTES.get(platform, _DEFAULT_BLOCK_BYTES)
  largest = _MAX_BLOCK.get(platform, _DEFAULT_MAX_BLOCK)
  block = budget // (4 * max(tokens, 1))
  block = 2 ** max(0, int(math.log2(max(block, 1))))
  return int(max(min(max(block, _MIN_BLOCK), largest, vocab), 1))


class Config(NamedTuple):
  """Static settings of a vocabulary walk (hashable).

  Attributes:
    block: Columns per block.
    cap: The logit soft cap, or None.
    acc: The accumulation dtype.
    num_classes: The true vocabulary size V. Columns at or past it (padding
      of a sharded W) are masked out.
    axis_name: The mesh axis W's columns are split over, or None.
    temperature: Divides the logits, after the soft cap.
    made: Whether each head's x already holds its raw logits
      `x @ w + bias` (the fast mode's chunks make them once, for every walk
      of the head's forward and for its gradient); w then only gives V.
  """

  block: int
  cap: float | None
  acc: jnp.dtype
  num_classes: int
  axis_name: AxisName | None = None
  temperature: float = 1.0
  made: bool = False


def num_blocks(local_vocab: int, block: int) -> int:
  return -(-local_vocab // block)


def walk_blocks(body, init, local_vocab, block, sharded):
  """`fori_loop` over the vocabulary blocks; no blocks (V = 0) give `init`.

  Inside `shard_map` the first block is peeled off: it gives the loop a
  carry typed by the first block's results, which vary over the mesh axes
  (vocabulary, and batch when x is split) that zeros made outside cannot
  know. Elsewhere the loop runs whole, which lets XLA update the carried
  `dw` in place. One block runs without a loop, so that walks over the
  same whole-vocabulary block (the fast mode's chunks) share its matmul.
  """
  blocks = num_blocks(local_vocab, block)
  if not blocks:
    return init
  if blocks == 1:
    return body(0, init)
  if not sharded:
    return lax.fori_loop(0, blocks, body, init)
  return lax.fori_loop(1, blocks, body, body(0, init))


def offset_of(cfg: Config, local_vocab: int):
  """This shard's first column inside `shard_map`; 0 without a mesh axis."""
  if cfg.axis_name is None:
    return 0
  return lax.axis_index(cfg.axis_name) * local_vocab


def block_logits(x, w, bias, i, cfg: Config, offset):
  """Logits of local block `i` in `cfg.acc`, and which columns count.

  Returns:
    `(logits, columns, live, start)`: the [tokens, block] logits (capped,
    divided by the temperature), their global column indices [1, block],
    whether each column takes part [1, block], and the block's first local
    column.
  """
  local_vocab = w.shape[1]
  # The last block is shifted left to fit; its columns that earlier blocks
  # already covered are stale and take no part.
  start = jnp.minimum(i * cfg.block, local_vocab - cfg.block)
  if cfg.made:
    raw = lax.dynamic_slice_in_dim(x, start, cfg.block, axis=1)
  else:
    w_block = lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
    raw = jnp.dot(x, w_block, preferred_element_type=cfg.acc)
  if bias is not None:
    raw = raw + lax.dynamic_slice_in_dim(bias, start, cfg.block).astype(
        cfg.acc)[None, :]
  logits = raw
  if cfg.cap is not None:
    # c tanh(-inf / c) would be -c: a -inf (a padded column's bias) stays
    # -inf, so the cap never gives it probability or smoothing mass.
    logits = jnp.where(raw == -jnp.inf, -jnp.inf,
                       cfg.cap * jnp.tanh(raw / cfg.cap))
  if cfg.temperature != 1.0:
    logits = logits / cfg.temperature
  local = start + lax.broadcasted_iota(jnp.int32, (1, cfg.block), 1)
  columns = offset + local
  live = (local >= i * cfg.block) & (columns < cfg.num_classes)
  return logits, columns, live, start


def online_lse(row_max, sumexp, logits):
  """One block into a running log-sum-exp.

  Args:
    row_max: The running max [tokens] (-inf before any mass).
    sumexp: The running sum of exp(logit - shift_of(row_max)).
    logits: The block's logits [tokens, block], dead columns at -inf.

  Returns:
    `(new_max, sumexp, old_shift, new_shift)`. The running sum is rescaled
    to the new max before the block is added, so no exp ever sees a
    positive argument; while a row has seen only -inf its shift is a safe
    0, so -inf - -inf never makes a NaN. A NaN max stays NaN. Other running
    sums relative to the shift are rebased with `old_shift - new_shift`.
  """
  new_max = jnp.maximum(row_max, jnp.max(logits, axis=1))
  old, new = shift_of(row_max), shift_of(new_max)
  sumexp = sumexp * rescale(row_max, new) + jnp.sum(
      jnp.exp(logits - new[:, None]), axis=1)
  return new_max, sumexp, old, new


def online_split_lse(row_max, rest, ties, logits):
  """`online_lse` with the sum's terms at the running max counted apart.

  Args:
    row_max: The running max [tokens] (-inf before any mass).
    rest, ties: The running sum of exp(logit - shift_of(row_max)) in two
      parts: the terms at the shift (each exactly 1) in `ties`, the others
      in `rest` (`logsumexp.split_exp`), so that the sum's excess over 1
      keeps its digits near certainty (`logsumexp.sum_and_excess`).
    logits: The block's logits [tokens, block], dead columns at -inf.

  Returns:
    `(new_max, rest, ties, old_shift, new_shift)`. When the max moves, the
    old ties fall below it and join the rest.
  """
  new_max = jnp.maximum(row_max, jnp.max(logits, axis=1))
  old, new = shift_of(row_max), shift_of(new_max)
  moved = new != old
  scale = rescale(row_max, new)
  block_rest, block_ties = split_exp(logits - new[:, None])
  rest = (rest + jnp.where(moved, ties, 0)) * scale + jnp.sum(block_rest, 1)
  ties = jnp.where(moved, 0, ties) + jnp.sum(block_ties, 1)
  return new_max, rest, ties, old, new


def rescale(row_max, new_shift):
  """exp(row_max - new_shift): a running sum's factor when the shift moves.

  The factor is a constant of the walk, like the shift itself: a gradient
  through the running max would be counted on top of the one the shifted
  terms already carry, and second derivatives (which differentiate the
  forward walk) would be wrong whenever the vocabulary spans several
  blocks. An old max of -inf gives 0, never exp(-inf - -inf).
  """
  return jnp.exp(lax.stop_gradient(row_max) - new_shift)


def combine_split_lse(row_max, rest, ties, axis_name):
  """Per-shard `online_split_lse` sums to the whole vocabulary's.

  Returns `(row_max, rest, ties)` (see `combine_lse`'s `ties`).
  """
  row_max, (rest, ties), _, _ = combine_lse(row_max, rest, axis_name,
                                            ties=ties)
  return row_max, rest, ties


def combine_lse(row_max, sumexp, axis_name, rebased=(), summed=(),
                weighted=(), ties=None):
  """Per-shard running numbers to the whole vocabulary's, over `axis_name`.

  Args:
    row_max: This shard's max.
    sumexp: This shard's sum of exp(logit - shift_of(row_max)).
    axis_name: The mesh axis the vocabulary is split over.
    rebased: Pairs `(scale, value)`: sums of `weight * (logit - shift)`
      kept with their total weight `scale`, rebased to the global shift by
      adding `scale * (local shift - global shift)`.
    summed: Sums that need no rescaling (label logits, counts).
    weighted: Pairs `(sumexp, value)`: sums of `e * (logit - shift)` with
      e = exp(logit - shift), both rescaled and rebased:
      `(value + sumexp * delta) * exp(delta)`.
    ties: With `online_split_lse`'s sums, this shard's ties; `sumexp` is
      then its rest. A shard whose max is the global one keeps its ties; on
      the others they fall below the shift and join the rest.

  Returns:
    `(row_max, sumexp, rebased_values, summed_values, weighted_values)`
    over every shard (the last only when `weighted` is given); with `ties`,
    `sumexp` is the pair `(rest, ties)`.
  """
  local = shift_of(row_max)
  row_max = lax.pmax(lax.stop_gradient(row_max), axis_name)
  delta = local - shift_of(row_max)
  scale = jnp.exp(delta)
  if ties is None:
    sums = sumexp * scale
  else:
    at_max = delta == 0
    sums = ((sumexp + jnp.where(at_max, 0, ties)) * scale,
            jnp.where(at_max, ties, 0))
  sumexp, rebased, summed, weighted = lax.psum(
      (sums,
       tuple(value + weight * delta for weight, value in rebased),
       tuple(summed),
       # 0 where the scale is (a jump so large that total * delta would
       # overflow).
       tuple(value * scale + times_finite(total * scale, delta)
             for total, value in weighted)),
      axis_name)
  if weighted:
    return row_max, sumexp, rebased, summed, weighted
  return row_max, sumexp, rebased, summed


def raw_gradient(dlogits, logits, cfg: Config):
  """d loss / d (x @ w + bias), from d loss / d logits of the same block.

  Through the temperature (a factor 1 / T) and the soft cap:
  d/dr c tanh(r / c) = 1 - (capped / c)^2, with capped = T * logits.
  """
  if cfg.temperature != 1.0:
    dlogits = dlogits / cfg.temperature
  if cfg.cap is not None:
    capped = logits * cfg.temperature
    # A -inf column (kept -inf through the cap) has no gradient; the
    # double where keeps 0 * -inf out of it.
    live = capped > -jnp.inf
    dlogits = jnp.where(
        live, dlogits * (1 - jnp.square(jnp.where(live, capped, 0) / cfg.cap)),
        0)
  return dlogits


def accumulate(carry, x, w, draw, start, cfg: Config, fresh=False):
  """The block's share of `dx`, `dw` and `dbias` (each skipped if None).

  Args:
    carry: `(dx, dw, dbias)`, float32 `dx` [tokens, D], `dw` and `dbias`
      in their dtypes; None where that input is not perturbed.
    x, w: The head's inputs.
    draw: d loss / d raw logits of the block [tokens, block]; dead columns
      hold 0, so the shifted last block can add in place.
    start: The block's first local column.
    cfg: The walk's `Config`.
    fresh: Whether no other block covers these columns (true of every
      block when the block size divides the local vocabulary, so none is
      shifted): their `dw` and `dbias` are then written, not read and added
      to, which saves a read of W's size per backward walk.

  Returns:
    The updated `(dx, dw, dbias)`.
  """
  dx, dw, dbias = carry
  d16 = draw.astype(x.dtype)
  if dx is not None:
    w_block = lax.dynamic_slice_in_dim(w, start, cfg.block, axis=1)
    dx = dx + jnp.dot(d16, w_block.T, preferred_element_type=cfg.acc)
  if dw is not None:
    dw = _write_columns(dw, jnp.dot(x.T, d16, preferred_element_type=cfg.acc),
                        start, cfg, fresh, axis=1)
  if dbias is not None:
    dbias = _write_columns(dbias, jnp.sum(draw, 0), start, cfg, fresh,
                           axis=0)
  return dx, dw, dbias


def _write_columns(total, part, start, cfg: Config, fresh: bool, axis: int):
  """A block's slice of `dw` or `dbias`: written, or added to the old one."""
  if not fresh:
    part = lax.dynamic_slice_in_dim(total, start, cfg.block,
                                    axis=axis).astype(cfg.acc) + part
  return lax.dynamic_update_slice_in_dim(total, part.astype(total.dtype),
                                         start, axis=axis)


def zero_grads(x, w, bias, cfg: Config, perturbed):
  """The initial `(dx, dw, dbias)` of `accumulate`, None where unperturbed."""
  want_x, want_w, want_b = perturbed
  return (jnp.zeros(x.shape, cfg.acc) if want_x else None,
          jnp.zeros(w.shape, w.dtype) if want_w else None,
          jnp.zeros(bias.shape, bias.dtype)
          if bias is not None and want_b else None)


def vma(x) -> frozenset:
  """The mesh axes `x` varies over inside `shard_map` (empty outside).

  JAX records them on the abstract value: as `vma` in recent versions, as
  `mat.varying` in 0.10.
  """
  aval = jax.typeof(x)
  axes = getattr(aval, "vma", None)
  if axes is None:
    axes = getattr(getattr(aval, "mat", None), "varying", None)
  return frozenset(axes or ())


def sum_over_copies(cotangent, primal):
  """Sums a cotangent over the mesh axes its primal is replicated over.

  Inside `shard_map`, x is the same on every device of the vocabulary axis
  (and W on every device of a batch axis), while each device's cotangent
  covers only its own columns (or rows): the cotangent of a replicated
  value is the sum of the devices' parts.
  """
  extra = vma(cotangent) - vma(primal)
  return lax.psum(cotangent, tuple(sorted(extra))) if extra else cotangent


def finish_grads(grads, x, w, bias):
  """`accumulate`'s result as cotangents of x, w and bias (None if unused)."""
  dx, dw, dbias = grads
  return (None if dx is None else sum_over_copies(dx, x).astype(x.dtype),
          None if dw is None else sum_over_copies(dw, w),
          None if dbias is None else sum_over_copies(dbias, bias))


def check_block_size(block_size, local_vocab: int, tokens: int) -> int:
  """Validates `block_size` (or picks one); at most V, at least 1."""
  if block_size is None:
    return default_block_size(tokens, local_vocab)
  return max(min(positive_int("block_size", block_size), local_vocab), 1)


def positive_int(name: str, value) -> int:
  """Validates a size given as an int (a bool is refused): at least 1."""
  try:
    if isinstance(value, bool):
      raise TypeError  # A flag passed by mistake.
    number = operator.index(value)
  except TypeError:
    raise TypeError(
        f"`{name}` must be an int or None, got {value!r}.") from None
  if number < 1:
    raise ValueError(f"`{name}` must be >= 1, got {value!r}.")
  return number


class Head(NamedTuple):
  """A validated output layer: x flattened to [tokens, D], w, bias."""

  x: jax.Array
  w: jax.Array
  bias: jax.Array | None


def prepare_head(x, w, bias, *, x_name="x", w_name="w", bias_name="bias",
                 vocab: int | None = None) -> tuple[Head, tuple[int, ...]]:
  """Validates one head; returns it (x flattened, one dtype) and x's batch.

  Raises:
    TypeError, ValueError: On bad dtypes or shapes, naming them.
  """
  x, w = jnp.asarray(x), jnp.asarray(w)
  _checks.check_floating(x_name, x)
  _checks.check_floating(w_name, w)
  if x.ndim < 1 or w.ndim != 2 or x.shape[-1] != w.shape[0]:
    raise ValueError(
        f"`{x_name}` must have shape [..., D] and `{w_name}` shape [D, V],"
        f" got {x_name}.shape={x.shape} and {w_name}.shape={w.shape}."
    )
  if w.shape[1] == 0:
    # No class to predict: every label would be out of range.
    raise ValueError(
        f"`{w_name}` must have at least one column (a vocabulary of at"
        f" least 1), got {w_name}.shape={w.shape}.")
  if vocab is not None and w.shape[1] != vocab:
    raise ValueError(
        f"The vocabularies must match: `{w_name}` has {w.shape[1]} columns,"
        f" the other head {vocab}.")
  if bias is not None:
    bias = _checks.per_class(bias_name, bias, w.shape[1])
  # Both matmul operands in one dtype (the wider) when they differ.
  acc = _checks.compute_dtype(x.dtype, w.dtype)
  if x.dtype != w.dtype:
    x, w = x.astype(acc), w.astype(acc)
  batch = x.shape[:-1]
  return Head(x.reshape(math.prod(batch), x.shape[-1]), w, bias), batch


def token_labels(labels, batch, name="labels") -> jax.Array:
  """Integer labels, one per token: shape `x.shape[:-1]`, checked."""
  labels = _checks.as_labels(name, labels)
  if labels.shape != batch:
    raise ValueError(
        f"`{name}` must have shape x.shape[:-1]={batch}, got"
        f" {name}.shape={labels.shape}.")
  return labels


def whole_vocab(local_vocab: int, axis_name, vocab_size) -> int:
  """The whole vocabulary V (over every shard), checked against padding."""
  if axis_name is None:
    return local_vocab if vocab_size is None else int(vocab_size)
  devices = lax.axis_size(axis_name)
  padded = local_vocab * devices
  num_classes = padded if vocab_size is None else int(vocab_size)
  if not 0 < num_classes <= padded:
    raise ValueError(
        f"`vocab_size` must be in (0, {padded}], the padded vocabulary"
        f" ({local_vocab} columns on each of {devices} devices), got"
        f" {vocab_size!r}.")
  return num_classes


class Walk(NamedTuple):
  """The walk's options as a head's caller gives them, in one object.

  Every public head builds one from its keywords and hands it on; `config_for`
  checks it against the heads and makes the static `Config`.

  Attributes:
    block_size: Vocabulary columns per block, or None to choose.
    logit_softcap: The soft cap, or None.
    temperature: Divides the logits, after the cap.
    vocab_size: The true V when W (split over `axis_name`) was padded; None
      means every column.
    axis_name: The mesh axis W's columns are split over, or None.
    mode: A reducing head's mode: "auto", "fast" (token chunks, the
      gradients made in the forward pass) or "low_memory" (the vocabulary
      walk); see `jxent._vocab.chunks`.
    token_chunk: The fast mode's tokens per chunk, or None to choose.
  """

  block_size: int | None = None
  logit_softcap: float | None = None
  temperature: float = 1.0
  vocab_size: int | None = None
  axis_name: AxisName | None = None
  mode: str = "auto"
  token_chunk: int | None = None


def config_for(heads, walk: Walk) -> Config:
  """The walk's `Config` for heads sharing a vocabulary."""
  local_vocab = heads[0].w.shape[1]
  tokens = heads[0].x.shape[0]
  acc = _checks.compute_dtype(*(h.x.dtype for h in heads),
                              *(h.w.dtype for h in heads))
  return Config(
      block=check_block_size(walk.block_size, local_vocab, tokens),
      cap=_checks.check_softcap(walk.logit_softcap), acc=acc,
      num_classes=whole_vocab(local_vocab, walk.axis_name, walk.vocab_size),
      axis_name=walk.axis_name,
      temperature=_checks.check_temperature(walk.temperature))
