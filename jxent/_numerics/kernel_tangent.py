r"""A row tangent whose reverse mode runs on each platform's kernel.

Every loss of materialised logits has a tangent of one form,

.. math:: \dot L_r = \sum_c G_{rc}\, \dot z_{rc},

with the gradient :math:`G` recomputed element-wise from the logits and a
few numbers per row. Left to JAX, reverse mode transposes it into
:math:`g_r G_{rc}` with XLA. `row_tangent` is the same tangent as one
primitive, linear in :math:`\dot z`, whose transpose runs on the platforms
that have a kernel for it (a Pallas Triton kernel on CUDA, which writes
:math:`g_r G_{rc}` in one read of the logits), chosen per platform when the
function is lowered (`platforms.per_platform`), and XLA everywhere else.

Every differentiation mode keeps working: the primitive's forward
evaluation (forward mode) and its derivative with respect to the per-row
numbers (second derivatives) are XLA's; so is the derivative of the
transposed kernel, through a custom JVP. Only the reverse-mode gradient
itself comes from the kernel.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.interpreters import ad, batching, mlir

from jxent._numerics.platforms import per_platform

# `gradient(*residuals) -> G`, float [..., C]; a kernel is
# `kernel(g, *residuals) -> g[..., None] * G` in the tangent's dtype.
Gradient = Callable[..., jax.Array]
Kernel = Callable[..., jax.Array]


def row_tangent(dlogits: jax.Array, residuals, *, gradient: Gradient,
                kernels: dict[str, Kernel]) -> jax.Array:
  """sum_c G[..., c] * dlogits[..., c] per row, G = gradient(*residuals).

  Args:
    dlogits: The logits' tangent [..., C].
    residuals: A tuple (a pytree) of the arrays G is computed from; none of
      them may be a tangent.
    gradient: Computes G, float [..., C], with XLA.
    kernels: By platform ("cuda", ...), ``kernel(g, *residuals)`` giving
      ``g[..., None] * G`` in `dlogits`' dtype, for the reverse mode.

  Returns:
    The tangent per row, in G's dtype.
  """
  flat, tree = jax.tree.flatten(tuple(residuals))

  def unflat(fn):
    return lambda *leaves: fn(*jax.tree.unflatten(tree, leaves))

  def unflat_kernel(fn):
    return lambda g, *leaves: fn(g, *jax.tree.unflatten(tree, leaves))

  return _primitive().bind(
      dlogits, *flat, gradient=unflat(gradient),
      kernels=tuple((p, unflat_kernel(k)) for p, k in sorted(kernels.items())))


def _forward(dlogits, *residuals, gradient):
  grad = gradient(*residuals)
  return jnp.sum(grad * dlogits.astype(grad.dtype), axis=-1)


def _impl(dlogits, *residuals, gradient, kernels):
  del kernels
  return _forward(dlogits, *residuals, gradient=gradient)


def _abstract_eval(dlogits, *residuals, gradient, kernels):
  del kernels
  out = jax.eval_shape(
      functools.partial(_forward, gradient=gradient),
      *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (dlogits, *residuals)))
  return jax.core.ShapedArray(out.shape, out.dtype)


def _jvp(primals, tangents, *, gradient, kernels):
  dlogits, *residuals = primals
  d_dlogits, *d_residuals = tangents
  out = _primitive().bind(*primals, gradient=gradient, kernels=kernels)
  parts = []
  if type(d_dlogits) is not ad.Zero:
    # Linear in the logits' tangent: the same primitive.
    parts.append(_primitive().bind(d_dlogits, *residuals, gradient=gradient,
                                   kernels=kernels))
  if any(type(t) is not ad.Zero for t in d_residuals):
    # Through the per-row numbers (second derivatives): XLA's reference.
    d_residuals = [ad.instantiate_zeros(t) for t in d_residuals]
    _, part = jax.jvp(
        lambda *r: _forward(dlogits, *r, gradient=gradient),
        tuple(residuals), tuple(d_residuals))
    parts.append(part)
  if not parts:  # (JAX skips the rule then; kept for completeness.)
    return out, jnp.zeros_like(out)
  return out, functools.reduce(jnp.add, parts)


def _transpose(ct, dlogits, *residuals, gradient, kernels):
  if not ad.is_undefined_primal(dlogits) or any(
      ad.is_undefined_primal(r) for r in residuals):
    raise NotImplementedError(
        "row_tangent is linear in its first argument only.")
  nones = [None] * len(residuals)
  if type(ct) is ad.Zero:
    return [ad.Zero(dlogits.aval), *nones]
  dtype = dlogits.aval.dtype
  return [_scaled(gradient, kernels, dtype, ct, *residuals), *nones]


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1, 2))
def _scaled(gradient, kernels, dtype, g, *residuals):
  """g[..., None] * G in `dtype`: on each platform's kernel, else XLA."""
  return per_platform(
      g, *residuals,
      default=functools.partial(_xla_scaled, gradient, dtype),
      **dict(kernels))


def _xla_scaled(gradient, dtype, g, *residuals):
  # What JAX's own transpose of `_forward` computes.
  return (g[..., None] * gradient(*residuals)).astype(dtype)


@_scaled.defjvp
def _scaled_jvp(gradient, kernels, dtype, primals, tangents):
  # The kernels give the numbers; their derivative is the XLA reference's.
  _, tangent = jax.jvp(functools.partial(_xla_scaled, gradient, dtype),
                       primals, tangents)
  return _scaled(gradient, kernels, dtype, *primals), tangent


def _batch(args, dims, *, gradient, kernels):
  # Every batched argument's batch axis goes first (the classes stay last);
  # an unbatched tangent is broadcast, so the transpose sums over the batch.
  size = next(a.shape[d] for a, d in zip(args, dims, strict=True)
              if d is not None)
  dlogits, *residuals = (
      a if d is None else jnp.moveaxis(a, d, 0)
      for a, d in zip(args, dims, strict=True))
  if dims[0] is None:
    dlogits = jnp.broadcast_to(dlogits, (size, *dlogits.shape))
  axes = tuple(None if d is None else 0 for d in dims[1:])
  out = _primitive().bind(
      dlogits, *residuals,
      gradient=jax.vmap(gradient, in_axes=axes, axis_size=size),
      kernels=tuple((p, jax.vmap(k, in_axes=(0, *axes), axis_size=size))
                    for p, k in kernels))
  return out, 0


@functools.cache
def _primitive():
  """The primitive, made on first use (`jax.extend` imports Pallas)."""
  from jax.extend import core

  primitive = core.Primitive("jxent_row_tangent")
  primitive.def_impl(_impl)
  primitive.def_abstract_eval(_abstract_eval)
  mlir.register_lowering(
      primitive, mlir.lower_fun(_impl, multiple_results=False))
  ad.primitive_jvps[primitive] = _jvp
  ad.primitive_transposes[primitive] = _transpose
  batching.primitive_batchers[primitive] = _batch
  return primitive
