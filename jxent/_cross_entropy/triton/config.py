"""Tile configurations of the Pallas kernels, and where they come from."""

import dataclasses
import functools
import json
import os
import pathlib

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class KernelConfig:
  """How a kernel walks a row: tile width, warps, pipeline stages.

  Frozen and hashable: it is a static argument of the kernels.

  Attributes:
    block: Columns per tile, a power of two (Triton needs one).
    num_warps: Warps per program (one program per row).
    num_stages: Software pipelining stages of the tile loop.
    lane_sums: The forward kernel keeps its running sums per lane of the
      tile and adds them across lanes once, after the loop (a tile's only
      cross-thread reduction is then its max), at the cost of registers for
      each sum's lanes; else (the default, the design the committed sweep
      measured) it reduces each tile's sums as it goes. Not yet timed on a
      GPU: the sweep tries both.
    splits: Programs per row in the forward kernel (`row_stats`): each
      walks an equal share of the row's tiles, and XLA combines their
      partial sums. None (the default) chooses from the number of rows
      (`splits_for`): one per row, unless the rows are too few to keep
      the GPU busy. On an H200 the kernels were slower than XLA at 8 and
      64 rows, split or not, so the default path leaves fewer than 256
      rows to XLA (`api.KERNELS`).
    interpret: Run with Pallas' interpreter instead of Triton (for tests on
      a CPU; slow).
  """

  block: int = 4096
  num_warps: int = 8
  num_stages: int = 2
  lane_sums: bool = False
  splits: int | None = None
  interpret: bool = False

  def __post_init__(self):
    if self.block < 1 or self.block & (self.block - 1):
      raise ValueError(
          f"`block` must be a power of two (Triton tiles are), got"
          f" {self.block}.")
    if self.num_warps < 1 or self.num_warps & (self.num_warps - 1):
      raise ValueError(
          f"`num_warps` must be a power of two, got {self.num_warps}.")
    if self.splits is not None and self.splits < 1:
      raise ValueError(f"`splits` must be None or >= 1, got {self.splits}.")


# A grid of fewer programs than this leaves a GPU idle (an H100 has 132
# SMs, an H200 as many): the forward kernel then splits its rows.
MIN_PROGRAMS = 256
# The fewest tiles a split walks: fewer, and the combine costs more than
# the parallelism brings.
MIN_SPLIT_TILES = 2


def splits_for(rows: int, tiles: int) -> int:
  """Programs per row for `rows` rows of `tiles` tiles each.

  One per row when there are at least `MIN_PROGRAMS` rows; else enough to
  make `MIN_PROGRAMS` programs in all, each walking at least
  `MIN_SPLIT_TILES` tiles. A starting point: not tuned on a GPU.
  """
  if rows >= MIN_PROGRAMS:
    return 1
  wanted = -(-MIN_PROGRAMS // max(rows, 1))
  return max(1, min(wanted, tiles // MIN_SPLIT_TILES))


KERNELS = ("row_stats", "logits_gradient")

# Tuned configurations come from the tile sweep (`python -m bench.sweep`, or
# `JXENT_SWEEP=1 bash bench/gpu.sh`), which writes the best configuration per
# (device kind, class-count bucket, dtype, kernel) to a JSON file. The
# package reads `tuned.json` beside this module if it is there, and the file
# named by $JXENT_KERNEL_CONFIGS if that is set (the GPU script points its
# stages at its own sweep this way). tuned.json is the sweep of an NVIDIA
# H100 80GB HBM3 (jax 0.11.2, bfloat16, 8192 rows;
# bench/results/nvidia-h100-2026-11-27-main); other dtypes take the
# defaults below, starting points, not optima. Another kind of GPU takes a
# tuned entry of another kind where its own kind has none.
_TUNED_FILE = pathlib.Path(__file__).with_name("tuned.json")


@functools.cache
def tuned(path: str | None = None
          ) -> dict[tuple[str, int, str, str], KernelConfig]:
  """The tuned configurations in `path` (default: tuned.json), by key.

  Keys are `(device_kind, bucket, dtype, kernel)`; an entry without its
  own `device_kind` has the file's.
  """
  file = pathlib.Path(path) if path else _TUNED_FILE
  if not file.exists():
    return {}
  table = json.loads(file.read_text())
  out = {}
  for entry in table.get("best", []):
    kind = str(entry.get("device_kind", table.get("device_kind", "")))
    key = (kind, int(entry["bucket"]), str(entry["dtype"]),
           str(entry["kernel"]))
    out[key] = KernelConfig(block=int(entry["block"]),
                            num_warps=int(entry["num_warps"]),
                            num_stages=int(entry["num_stages"]),
                            lane_sums=bool(entry.get("lane_sums", False)))
  return out


def _lookup(tables, device_kind: str, key: tuple[int, str, str]):
  """The first table's entry for this device kind, else the first entry of
  another kind, else None."""
  for table in tables:
    if (device_kind, *key) in table:
      return table[(device_kind, *key)]
  return next((c for table in tables for (_, *k), c in table.items()
               if tuple(k) == key), None)


def bucket_of(num_classes: int) -> int:
  """The power of two at or above `num_classes`: the tuning table's key."""
  return 1 << max(0, (num_classes - 1).bit_length())


def default_config(num_classes: int, dtype, kernel: str = "row_stats",
                   device_kind: str | None = None) -> KernelConfig:
  """The configuration of `kernel` for rows of `num_classes` of `dtype`.

  A tuned entry for the class count's power-of-two bucket where the sweep
  has produced one ($JXENT_KERNEL_CONFIGS first, then tuned.json), for
  `device_kind` (default: the first device's) or else another kind; else a
  tile of up to 4096 columns (the whole row when it is shorter), 8 warps
  for wide tiles and 4 for narrow ones, 2 stages.
  """
  if kernel not in KERNELS:
    raise ValueError(f"`kernel` must be one of {KERNELS}, got {kernel!r}.")
  if device_kind is None:
    device_kind = jax.devices()[0].device_kind
  key = (bucket_of(num_classes), jnp.dtype(dtype).name, kernel)
  tables = [tuned(path) for path in (
      os.environ.get("JXENT_KERNEL_CONFIGS"), None)]
  config = _lookup(tables, device_kind, key)
  if config is not None:
    return config
  bucket = key[0]
  block = min(bucket, 4096)
  return KernelConfig(block=block, num_warps=8 if block >= 2048 else 4,
                      num_stages=2)
