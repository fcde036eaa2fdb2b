r"""The fast mode of the reducing heads: token chunks that hold whole rows.

The low-memory walk (`jxent._vocab.rule`) makes every block of logits twice,
once forward and once backward, because a block's gradient needs its rows'
final log-sum-exp: four matmul-sized units of work (logits, logits again,
`dx`, `dw`). When the loss is reduced inside the head ("mean" or "sum"),
its cotangent is one scalar, known to scale every gradient. The fast mode
then computes the gradients in the forward pass, three units:

* the tokens are walked in chunks of `token_chunk` rows, each holding its
  rows' whole vocabulary: the chunk's raw logits are made by one matmul,
  and the head's own forward (`HeadOp.forward`) and logits cotangent
  (`HeadOp.block_cotangents`, with a cotangent of 1 per row) run on them
  as on a walk of one block that is already made (`Config.made`), so no
  repeated matmul is left for XLA to merge;
* each chunk's gradient of the logits goes through the two matmuls that
  give its rows of `dx` and its share of `dw` (accumulated in float32);
* the summed loss, the number of rows that count, and the gradients (the
  residuals) leave the forward pass; the backward pass multiplies the
  gradients by the scalar cotangent.

The temporary memory is a few float32 [token_chunk, V] buffers and the
float32 `dw` and `dx`. Without a gradient, the low-memory walk's forward
runs (one unit), as in the other mode. Second derivatives differentiate the
forward pass, which computes the gradients in plain JAX.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from jxent._cross_entropy import rows as _rows
from jxent._numerics import checks as _checks
from jxent._vocab import blocks as _blocks
from jxent._vocab import rule as _rule
from jxent._vocab.blocks import Head, Walk

MODES = ("auto", "fast", "low_memory")

# Bytes of one float32 [token_chunk, V] buffer that the automatic chunk aims
# for; a few such buffers are alive at once. Each chunk also reads and
# writes all of the float32 `dw`, so a chunk must be large for that traffic
# to be small next to its matmuls. No GPU figure has chosen these yet.
_CHUNK_BYTES = {"gpu": 1024 * 2**20}
_DEFAULT_CHUNK_BYTES = 32 * 2**20
_MIN_CHUNK = 16
# Fewer tokens than four smallest chunks: "auto" walks the vocabulary (the
# fast mode's chunks would hold most of the logits).
_MIN_AUTO_TOKENS = 4 * _MIN_CHUNK


def default_token_chunk(tokens: int, vocab: int,
                        platform: str | None = None, heads: int = 1) -> int:
  """Picks the fast mode's tokens per chunk from the shapes and platform.

  A power of two, at most a quarter of the tokens (so that at most about a
  quarter of the rows' logits are alive at once) and with one float32
  [chunk, V] buffer per head (two for KL and JS, whose chunks make both
  heads' logits) of at most 1 GiB in all on a GPU, 32 MiB elsewhere; at
  least 16 tokens, and at most all of them (at least 1). `platform`
  defaults to `jax.default_backend()`.
  """
  platform = jax.default_backend() if platform is None else platform
  budget = _CHUNK_BYTES.get(platform, _DEFAULT_CHUNK_BYTES) // heads
  chunk = max(min(budget // (4 * max(vocab, 1)), tokens // 4), _MIN_CHUNK)
  # A power of two: whole tiles for the matmuls, and no shifted last chunk
  # when the tokens are one too.
  chunk = 2 ** int(math.log2(chunk))
  return int(max(min(chunk, tokens), 1))


def plan(walk: Walk, reduction: str, head: Head,
         heads: int = 1) -> int | None:
  """Validates the walk's mode; returns the fast mode's chunk, or None.

  `head` is the first of the loss's `heads` output layers (they share the
  tokens and the vocabulary).

  "auto" is the fast mode for a reduction inside the loss ("mean", "sum")
  over at least 64 tokens, and the low-memory walk for "none" (per-token
  cotangents), for fewer tokens, or when `block_size`, the walk's own
  setting, is given. A `token_chunk` asks for the fast mode.

  Raises:
    ValueError, TypeError: For an unknown mode, a fast mode without a
      reduction or with a `block_size`, or a bad `token_chunk`.
  """
  mode, token_chunk = walk.mode, walk.token_chunk
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
  reduced = reduction in ("mean", "sum")
  tokens, local_vocab = head.x.shape[0], head.w.shape[1]
  if mode == "auto":
    if token_chunk is not None:
      mode = "fast"
    elif (walk.block_size is not None or not reduced
          or tokens < _MIN_AUTO_TOKENS):
      mode = "low_memory"
    else:
      mode = "fast"
  if mode == "low_memory":
    if token_chunk is not None:
      raise ValueError(
          '`token_chunk` sets the fast mode\'s chunks; `mode="low_memory"`'
          " walks the vocabulary in blocks and has none.")
    return None
  if not reduced:
    raise ValueError(
        'The fast mode needs the reduction inside the loss ("mean" or'
        ' "sum"): with reduction="none" each token has its own cotangent,'
        ' which the low-memory walk (`mode="low_memory"`) takes.')
  if walk.block_size is not None:
    raise ValueError(
        "`block_size` sets the low-memory walk's vocabulary blocks; the fast"
        " mode's chunks hold whole rows (set `token_chunk`, or"
        ' `mode="low_memory"`).')
  if not tokens:
    return None  # Nothing to walk: the walk's empty loss and gradients.
  if token_chunk is None:
    return default_token_chunk(tokens, local_vocab, heads=heads)
  return max(min(_blocks.positive_int("token_chunk", token_chunk), tokens), 1)


def reduce(op, heads, data, reduction: _checks.Reduction, chunk: int | None,
           batch: tuple[int, ...],
           batch_axis_name=None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
  """The head's (loss, weight) outputs reduced, in the planned mode.

  Args:
    op: The head's `HeadOp`; its first two outputs are per-token losses and
      their weights in the "mean".
    heads, data: As for `rule.apply`.
    reduction: "none", "sum" or "mean" (checked).
    chunk: The fast mode's tokens per chunk (`plan`), or None for the
      low-memory walk.
    batch: The tokens' shape, for "none".
    batch_axis_name: Inside `shard_map`, the mesh axis the tokens are split
      over.

  Returns:
    `(loss, extras)`: the losses of shape `batch` for "none", else a
    scalar; and the op's further per-token outputs (monitoring values), of
    shape `batch` and without a gradient.
  """
  if chunk is None:  # `plan` gives none for reduction="none".
    loss, weight, *extras = _rule.apply(op, heads, data)
    loss = _rows.reduce(loss.reshape(batch), weight.reshape(batch),
                        reduction, batch_axis_name)
  else:
    fn = _summed_jit if op.cfg.axis_name is not None else _summed
    total, count, extras = fn(op, chunk, heads, data)
    if batch_axis_name is not None:
      total, count = lax.psum((total, count), batch_axis_name)
    # An all-ignored batch has no weight: its mean is 0, not 0/0.
    loss = total if reduction == "sum" else total / jnp.where(
        count > 0, count, 1)
  return loss, tuple(lax.stop_gradient(e).reshape(batch) for e in extras)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _summed(op, chunk, heads, data):
  # Not differentiated: the low-memory walk's forward alone.
  del chunk
  loss, weight, *extras = op.forward(heads, data)[0]
  return jnp.sum(loss), jnp.sum(weight), tuple(extras)


def _summed_fwd(op, chunk, heads, data):
  perturbed = tuple(_rule.perturbed(h) for h in heads)
  heads, data = _rule.values((heads, data))
  (total, count, extras), grads, d_data = _walk_chunks(op, chunk, heads,
                                                      data, perturbed)
  return (total, count, extras), (heads, data, grads, d_data)


def _summed_bwd(op, chunk, residuals, cotangents):
  del op, chunk
  heads, data, grads, d_data = residuals
  g = cotangents[0]  # The count is a constant; the extras have none.
  if _rule.is_zero(g):
    return tuple(Head(None, None, None) for _ in heads), None
  d_heads = []
  for h, grads_h in zip(heads, grads, strict=True):
    # Scaled and summed over the mesh in float32, then cast.
    summed = _blocks.finish_grads(
        tuple(None if d is None else g * d for d in grads_h), *h)
    d_heads.append(Head(*(None if d is None else d.astype(p.dtype)
                          for d, p in zip(summed, h, strict=True))))
  if d_data is not None:
    # Each device's chunks summed its own rows: the option's cotangent is
    # the sum over the devices of g times theirs.
    d_data = jax.tree.map(
        lambda d, primal: None if d is None else _blocks.sum_over_copies(
            (g * d).astype(d.dtype), primal),
        d_data, data, is_leaf=lambda d: d is None)
  return tuple(d_heads), d_data


_summed.defvjp(_summed_fwd, _summed_bwd, symbolic_zeros=True)
_summed_jit = jax.jit(_summed, static_argnums=(0, 1))


def _token_slicer(tokens: int, start, size: int):
  """Slices a data leaf's token axis; scalars (options) pass through."""
  def take(leaf):
    if jnp.ndim(leaf) == 0:
      return leaf
    if jnp.shape(leaf)[0] != tokens:
      raise ValueError(  # A head's data breaks the fast mode's contract.
          f"Per-token data must have the tokens ({tokens}) first, got shape"
          f" {jnp.shape(leaf)}.")
    return lax.dynamic_slice_in_dim(leaf, start, size)
  return take


def _walk_chunks(op, chunk, heads, data, perturbed):
  """The summed loss and count, and the gradients of the summed loss."""
  cfg = op.cfg
  tokens, local_vocab = heads[0].x.shape[0], heads[0].w.shape[1]
  # Whole rows: the chunk's vocabulary is one block, whose raw logits are
  # made once (one matmul) and handed to every walk of the head's forward
  # and to its gradient.
  whole = dataclasses.replace(
      op, cfg=cfg._replace(block=local_vocab, made=True))
  raw_cfg = cfg._replace(block=local_vocab, cap=None, temperature=1.0)
  offset = _blocks.offset_of(cfg, local_vocab)
  want = tuple(any(p) for p in perturbed)

  def step(i, carry):
    total, count, grads, d_data, extras = carry
    # The last chunk is shifted left to fit; its rows that an earlier chunk
    # already covered are stale and count for nothing.
    start = jnp.minimum(i * chunk, tokens - chunk)
    fresh = start + jnp.arange(chunk) >= i * chunk
    part = tuple(h._replace(x=lax.dynamic_slice_in_dim(h.x, start, chunk))
                 for h in heads)
    part_data = jax.tree.map(_token_slicer(tokens, start, chunk), data)
    made = tuple(
        Head(_blocks.block_logits(*h, 0, raw_cfg, offset)[0], h.w, None)
        for h in part)
    (loss, weight, *more), per_row = whole.forward(made, part_data)
    total = total + jnp.sum(jnp.where(fresh, loss, 0))
    count = count + jnp.sum(jnp.where(fresh, weight, 0))
    if more:
      # The per-token monitoring outputs; stale rows are written again with
      # their own values.
      if extras is None:
        extras = tuple(jnp.zeros((tokens,), m.dtype) for m in more)
      extras = tuple(lax.dynamic_update_slice_in_dim(e, m, start, 0)
                     for e, m in zip(extras, more, strict=True))
    g = whole.row_cotangents(per_row, part_data,
                             (fresh.astype(loss.dtype), None))
    if g is None:
      return total, count, grads, d_data, extras
    d_data = _add_data(d_data, whole.data_cotangents(per_row, part_data, g),
                       start, fresh, tokens)
    if not any(want):
      return total, count, grads, d_data, extras
    blocks = tuple(
        _rule.Block(*_blocks.block_logits(*m, 0, whole.cfg, offset), offset,
                    0) for m in made)
    dzs = whole.block_cotangents(per_row, part_data, g, blocks, want)
    rows = fresh
    mask = whole.token_mask(part_data)
    if mask is not None:
      rows = rows & mask
    new_grads = []
    for grads_h, h, dz, block, wanted in zip(grads, part, dzs, blocks, want,
                                             strict=True):
      if not wanted:
        new_grads.append(grads_h)
        continue
      # Stale and masked rows give nothing (their x is 0 in dw's matmul, so
      # a NaN there reaches no gradient); NaN rows that count keep theirs.
      draw = _blocks.raw_gradient(
          jnp.where(block.live & rows[:, None], dz, 0), block.logits,
          whole.cfg)
      x = jnp.where(rows[:, None], h.x, 0)
      new_grads.append(_add_chunk(grads_h, x, h.w, draw, start, cfg))
    return total, count, tuple(new_grads), d_data, extras

  acc = cfg.acc
  grads = tuple(_zero_grads(h, p, acc) for h, p in zip(heads, perturbed,
                                                       strict=True))
  zero = jnp.zeros((), acc)
  chunks = -(-tokens // chunk)
  if cfg.axis_name is not None or chunks == 1:
    # Inside `shard_map` the first chunk is peeled off: it types the loop's
    # carry by what varies over the mesh axes, which zeros cannot know.
    carry = step(0, (zero, zero, grads, None, None))
    if chunks > 1:
      carry = lax.fori_loop(1, chunks, step, carry)
  else:
    # The data's cotangents and the extras start at zeros of their types.
    # (A peeled first chunk would keep its own buffers beside the loop's.)
    d_data, extras = jax.tree.map(
        lambda a: jnp.zeros(a.shape, a.dtype),
        jax.eval_shape(lambda: step(0, (zero, zero, grads, None, None))[3:]))
    carry = lax.fori_loop(0, chunks, step,
                          (zero, zero, grads, d_data, extras))
  total, count, grads, d_data, extras = carry
  return (total, count, () if extras is None else extras), grads, d_data


def _add_data(total, part, start, fresh, tokens: int):
  """Adds a chunk's data cotangents: scalars (options) summed, per-token
  ones (a [chunk] leaf) into their rows of a [tokens] total."""
  if part is None:
    return total

  def add(old, new):
    if jnp.ndim(new) == 0:
      return new if old is None else old + new
    # Stale rows add nothing (0, never a NaN of their own).
    new = jnp.where(fresh.reshape((-1,) + (1,) * (new.ndim - 1)), new, 0)
    if old is None:
      old = jnp.zeros((tokens,) + new.shape[1:], new.dtype)
    rows = lax.dynamic_slice_in_dim(old, start, new.shape[0])
    return lax.dynamic_update_slice_in_dim(old, rows + new, start, 0)

  if total is None:
    return jax.tree.map(lambda new: add(None, new), part)
  return jax.tree.map(add, total, part)


def _zero_grads(head, perturbed, acc):
  """Float32 (or float64) accumulators of dx, dw and dbias, or None."""
  want_x, want_w, want_b = perturbed
  x, w, bias = head
  return (jnp.zeros(x.shape, acc) if want_x else None,
          jnp.zeros(w.shape, acc) if want_w else None,
          jnp.zeros(bias.shape, acc)
          if bias is not None and want_b else None)


def _add_chunk(grads, x, w, draw, start, cfg):
  """A chunk's rows of dx and its share of dw and dbias, in `cfg.acc`."""
  dx, dw, dbias = grads
  d16 = draw.astype(x.dtype)
  if dx is not None:
    rows = jnp.dot(d16, w.T, preferred_element_type=cfg.acc)
    # Stale rows add 0, so the shifted last chunk adds in place.
    old = lax.dynamic_slice_in_dim(dx, start, rows.shape[0])
    dx = lax.dynamic_update_slice_in_dim(dx, old + rows, start, axis=0)
  if dw is not None:
    dw = dw + jnp.dot(x.T, d16, preferred_element_type=cfg.acc)
  if dbias is not None:
    dbias = dbias + jnp.sum(draw, 0)
  return dx, dw, dbias

