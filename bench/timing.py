"""Timing, the device's measured read bandwidth, spec peaks and memory figures."""

import dataclasses
import math
import os
import platform
import re
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Spec-sheet memory bandwidth, GB/s (1e9 bytes/s), matched against
# `device.device_kind` in order (the first match wins). The H100 SXM reports
# itself as "NVIDIA H100 80GB HBM3".
SPEC_PEAK_GBPS = (
    (r"\bH200\b", 4800.0),
    (r"\bH100\b.*\bNVL\b", 3900.0),
    (r"\bH100\b.*\bPCIe\b", 2000.0),
    (r"\bH100\b", 3350.0),
    (r"\bA100\b.*80GB", 2039.0),
    (r"\bA100\b", 1555.0),
)


def spec_peak_gbps(device_kind: str) -> float | None:
  """Spec-sheet memory bandwidth of a device, GB/s, or None if unknown.

  Args:
    device_kind: ``jax.Device.device_kind``, e.g. ``"NVIDIA H100 80GB HBM3"``.

  Returns:
    The peak in GB/s, or None (always None for CPUs).
  """
  for pattern, gbps in SPEC_PEAK_GBPS:
    if re.search(pattern, device_kind):
      return gbps
  return None


def device_slug(device) -> str:
  """A file-name-safe name for the device kind: ``cpu``, ``nvidia-h100-80gb-hbm3``."""
  if device.platform == "cpu":
    return "cpu"
  slug = re.sub(r"[^a-z0-9]+", "-", device.device_kind.lower()).strip("-")
  return slug or device.platform


def cpu_model() -> str:
  """The host CPU's model name, as ``lscpu`` gives it."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


@dataclasses.dataclass
class Timing:
  """Per-call times of one case.

  Attributes:
    times_s: One entry per repetition: the time of `inner` back-to-back calls,
      synchronised once at the end, divided by `inner`.
    inner: Calls per repetition.
    first_s: Time of the warm-up call that chose `inner`.
  """

  times_s: list[float]
  inner: int
  first_s: float

  def summary(self) -> dict:
    """Median, quartiles, min and max in seconds, and the counts."""
    ts = sorted(self.times_s)
    if len(ts) >= 2:
      p25, _, p75 = statistics.quantiles(ts, n=4, method="inclusive")
    else:
      p25 = p75 = ts[0]
    return {
        "median_s": statistics.median(ts),
        "p25_s": p25,
        "p75_s": p75,
        "min_s": ts[0],
        "max_s": ts[-1],
        "reps": len(ts),
        "inner": self.inner,
    }


def time_interleaved(
    calls: dict[str, tuple[Callable[[], object], Callable[[object], object]]],
    *,
    reps: int,
    target_rep_s: float = 0.01,
    max_total_s: float = 5.0,
    min_reps: int = 3,
) -> dict[str, Timing]:
  """Times compiled, warmed-up calls in turn, one repetition each per round.

  Interleaving, with the order rotated each round, makes the ratios between
  the calls robust to changes of load on a shared machine. For each call, one more warm-up chooses `inner`, the
  number of back-to-back calls per repetition that makes a repetition last
  about `target_rep_s`, so that dispatch latency hides behind the device's
  queue for short calls. Each repetition synchronises once, at its end.

  Args:
    calls: Name to ``(call, sync)``: `call` runs the case once and returns its
      output (dispatch may be asynchronous); `sync` blocks until an output
      is ready (``jax.block_until_ready``).
    reps: Number of repetitions wanted.
    target_rep_s: Wanted duration of one repetition.
    max_total_s: Stop after the round that passes this much time, once
      `min_reps` rounds are done.
    min_reps: Rounds taken whatever the time.

  Returns:
    Name to `Timing`.
  """
  inner, first = {}, {}
  for name, (call, sync) in calls.items():
    t0 = time.perf_counter()
    sync(call())
    first[name] = time.perf_counter() - t0
    inner[name] = int(min(max(1, math.floor(target_rep_s / max(first[name],
                                                                1e-9))), 1000))
  times = {name: [] for name in calls}
  names = list(calls)
  start = time.perf_counter()
  for done in range(1, max(reps, 1) + 1):
    # Each round starts with the next call, so none always runs first.
    k = (done - 1) % len(names)
    for name in names[k:] + names[:k]:
      call, sync = calls[name]
      t0 = time.perf_counter()
      for _ in range(inner[name]):
        out = call()
      sync(out)
      times[name].append((time.perf_counter() - t0) / inner[name])
      del out
    if done >= min_reps and time.perf_counter() - start > max_total_s:
      break
  return {name: Timing(times[name], inner[name], first[name]) for name in calls}


def time_calls(call, sync, **kwargs) -> Timing:
  """`time_interleaved` for one call; takes the same keyword arguments."""
  return time_interleaved({"call": (call, sync)}, **kwargs)["call"]


def compiled_memory(compiled) -> dict:
  """Memory figures XLA gives for a compiled function.

  Args:
    compiled: A ``jax.stages.Compiled``.

  Returns:
    ``temp_bytes`` (``memory_analysis().temp_size_in_bytes``) and
    ``output_bytes``, each None where the backend does not say.
  """
  try:
    analysis = compiled.memory_analysis()
  except Exception:  # not implemented on some backends
    analysis = None
  if isinstance(analysis, (list, tuple)):  # one per device in some versions
    analysis = analysis[0] if analysis else None
  return {
      "temp_bytes": getattr(analysis, "temp_size_in_bytes", None),
      "output_bytes": getattr(analysis, "output_size_in_bytes", None),
  }


def device_memory(device) -> dict | None:
  """``bytes_in_use`` and ``peak_bytes_in_use`` of a device, or None.

  CPUs give None. The peak is the process's peak since start: JAX offers no
  reset, so a case's own peak is known only when it raises the process peak.
  """
  try:
    stats = device.memory_stats()
  except Exception:  # not implemented on some backends
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return {
      "bytes_in_use": stats.get("bytes_in_use"),
      "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
      "bytes_limit": stats.get("bytes_limit"),
  }


def memory_bytes(device) -> int | None:
  """The memory a device holds its arrays in, or None if unknown.

  An accelerator's own memory (``bytes_limit``, what JAX may allocate); for a
  CPU, the host's physical memory.
  """
  stats = device_memory(device)
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  if device.platform != "cpu":
    return None
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (AttributeError, ValueError, OSError):  # not a POSIX system
    return None


def default_bandwidth_bytes(platform_name: str) -> int:
  """Size of the bandwidth probe: 4 GiB on accelerators, 256 MiB on CPU."""
  return 256 * 2**20 if platform_name == "cpu" else 4 * 2**30


def measure_bandwidth(nbytes: int, *, reps: int = 10) -> dict:
  """Measures the device's read bandwidth with a large float32 sum.

  Two reductions read the same ``nbytes`` array of shape ``(n, 8192)``: the
  full sum and the sum of each row (the access pattern of a loss over the
  class axis). The read bandwidth is the better of the two. A copy
  (``a * 2``, counted as one read and one write) is recorded for reference
  only: it is a noisy denominator.

  Args:
    nbytes: Size of the array read, in bytes.
    reps: Repetitions of each measurement.

  Returns:
    ``read_gbps`` and the figures it came from, in GB/s (1e9 bytes/s).
  """
  cols = 8192
  rows = max(1, nbytes // (4 * cols))
  a = jnp.ones((rows, cols), jnp.float32)
  a.block_until_ready()
  size = a.size * 4
  probes = {
      "full_sum": (lambda v: jnp.sum(v), size),
      "row_sum": (lambda v: jnp.sum(v, axis=-1), size),
      "copy": (lambda v: v * 2, 2 * size),
  }
  out = {"bytes": size}
  for name, (fn, moved) in probes.items():
    compiled = jax.jit(fn).lower(a).compile()
    jax.block_until_ready(compiled(a))
    timing = time_calls(lambda c=compiled, a=a: c(a), jax.block_until_ready,
                        reps=reps, max_total_s=10.0)
    median = timing.summary()["median_s"]
    out[f"{name}_median_s"] = median
    out[f"{name}_gbps"] = moved / median / 1e9
  out["read_gbps"] = max(out["full_sum_gbps"], out["row_sum_gbps"])
  return out
