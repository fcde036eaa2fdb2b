"""Which implementation computes a softmax cross-entropy: decided here only.

* ``"xla"``: XLA on any platform, with the custom JVP: every
  differentiation mode.
* ``"pallas"``: the Pallas (Triton) kernels for both passes, on NVIDIA
  GPUs (`jxent._kernels`): reverse-mode only.
* ``None`` (the default): on a GPU, where the kernels suit the dtype, the
  forward kernel computes the row statistics inside the XLA path's custom
  JVP (so every mode still works, and the backward pass is XLA's fused
  element-wise pass); everywhere else, ``"xla"``.

The platform is JAX's default backend when the function is traced.
"""

import contextlib
import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

Implementation = Literal["xla", "pallas"] | None
_CHOICES = (None, "xla", "pallas")
_KERNEL_DTYPES = ("float32", "bfloat16", "float16")

# Tests set this to trace the kernels on a CPU (interpret mode), or to
# lower them for CUDA on a machine without a GPU.
_anywhere: dict | None = None


@contextlib.contextmanager
def kernels_anywhere(interpret: bool, **config):
  """Treats the default backend as a GPU, for tests.

  Args:
    interpret: Run Pallas' interpreter (on a CPU) rather than Triton.
    **config: `KernelConfig` fields to use instead of the defaults (say, a
      small `block`, so that short rows take several tiles).
  """
  global _anywhere
  saved, _anywhere = _anywhere, dict(interpret=interpret, **config)
  try:
    yield
  finally:
    _anywhere = saved


@dataclasses.dataclass(frozen=True)
class Plan:
  """What runs.

  Attributes:
    stats: The forward kernel's configuration, or None for XLA alone.
    gradient: The backward kernel's configuration, when the kernels run
      both passes (``"pallas"``); else None (XLA's element-wise pass).
  """

  stats: object | None = None
  gradient: object | None = None


def _unsuitable(dtype, num_classes: int, sharded: bool) -> str | None:
  """Why the kernels cannot run these logits, or None."""
  if sharded:
    return "the sharded losses run on XLA only"
  if jnp.dtype(dtype).name not in _KERNEL_DTYPES:
    return (f"the kernels take {', '.join(_KERNEL_DTYPES)} logits, not"
            f" {jnp.dtype(dtype).name}")
  if num_classes == 0:
    return "there are no classes"
  return None


def plan(implementation, dtype, num_classes: int, sharded: bool = False
         ) -> Plan:
  """The plan for `implementation` on logits of `dtype` with C classes.

  Raises:
    ValueError: If `implementation` is unknown, or ``"pallas"`` cannot run
      here, with the reason.
  """
  if implementation not in _CHOICES:
    raise ValueError(
        f"`implementation` must be None, 'xla' or 'pallas', got"
        f" {implementation!r}.")
  if implementation == "xla":
    return Plan()
  on_gpu = _anywhere is not None or jax.default_backend() == "gpu"
  why = _unsuitable(dtype, num_classes, sharded)
  if implementation == "pallas":
    if not on_gpu:
      raise ValueError(
          "implementation='pallas' needs an NVIDIA GPU (Pallas' Triton"
          f" backend); JAX's default backend is {jax.default_backend()}."
          " Use implementation='xla', or None to choose.")
    if why is not None:
      raise ValueError(f"implementation='pallas' cannot run: {why}.")
  elif not on_gpu or why is not None:
    return Plan()
  from jxent import _kernels  # Pallas is imported only when used.

  def config(kernel):
    chosen = _kernels.default_config(num_classes, dtype, kernel)
    return chosen if _anywhere is None else dataclasses.replace(
        chosen, **_anywhere)

  return Plan(stats=config("row_stats"),
              gradient=config("logits_gradient")
              if implementation == "pallas" else None)
