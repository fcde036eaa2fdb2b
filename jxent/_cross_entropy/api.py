"""Which implementation computes a softmax cross-entropy: the registry.

Implementations are named by backend, as tokamax names them:

* ``"xla"``: XLA on any platform, with the custom JVP (`xla`): every
  differentiation mode.
* ``"triton"``: the Pallas Triton kernels (`triton`) for both passes, on
  NVIDIA GPUs: reverse mode only.
* ``None`` (the default): XLA's custom JVP everywhere, with the row
  statistics of the forward pass computed by each kernel implementation's
  forward kernel on that implementation's platform (the Triton kernel on
  CUDA), and the reverse-mode gradient by its backward kernel
  (`jxent._numerics.kernel_tangent`); forward mode and second derivatives
  stay XLA's. The choice is made per platform when the function is lowered
  (`lax.platform_dependent`), not when it is traced: one jitted function
  runs XLA on the CPU of a GPU machine and the kernel on its GPU, and
  `jax.export` for ``["cpu", "cuda"]`` carries both.

A new kernel (say ``"mosaic_tpu"``) is one module and one `KERNELS` entry;
the kernel tests run against every entry. Kernel modules are imported only
when a function is traced with them, so `import jxent` loads no Pallas.
"""

import contextlib
import dataclasses
import importlib
import math
from typing import Literal

import jax
import jax.numpy as jnp

from jxent._cross_entropy import rows as _rows
from jxent._cross_entropy import xla as _xla

Implementation = Literal["xla", "triton"] | None


@dataclasses.dataclass(frozen=True)
class KernelImplementation:
  """A registered kernel implementation of the softmax cross-entropies.

  Its module provides ``stats_kernel(num_classes, dtype, **config)``, a
  `rows.StatsKernel` (forward and backward kernels) for the default path,
  ``cross_entropy_rows(num_classes, dtype, logits, mask, target, opts,
  **config)``, the per-row loss and weight with both passes on its
  kernels, and
  ``information_kernel(kind, num_classes, dtype, **config)``, the forward
  kernel of the entropy ("entropy"), KL ("kl") or cross-entropy
  ("cross_entropy") of logits with their backward kernels, for their
  default path.

  Attributes:
    module: The module, imported when first used.
    platform: The platform it runs on, as `lax.platform_dependent` names it.
    device: The hardware in words, for error messages.
    dtypes: The logits' dtypes it takes.
    min_rows: The fewest rows for which the default path runs it; with
      fewer, the default runs XLA (an explicit `implementation=` still
      runs the kernel).
  """

  module: str
  platform: str
  device: str
  dtypes: tuple[str, ...]
  min_rows: int = 1

  def load(self):
    return importlib.import_module(self.module)

  def unsuitable(self, dtype, num_classes: int) -> str | None:
    """Why it cannot run these logits, or None."""
    if jnp.dtype(dtype).name not in self.dtypes:
      return (f"it takes {', '.join(self.dtypes)} logits, not"
              f" {jnp.dtype(dtype).name}")
    if num_classes == 0:
      return "there are no classes"
    return None


KERNELS: dict[str, KernelImplementation] = {
    "triton": KernelImplementation(
        module="jxent._cross_entropy.triton", platform="cuda",
        device="an NVIDIA GPU", dtypes=("float32", "bfloat16", "float16"),
        # On an H200 (bench/results/nvidia-h200-2026-12-04-b-backward/
        # few-rows), 8 and 64
        # rows of 262144 bfloat16 classes took 1.01 to 1.87 times XLA's time
        # on the kernels, split rows and all: too few programs, and launch
        # costs as large as the work.
        min_rows=256),
}
NAMES = ("xla", *KERNELS)

# Tests set this to run the kernels where they could not run otherwise:
# {"platforms": extra platforms for the default path's kernels (say "cpu",
# in interpret mode), "config": overrides of the kernels' configuration}.
_test_override: dict | None = None


@contextlib.contextmanager
def kernels_anywhere(interpret: bool, platforms: tuple[str, ...] | None = None,
                     min_rows: int = 1, **config):
  """Runs the kernels on any backend, for tests.

  Args:
    interpret: Run Pallas' interpreter (on a CPU) rather than compile.
    platforms: The platforms, besides each kernel's own, on which the
      default path runs the kernels; by default "cpu" in interpret mode,
      none otherwise.
    min_rows: The fewest rows for which the default path runs the kernels
      (in place of each kernel's `min_rows`), so that tests of a few rows
      run them.
    **config: Configuration fields to use instead of the defaults (say, a
      small `block`, so that short rows take several tiles).

  Within it, an explicit kernel implementation is also traced without
  looking for its device (so it can be lowered with `jax.export`).
  """
  global _test_override
  if platforms is None:
    platforms = ("cpu",) if interpret else ()
  saved = _test_override
  _test_override = dict(platforms=tuple(platforms), min_rows=min_rows,
                        config=dict(interpret=interpret, **config))
  try:
    yield
  finally:
    _test_override = saved


def _config() -> dict:
  return {} if _test_override is None else _test_override["config"]


def _has_device(kernel: KernelImplementation) -> bool:
  if _test_override is not None:
    return True
  backend = {"cuda": "gpu", "rocm": "gpu"}.get(kernel.platform,
                                               kernel.platform)
  try:
    return bool(jax.devices(backend))
  except RuntimeError:
    return False


def _too_few_rows(kernel: KernelImplementation, rows: int) -> bool:
  """Whether the default path leaves `rows` rows to XLA (`min_rows`, at
  least 1: a batch of no rows would be a kernel grid of no programs)."""
  if _test_override is not None:
    return rows < max(_test_override["min_rows"], 1)
  return rows < max(kernel.min_rows, 1)


def _stats_kernels(dtype, num_classes: int, rows: int
                   ) -> tuple[_rows.StatsKernel, ...]:
  """Every registered kernel's forward kernel that suits these logits (with
  its backward kernel), for the default path."""
  kernels = []
  for kernel in KERNELS.values():
    if kernel.unsuitable(dtype, num_classes) is not None or _too_few_rows(
        kernel, rows):
      continue
    stats = kernel.load().stats_kernel(num_classes, dtype, **_config())
    kernels.append(stats)
    for platform in () if _test_override is None else (
        _test_override["platforms"]):
      kernels.append(stats._replace(platform=platform))
  return tuple(kernels)


def information_kernels(implementation: Implementation, kind: str, dtypes,
                        num_classes: int, rows: int
                        ) -> tuple[_rows.StatsKernel, ...]:
  """The kernels for the entropy of logits (`kind` "entropy") or a pair of
  them ("kl", "cross_entropy"), for the implementation asked for.

  None: every registered kernel that suits logits of these dtypes and
  `rows` (at least its `min_rows`), each run on its platform by
  `jxent._information.logits` (XLA elsewhere).
  "xla": none. A kernel's name: that kernel alone, where it can run.
  Reverse mode runs their backward kernels; every other derivative is
  XLA's.

  Raises:
    ValueError: If `implementation` is unknown, or a kernel implementation
      cannot run here, with the reason.
  """
  names = _check_name(implementation)
  if implementation == "xla":
    return ()
  kernels = []
  for name in names:
    kernel = KERNELS[name]
    why = next((w for w in (kernel.unsuitable(d, num_classes)
                            for d in dtypes) if w is not None), None)
    if implementation is None:
      if why is not None or _too_few_rows(kernel, rows):
        continue
    else:
      _require_device(implementation, kernel)
      if why is not None:
        raise ValueError(
            f"implementation={implementation!r} cannot run: {why}.")
    stats = kernel.load().information_kernel(kind, num_classes, dtypes[0],
                                             **_config())
    kernels.append(stats)
    for platform in () if _test_override is None else (
        _test_override["platforms"]):
      kernels.append(stats._replace(platform=platform))
  return tuple(kernels)


def _check_name(implementation: Implementation) -> tuple[str, ...]:
  """The kernel names `implementation` covers; raises if it is unknown."""
  if implementation is not None and implementation not in NAMES:
    raise ValueError(
        f"`implementation` must be None or one of {NAMES}, got"
        f" {implementation!r}.")
  if implementation in (None, "xla"):
    return tuple(KERNELS)
  return (implementation,)


def _require_device(implementation: str, kernel: KernelImplementation):
  if not _has_device(kernel):
    raise ValueError(
        f"implementation={implementation!r} needs {kernel.device}; JAX's"
        f" backends here: {_backends()}. Use implementation='xla', or None"
        " to choose per platform.")


def cross_entropy_rows(implementation: Implementation, num_classes: int,
                       logits, mask, target, opts):
  """Per-row loss and "mean" weight, on the implementation asked for.

  Raises:
    ValueError: If `implementation` is unknown, or a kernel implementation
      cannot run here, with the reason.
  """
  _check_name(implementation)
  if implementation == "xla":
    return _xla.softmax_cross_entropy_rows(None, num_classes, (), logits,
                                           mask, target, opts)
  if implementation is None:
    return _xla.softmax_cross_entropy_rows(
        None, num_classes,
        _stats_kernels(logits.dtype, num_classes,
                       math.prod(logits.shape[:-1])),
        logits, mask, target, opts)
  kernel = KERNELS[implementation]
  _require_device(implementation, kernel)
  why = kernel.unsuitable(logits.dtype, num_classes)
  if why is not None:
    raise ValueError(
        f"implementation={implementation!r} cannot run: {why}.")
  if not math.prod(logits.shape[:-1]):
    # No rows: nothing for a kernel grid to do (it would have no programs).
    return _xla.softmax_cross_entropy_rows(None, num_classes, (), logits,
                                           mask, target, opts)
  return kernel.load().cross_entropy_rows(
      num_classes, logits.dtype, logits, mask, target, opts, **_config())


def _backends() -> str:
  names = []
  for backend in ("cpu", "gpu", "tpu"):
    try:
      jax.devices(backend)
    except RuntimeError:
      continue
    names.append(backend)
  return ", ".join(names) or "none"
