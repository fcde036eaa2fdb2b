"""The one custom-VJP rule of every vocabulary-scale head.

A head's loss is a function of one or two output layers (`Head`: x, w,
bias) and of data that is not differentiated through the walk (labels,
masks, a teacher's top k, options). Each head supplies only its numbers,
as a static, hashable `HeadOp`:

* `forward(heads, data)`: its outputs and per-row residuals, from one or
  more walks over the vocabulary (`jxent._vocab.walks`);
* `row_cotangents(per_row, data, cotangents)`: the outputs' cotangents
  made per row (zero for rows that do not count, NaN for illegal ones), or
  None when nothing is perturbed;
* `block_cotangents(per_row, data, g, blocks, want)`: the cotangent of one
  vocabulary block of each head's logits (None for a head not in `want`);
* `data_cotangents(per_row, data, g, combine)`: cotangents of the data
  (traced options), None by default; `combine(cotangent, primal)` sums one
  over the mesh axes its primal is replicated over (None: not yet);
* `token_mask(data)`: the tokens whose inputs count ([tokens] bool), or
  None for all. A masked token's x and logits are ignored: a NaN there
  reaches no gradient (0 * NaN would be NaN in the matmuls).

The rule (`apply`) walks the blocks once in the backward pass, remakes each
block's logits behind a barrier, and pushes the cotangents through the
matmuls that give `dx` (accumulated) and the block's slice of `dw`,
skipping those of an input that is not differentiated (a frozen teacher,
a frozen output layer). The backward pass is plain JAX: second derivatives
(Hessians, Hessian-vector products) differentiate it and the forward walk.
"""

import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax import lax

from jxent._vocab import blocks as _blocks
from jxent._vocab.blocks import Config, Head

_PRIMAL = jax.custom_derivatives.CustomVJPPrimal
_ZERO = jax.custom_derivatives.SymbolicZero


class Block(NamedTuple):
  """One vocabulary block of one head, as the backward walk remakes it.

  Attributes:
    logits: [tokens, block] logits in `cfg.acc` (capped, over T).
    columns: Their global column indices [1, block].
    live: Whether each column takes part [1, block].
    start: The block's first local column.
    offset: This shard's first column (0 without a mesh axis).
    number: The block's index i in the walk.
  """

  logits: jax.Array
  columns: jax.Array
  live: jax.Array
  start: jax.Array
  offset: Any
  number: jax.Array


class HeadOp(Protocol):
  """What a head supplies to the rule (a frozen dataclass with `cfg`)."""

  @property
  def cfg(self) -> Config: ...

  def forward(self, heads: tuple[Head, ...], data) -> tuple[Any, Any]: ...

  def row_cotangents(self, per_row, data, cotangents): ...

  def block_cotangents(self, per_row, data, g, blocks: tuple[Block, ...],
                       want: tuple[bool, ...]) -> tuple: ...

  def data_cotangents(self, per_row, data, g, combine=None): ...

  def token_mask(self, data) -> jax.Array | None: ...


def is_zero(cotangent) -> bool:
  """Whether a cotangent is a symbolic zero (the output is not used)."""
  return cotangent is None or isinstance(cotangent, _ZERO)


def perturbed(head) -> tuple[bool, ...]:
  """Which of a head's arrays a symbolic-zeros custom VJP differentiates."""
  return tuple(isinstance(p, _PRIMAL) and p.perturbed for p in head)


def values(tree):
  """A symbolic-zeros custom VJP's primals as plain arrays."""
  return jax.tree.map(lambda p: p.value, tree,
                      is_leaf=lambda p: isinstance(p, _PRIMAL))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _head_loss(op, heads, data):
  return op.forward(heads, data)[0]


def _head_loss_fwd(op, heads, data):
  # With symbolic zeros the rule sees which arrays are perturbed; and,
  # unlike the default, such a rule composes with checkify under `grad`.
  flags = tuple(perturbed(h) for h in heads)
  heads, data = values((heads, data))
  outputs, per_row = op.forward(heads, data)
  return outputs, (heads, data, per_row, flags)


def _head_loss_bwd(op, residuals, cotangents):
  heads, data, per_row, perturbed = residuals
  cfg = op.cfg
  g = op.row_cotangents(per_row, data, cotangents)
  want = tuple(any(p) for p in perturbed)
  primals = tuple(tuple(h) for h in heads)
  grads = tuple(_blocks.zero_grads(*h, cfg, p)
                for h, p in zip(heads, perturbed, strict=True))
  if g is not None and any(want):
    # Recompute the blocks from x and W behind a barrier: when the whole
    # vocabulary is one block, XLA would otherwise reuse the forward pass's
    # logits and keep them alive until here.
    heads = tuple(Head(*h) for h in lax.optimization_barrier(primals))
    offset = _blocks.offset_of(cfg, heads[0].w.shape[1])
    tokens = op.token_mask(data)
    if tokens is not None:
      # A masked token's inputs are ignored: its x is 0 in dw's matmul, and
      # its cotangents are 0 below, whatever its logits (NaN included).
      heads = tuple(h._replace(x=jnp.where(tokens[:, None], h.x, 0))
                    for h in heads)

    # When the block size divides V no block is shifted, so each writes its
    # columns of dw without reading them; else every block adds to them
    # (peeling the shifted last block off the loop would cost a block's
    # buffers more memory).
    fresh = heads[0].w.shape[1] % cfg.block == 0

    def body(i, grads):
      blocks = tuple(
          Block(*_blocks.block_logits(*h, i, cfg, offset), offset, i)
          for h in heads)
      dzs = op.block_cotangents(per_row, data, g, blocks, want)
      live = blocks[0].live if tokens is None else (
          blocks[0].live & tokens[:, None])
      return tuple(
          _blocks.accumulate(grads_h, h.x, h.w, _blocks.raw_gradient(
              jnp.where(live, dz, 0), block.logits, cfg),
              block.start, cfg, fresh) if wanted else grads_h
          for grads_h, h, dz, block, wanted in zip(
              grads, heads, dzs, blocks, want, strict=True))

    grads = _blocks.walk_blocks(body, grads, heads[0].w.shape[1], cfg.block,
                                cfg.axis_name is not None)
  d_heads = tuple(Head(*_blocks.finish_grads(g_h, *p))
                  for g_h, p in zip(grads, primals, strict=True))
  # None: the data gets a zero cotangent (labels, masks, a teacher's top k).
  return d_heads, None if g is None else op.data_cotangents(
      per_row, data, g, _blocks.sum_over_copies)


_head_loss.defvjp(_head_loss_fwd, _head_loss_bwd, symbolic_zeros=True)
_head_loss_jit = jax.jit(_head_loss, static_argnums=(0,))


def apply(op: HeadOp, heads: tuple[Head, ...], data):
  """The head's outputs, differentiable through the one rule above.

  Inside `shard_map` the rule runs under `jit`: JAX 0.10 cannot run a
  custom VJP with symbolic zeros eagerly there, but can trace one. (Not
  elsewhere: checkify cannot linearise a `jit` that follows a check.)
  """
  if op.cfg.axis_name is not None:
    return _head_loss_jit(op, heads, data)
  return _head_loss(op, heads, data)


class Op:
  """A base for `HeadOp`s (frozen dataclasses): no data cotangent, and the
  token mask the last entry of the data."""

  def data_cotangents(self, per_row, data, g, combine=None):
    del per_row, data, g, combine
    return None

  def token_mask(self, data):
    return data[-1]
