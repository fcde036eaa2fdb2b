"""One case: compile it (or copy its inputs to torch), run it once, and
compare its output with the reference implementation's."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from bench import timing

# Relative tolerances for agreement with the reference, as a fraction of the
# largest |value| the reference gives (at least 1 for losses). Keyed by
# (dtype, whether both sides compute in float32). A bfloat16 gradient
# computed in float32 may still differ by one bfloat16 step (2**-8 relative)
# where the rounding goes the other way. bfloat16 arithmetic rounds
# log-probabilities of about -10 to steps of 1/16, so such implementations
# are a few percent off; the loose bound still catches NaNs and wrong
# formulas.
LOSS_RTOL = {
    ("float32", True): 1e-5,
    ("bfloat16", True): 1e-5,
    ("bfloat16", False): 5e-2,
}
GRAD_RTOL = {
    ("float32", True): 1e-4,
    ("bfloat16", True): 1e-2,
    ("bfloat16", False): 1e-1,
}


@jax.jit
def _diff(a, b):
  """Max |a - b|, max |b| and whether a is finite, in float32."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  return jnp.max(jnp.abs(a - b)), jnp.max(jnp.abs(b)), jnp.all(jnp.isfinite(a))


def _host_diff(a, b):
  """`_diff` on the host, for small arrays (no compilation) and torch."""
  a = np.asarray(a, np.float32)
  b = np.asarray(b, np.float32)
  return (float(np.max(np.abs(a - b))), float(np.max(np.abs(b))),
          bool(np.all(np.isfinite(a))))


def _max_diff(a, b):
  if isinstance(a, jax.Array) and a.size > 2**22:
    return tuple(v.item() for v in _diff(a, b))
  return _host_diff(a, b)


def agreement(row: dict, out, ref, both_f32: bool) -> None:
  """Adds the max abs difference of `out` from the reference's `ref`."""
  loss, grads = (out, None) if row["mode"] == "fwd" else out
  ref_loss, ref_grads = (ref, None) if row["mode"] == "fwd" else ref
  d, scale, finite = _max_diff(loss, ref_loss)
  row["loss_max_abs_diff"] = d
  row["loss_ref_max_abs"] = scale
  row["finite"] = bool(finite)
  key = (row["dtype"], both_f32)
  agrees = bool(finite) and d <= LOSS_RTOL[key] * max(scale, 1.0)
  if grads is not None and ref_grads is not None:
    pairs = [(g, r) for g, r in zip(grads, ref_grads, strict=True)
             if g is not None and r is not None]
    diffs = [_max_diff(g, r) for g, r in pairs]
    if diffs:
      row["grad_max_abs_diff"] = max(g for g, _, _ in diffs)
      row["grad_ref_max_abs"] = max(s for _, s, _ in diffs)
      row["finite"] = row["finite"] and all(f for _, _, f in diffs)
      # Each gradient against its own scale: a small one is not hidden.
      agrees = agrees and all(f and g <= GRAD_RTOL[key] * s
                              for g, s, f in diffs)
  row["agrees"] = agrees


def mean_loss(impl, mode):
  """The scalar loss a gradient mode differentiates: the per-row losses
  averaged outside (``vjp``), or inside where the implementation can
  (``vjp_mean``)."""
  if mode == "vjp_mean" and impl.mean is not None:
    return impl.mean
  return lambda *a: impl.fn(*a).mean()


def prepare_jax(suite, impl, mode, inputs, device):
  """Compiles a jax case and runs it once, for memory and agreement.

  Returns:
    ``(call, sync, out, fields)``: a call that runs the case again, how to
    wait for its output, the first output, and the row's compile and memory
    fields.
  """
  if mode == "fwd":
    fn = impl.fn
  else:
    fn = jax.value_and_grad(mean_loss(impl, mode), argnums=suite.grad_argnums)
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*inputs).compile()
  fields = {"compile_s": time.perf_counter() - t0}
  fields.update(timing.compiled_memory(compiled))
  if suite.inspect:
    fields.update(suite.inspect(compiled, inputs))
  before = timing.device_memory(device)
  out = jax.block_until_ready(compiled(*inputs))
  after = timing.device_memory(device)
  if before and after:
    fields["gpu_live_before_bytes"] = before["bytes_in_use"]
    fields["gpu_peak_bytes"] = after["peak_bytes_in_use"]
    fields["gpu_peak_delta_bytes"] = (after["peak_bytes_in_use"]
                                      - before["bytes_in_use"])
    fields["gpu_peak_rose"] = (after["peak_bytes_in_use"]
                               > before["peak_bytes_in_use"])
  return lambda: compiled(*inputs), jax.block_until_ready, out, fields


def prepare_torch(torch, suite, impl, mode, inputs, dtype, platform_name):
  """Copies a case's inputs to torch and runs it once, eagerly.

  Returns:
    ``(call, sync, out, fields)`` as `prepare_jax`, with the output on the
    host as numpy (a gradient only if it has at most 2**27 elements).
  """
  use_cuda = platform_name == "gpu" and torch.cuda.is_available()
  dev = "cuda" if use_cuda else "cpu"
  tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]

  def to_torch(a):
    if use_cuda:
      # Through DLPack, on the GPU: no host round trip (gigabytes at the GPU
      # shapes). JAX's arrays stay alive in the runner's inputs meanwhile;
      # JAX must not preallocate the GPU's memory (bench/gpu.sh says so).
      t = torch.from_dlpack(a)
      return t.long() if not t.is_floating_point() else t.to(tdtype)
    arr = np.asarray(jax.device_get(a))
    if np.issubdtype(arr.dtype, np.integer):
      return torch.from_numpy(arr.astype(np.int64)).to(dev)
    return torch.from_numpy(arr.astype(np.float32)).to(dev, tdtype)

  args = [to_torch(a) for a in inputs]
  wrt = [args[i] for i in suite.grad_argnums]
  if mode == "fwd":
    def call():
      with torch.no_grad():
        return impl.fn(*args)
  else:
    for a in wrt:
      a.requires_grad_(True)

    def call():
      for a in wrt:
        a.grad = None
      loss = mean_loss(impl, mode)(*args)
      loss.backward()
      return loss.detach(), tuple(a.grad for a in wrt)

  def sync(_):
    if use_cuda:
      torch.cuda.synchronize()

  out = call()
  sync(out)

  def to_np(v):
    return v.detach().float().cpu().numpy() if v.numel() <= 2**27 else None

  host = to_np(out) if mode == "fwd" else (to_np(out[0]),
                                           tuple(map(to_np, out[1])))
  fields = {"compile_s": None, "temp_bytes": None, "output_bytes": None,
            "torch_device": dev}
  return call, sync, host, fields
