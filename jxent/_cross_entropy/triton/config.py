"""Tile configurations of the Pallas kernels, and where they come from."""

import dataclasses
import functools
import json
import os
import pathlib

import jax.numpy as jnp

# Columns per tile that hold a whole row in one tile: rows up to this many
# classes are read by one load, with no loop.
MAX_TILE = 32768


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """How a kernel walks a row: tile width, warps, pipeline stages.

  Frozen and hashable: it is a static argument of the kernels.

  Attributes:
    block: Columns per tile, a power of two (Triton needs one).
    num_warps: Warps per program (one program per row).
    num_stages: Software pipelining stages of the tile loop.
    interpret: Run with Pallas' interpreter instead of Triton (for tests on
      a CPU; slow).
  """

  block: int = 4096
  num_warps: int = 8
  num_stages: int = 2
  interpret: bool = False

  def __post_init__(self):
    if self.block < 1 or self.block & (self.block - 1):
      raise ValueError(
          f"`block` must be a power of two (Triton tiles are), got"
          f" {self.block}.")
    if self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
      raise ValueError(
          f"`num_warps` must be a power of two, got {self.num_warps}.")


KERNELS = ("row_stats", "logits_gradient")

# Tuned configurations come from `bench/gpu.sh`'s sweep (`python -m
# bench.sweep`), which writes the best configuration per (class-count bucket,
# dtype, kernel) to a JSON file. The package reads `tuned.json` beside this
# module if it is there, and the file named by $JXENT_KERNEL_CONFIGS if that
# is set (the GPU script points the benchmark grid at its own sweep this
# way). tuned.json is the sweep of an NVIDIA H100 80GB HBM3 (jax 0.11.2,
# bfloat16, 8192 rows; bench/results/nvidia-h100-2026-11-27-main); other
# dtypes and cards take the defaults below, starting points, not optima.
_TUNED_FILE = pathlib.Path(__file__).with_name("tuned.json")


@functools.cache
def tuned(path: str | None = None) -> dict[tuple[int, str, str], KernelConfig]:
  """The tuned configurations in `path` (default: tuned.json), by key."""
  file = pathlib.Path(path) if path else _TUNED_FILE
  if not file.exists():
    return {}
  table = json.loads(file.read_text())
  out = {}
  for entry in table.get("best", []):
    key = (int(entry["bucket"]), str(entry["dtype"]), str(entry["kernel"]))
    out[key] = KernelConfig(block=int(entry["block"]),
                            num_warps=int(entry["num_warps"]),
                            num_stages=int(entry["num_stages"]))
  return out


def bucket_of(num_classes: int) -> int:
  """The power of two at or above `num_classes`: the tuning table's key."""
  return 1 << max(0, (num_classes - 1).bit_length())


def default_config(num_classes: int, dtype, kernel: str = "row_stats"
                   ) -> KernelConfig:
  """The configuration of `kernel` for rows of `num_classes` of `dtype`.

  A tuned entry for the class count's power-of-two bucket where the sweep
  has produced one ($JXENT_KERNEL_CONFIGS first, then tuned.json); else a
  tile of up to 4096 columns (the whole row when it is shorter), 8 warps
  for wide tiles and 4 for narrow ones, 2 stages.
  """
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}.")
  bucket = bucket_of(num_classes)
  key = (bucket, jnp.dtype(dtype).name, kernel)
  for path in (os.environ.get("JXENT_KERNEL_CONFIGS"), None):
    config = tuned(path).get(key)
    if config is not None:
      return config
  block = min(bucket, 4096)
  return KernelConfig(block=block, num_warps=8 if block >= 2048 else 4,
                      num_stages=2)
