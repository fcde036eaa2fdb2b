"""The sharded suite: vocabulary-parallel loss against gather-then-loss.

    python -m bench.sharded        # 8 simulated CPU devices

``python -m bench.sharded`` is ``python -m bench --suite sharded``. The
logits of shape (rows, vocab) are split along the vocabulary over a mesh
axis of all devices (8 simulated ones on a CPU). It compares, for
``jax.value_and_grad`` of the mean integer-label cross-entropy under ``jit``:

* ``jxent``: ``jxent.sharded.softmax_cross_entropy_with_integer_labels``
  inside ``shard_map``, which combines per-row numbers with ``pmax``/``psum``;
* ``gspmd``: the ordinary ``jxent.softmax_cross_entropy_with_integer_labels``
  under plain ``jit`` on the sharded array, left to XLA's SPMD partitioner;
* ``gathered``: each device all-gathers the vocabulary, then runs the
  ordinary loss: what a loss that is not mesh-aware costs.

Its rows add the compiled temporary memory per device (XLA's
``memory_analysis`` of the partitioned program) and whether the program
all-gathers. On simulated devices sharing the CPU's cores, the times say
little about real devices; the memory per device is the point.
"""

import sys

import jax
from jax import lax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bench.registry import Impl, Lazy, Suite, register

jxent = Lazy("jxent")

AXIS = "vocab"


def _mesh():
  return jax.sharding.Mesh(jax.devices(), (AXIS,))


def _on_mesh(local, **kwargs):
  """`local(x, y)` under `shard_map`, the logits split along the vocabulary."""
  def fn(x, y):
    return jax.shard_map(local, mesh=_mesh(), in_specs=(P(None, AXIS), P()),
                         out_specs=P(), **kwargs)(x, y)
  return fn


def _jxent_sharded(x, y, **options):
  return _on_mesh(lambda x, y: jxent.sharded.softmax_cross_entropy_with_integer_labels(
      x, y, AXIS, reduction="mean", **options))(x, y)


def _gathered_local(x, y):
  full = lax.all_gather(x, AXIS, axis=1, tiled=True)
  return jxent.softmax_cross_entropy_with_integer_labels(
      full, y, reduction="mean")


def _place(inputs):
  x, y = inputs
  mesh = _mesh()
  return (jax.device_put(x, NamedSharding(mesh, P(None, AXIS))),
          jax.device_put(y, NamedSharding(mesh, P())))


def _check_vocab(shape):
  devices = jax.device_count()
  if shape[1] % devices:
    return f"vocab {shape[1]} is not a multiple of the {devices} devices"
  return None


def _inspect(compiled, inputs):
  devices = jax.device_count()
  gathers = "all-gather" in compiled.as_text()
  per_device = inputs[0].nbytes // devices
  return {
      "devices": devices,
      "logits_bytes_per_device": per_device,
      "all_gather_in_hlo": gathers,
      "notes": f"{devices} devices, {per_device / 2**20:.1f} MB of logits "
               f"each; all-gather: {'yes' if gathers else 'no'}",
  }


register(Suite(
    name="sharded",
    title="integer-label cross-entropy, logits split along the vocabulary",
    dims=("rows", "vocab"),
    inputs=lambda draw, shape, dtype: (
        draw.normal(shape, 2.0).astype(dtype),
        draw.integers(shape[1], shape[:1])),
    jxent=_jxent_sharded,
    jxent_code="jxent.sharded.softmax_cross_entropy_with_integer_labels(x, y, "
               "'vocab', reduction='mean') in shard_map",
    peers=(
        Impl("gspmd", lambda x, y: jxent.softmax_cross_entropy_with_integer_labels(
            x, y, reduction="mean"),
             "jxent.softmax_cross_entropy_with_integer_labels(x, y, "
             "reduction='mean') under jit, on the sharded x", needs="jxent",
             f32=True),
        Impl("gathered", _on_mesh(_gathered_local, check_vma=False),
             "all_gather(x) then jxent.softmax_cross_entropy_with_integer_"
             "labels, in shard_map", needs="jxent", f32=True),
    ),
    shapes={"quick": ((64, 1024),), "cpu": ((1024, 65536),),
            "gpu": ((8192, 131072),)},
    dtypes={"quick": ("float32",), "cpu": ("float32",), "gpu": ("float32",)},
    min_bytes=None,
    byte_model="none, the point is the temporary memory per device",
    baseline=("gspmd", "gathered"), modes=("vjp",), place=_place,
    check_shape=_check_vocab, inspect=_inspect, cpu_devices=8,
    max_case_s=10.0,
    note="Simulated devices share the host's cores: read the times as "
         "relative only. temp MB is per device.",
    default=False))


if __name__ == "__main__":
  from bench.__main__ import main

  sys.exit(main(prog="python -m bench.sharded", suite="sharded"))
