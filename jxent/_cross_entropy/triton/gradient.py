"""The backward kernel: d loss / d logits from the per-row numbers.

One Triton program per row reads the row's logits (and soft labels) tile by
tile, recomputes the softmax from the saved shift and log-sum-exp, and
writes the gradient in the logits' dtype:

  g_c = a q_c - b t_c - s w_c [c valid]

with the per-row coefficients a, b, s of
`jxent._cross_entropy.rows.Coefficients` (already multiplied by the
cotangent). It computes what `jxent._cross_entropy.rows.logits_gradient`
computes; the tests compare the two in Pallas' interpret mode.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy.triton.config import KernelConfig
from jxent._cross_entropy.triton.inputs import row_inputs
from jxent._numerics.options import CrossEntropyOptions


def _kernel(*refs, block, kind, smoothing, weighted, masked):
  refs = list(refs)
  x_ref = refs.pop(0)
  label = refs.pop(0)[...] if kind == "integer" else None
  t_ref = refs.pop(0) if kind == "soft" else None
  m_ref = refs.pop(0) if masked else None
  w_ref = refs.pop(0) if weighted else None
  shift, log_sumexp, prob, label_coef = (refs.pop(0)[...] for _ in range(4))
  smooth = refs.pop(0)[...] if smoothing else None
  (out_ref,) = refs
  width = x_ref.shape[0]

  @pl.loop(0, pl.cdiv(width, block))
  def _(i):
    cols = i * block + jnp.arange(block)
    inside = cols < width
    x = plgpu.load(x_ref.at[cols], mask=inside,
                   other=-jnp.inf).astype(jnp.float32)
    if masked:
      keep = plgpu.load(m_ref.at[cols], mask=inside, other=0) != 0
      x = jnp.where(keep, x, -jnp.inf)
    # Shifted, as the XLA path tests it: a NaN shift keeps the whole row
    # NaN, and a row spanning more than the float range tests the overflow.
    shifted = x - shift
    grad = prob * jnp.exp(shifted - log_sumexp)
    weights = None
    if weighted:
      weights = plgpu.load(w_ref.at[cols], mask=inside,
                           other=0.0).astype(jnp.float32)
    if kind == "integer":
      grad = grad - jnp.where(cols == label, label_coef, 0.0)
    else:
      u = plgpu.load(t_ref.at[cols], mask=inside,
                     other=0.0).astype(jnp.float32)
      if masked:
        u = jnp.where(keep, u, 0.0)
      if weighted:
        u = u * weights
      grad = grad - label_coef * u
    if smoothing:
      per_class = smooth if weights is None else smooth * weights
      grad = grad - jnp.where(shifted > -jnp.inf, per_class, 0.0)
    # An impossible class (logit -inf) gets 0 whatever its label mass, as
    # on the XLA path.
    grad = jnp.where(shifted == -jnp.inf, 0.0, grad)
    if masked:
      grad = jnp.where(keep, grad, 0.0)
    plgpu.store(out_ref.at[cols], grad.astype(out_ref.dtype), mask=inside)


def logits_gradient(
    logits: jax.Array,
    mask: jax.Array | None,
    shift: jax.Array,
    log_sumexp: jax.Array,
    coefficients: _rows.Coefficients,
    opts: CrossEntropyOptions,
    config: KernelConfig,
    *,
    label_index: jax.Array | None = None,
    targets: jax.Array | None = None,
) -> jax.Array:
  """d loss / d logits with the Pallas kernel, in the logits' dtype.

  Args:
    logits: Logits [..., C], classes last.
    mask: Boolean mask of the logits' shape, or None.
    shift: The rows' shift.
    log_sumexp: The rows' log of the shifted sum of exponentials.
    coefficients: The rows' `Coefficients`, times the cotangent.
    opts: The parsed options.
    config: The tile configuration.
    label_index: Integer labels (int32 class indices), or None.
    targets: Soft labels of the logits' shape, or None.

  Returns:
    The gradient, of the logits' shape and dtype.
  """
  num_classes = logits.shape[-1]
  weighted = opts.class_weights is not None
  flat = lambda a: a.reshape(-1)  # noqa: E731
  kind, inputs, axes = row_inputs(logits, mask, opts.class_weights,
                                  label_index, targets)
  per_row = [shift, log_sumexp, coefficients.prob, coefficients.label]
  if coefficients.smooth is not None:
    per_row.append(coefficients.smooth)
  inputs += [flat(v).astype(jnp.float32) for v in per_row]
  axes += [0] * len(per_row)
  kernel = functools.partial(
      _kernel, block=config.block, kind=kind,
      smoothing=coefficients.smooth is not None, weighted=weighted,
      masked=mask is not None)
  call = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((num_classes,), logits.dtype),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=config.interpret, name="jxent_logits_gradient")
  grad = jax.vmap(call, in_axes=tuple(axes))(*inputs)
  return grad.reshape(logits.shape)


def scaled_logits_gradient(
    g: jax.Array,
    logits: jax.Array,
    mask: jax.Array | None,
    shift: jax.Array,
    log_sumexp: jax.Array,
    coefficients: _rows.Coefficients,
    opts: CrossEntropyOptions,
    label_index: jax.Array | None,
    targets: jax.Array | None,
    *,
    config: KernelConfig,
) -> jax.Array:
  """g times d loss / d logits, per row g: the default path's backward.

  The residuals are those of `jxent._cross_entropy.rows.logits_gradient`
  (which `jxent._numerics.kernel_tangent` transposes); the gradient is
  linear in the coefficients, so they carry the cotangent.
  """
  coefficients = jax.tree.map(lambda c: g * c, coefficients)
  return logits_gradient(logits, mask, shift, log_sumexp, coefficients, opts,
                         config, label_index=label_index, targets=targets)
