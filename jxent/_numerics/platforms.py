"""A choice of computation per platform, made when a function is lowered.

`per_platform(*args, default=f, cuda=g)` is `lax.platform_dependent` with
one difference: each branch is lowered for its own platform only. JAX 0.10
lowers every branch of `platform_dependent` for every platform of a
multi-platform `jax.export`, so a branch holding a Pallas Triton kernel
fails for ``platforms=["cpu", "cuda"]`` ("Only interpret mode is supported
on CPU backend"). Here the branches are the per-platform lowering rules of
one primitive, which JAX lowers each under its own platform.

The primitive has an implementation (a `jit` of itself), an abstract
evaluation, lowering rules and a batching rule (it `vmap`s every branch).
It has no differentiation rules: callers wrap it in a `jax.custom_jvp`
whose tangent is the reference's (see `jxent._cross_entropy.rows`).
"""

import functools
from collections.abc import Callable

import jax
from jax.interpreters import batching, mlir

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def per_platform(*args, default: Callable, **branches: Callable):
  """``branches[platform](*args)`` where a branch names the platform the
  function is lowered for, else ``default(*args)``.

  Args:
    *args: Pytrees of arrays, passed to every branch.
    default: The function for every platform without a branch.
    **branches: Functions by platform ("cpu", "cuda", "rocm", "tpu"). Each
      must return what `default` returns, in structure, shape and dtype.

  Returns:
    The chosen branch's result.
  """
  unknown = set(branches) - set(PLATFORMS)
  if unknown:
    raise ValueError(f"Unknown platforms {sorted(unknown)}; use {PLATFORMS}.")
  flat_args, in_tree = jax.tree.flatten(args)
  out_tree = jax.tree.structure(jax.eval_shape(default, *args))

  def flat(fn):
    def call(*flat_args):
      out = fn(*jax.tree.unflatten(in_tree, flat_args))
      leaves, tree = jax.tree.flatten(out)
      if tree != out_tree:
        raise TypeError(f"per_platform: a branch returned {tree}, the"
                        f" default {out_tree}.")
      return leaves
    return call

  out = _primitive().bind(
      *flat_args, default=flat(default),
      branches=tuple((p, flat(f)) for p, f in sorted(branches.items())))
  return jax.tree.unflatten(out_tree, out)


def _abstract_eval(*avals, default, branches):
  del branches
  shapes = jax.eval_shape(
      default, *(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals))
  return [jax.core.ShapedArray(s.shape, s.dtype) for s in shapes]


def _impl(*args, default, branches):
  # Eager: the branch of the platform the arguments live on, op by op, as
  # any eager JAX runs (a `jit` of the primitive would compile its fresh
  # closures again on every call).
  fn = dict(branches).get(_eager_platform(args), default)
  return fn(*args)


def _eager_platform(args) -> str:
  """The platform of the first argument on a device (else the default
  device's), as the lowering rules name platforms ("cuda", not "gpu")."""
  device = next((next(iter(a.devices())) for a in args
                 if isinstance(a, jax.Array)), None) or jax.devices()[0]
  if device.platform != "gpu":
    return device.platform
  client = device.client
  names = f"{client.platform} {client.platform_version}".lower()
  return "rocm" if "rocm" in names else "cuda"


def _lowering(platform: str | None):
  def rule(ctx, *args, default, branches):
    fn = dict(branches).get(platform, default)
    # `lower_fun` lowers `fn` under `ctx.platforms`: this platform only.
    return mlir.lower_fun(fn, multiple_results=True)(ctx, *args)
  return rule


def _batch(args, dims, *, default, branches):
  # An unbatched argument's dimension is None (JAX's `not_mapped`).
  in_axes = tuple(dims)

  def vmapped(fn):
    return jax.vmap(fn, in_axes=in_axes, out_axes=0)

  out = _primitive().bind(
      *args, default=vmapped(default),
      branches=tuple((p, vmapped(f)) for p, f in branches))
  return out, [0] * len(out)


@functools.cache
def _primitive():
  """The primitive, made on first use: `jax.extend` imports Pallas, which
  `import jxent` does not load."""
  from jax.extend import core

  primitive = core.Primitive("jxent_per_platform")
  primitive.multiple_results = True
  primitive.def_abstract_eval(_abstract_eval)
  primitive.def_impl(_impl)
  mlir.register_lowering(primitive, _lowering(None))
  for platform in PLATFORMS:
    mlir.register_lowering(primitive, _lowering(platform), platform=platform)
  batching.primitive_batchers[primitive] = _batch
  return primitive
