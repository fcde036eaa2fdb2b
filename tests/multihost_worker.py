"""One process of tests/test_multihost.py: 2 processes x 4 CPU devices.

    python tests/multihost_worker.py PROCESS_ID PORT OUT_DIR

joins a 2-process JAX job on localhost (gloo CPU collectives), runs every
case of `CASES` with the vocabulary-parallel losses of `jxent.sharded` on two
meshes of the 8 global devices, and writes the values and gradients, fetched
whole, to `OUT_DIR/process_<PROCESS_ID>.npz`. It exits with `SKIP` when the
installed jaxlib has no gloo collectives.

The test imports this module for the inputs and the cases, and computes the
same cases unsharded in its own process; nothing here runs on import.
"""

import dataclasses
import os
import pathlib
import sys
import traceback
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jxent
from jxent import sharded

NUM_PROCESSES, LOCAL_DEVICES = 2, 4
TOKENS, HIDDEN, Q_HIDDEN, VOCAB, TOP_K = 16, 8, 6, 64, 5
BLOCK = 8  # Local columns per block: 1 on each of 8 shards, 2 of 4.
IGNORE = -100
SKIP = 77  # Exit status: gloo collectives are not available.
MESHES = ("vocab8", "data2_vocab4")  # The names `meshes` gives.


def make_inputs() -> dict[str, np.ndarray]:
  """The arrays every case reads, the same in every process (seeded)."""
  rng = np.random.default_rng(0)

  def normal(*shape, scale=1.0):
    return (scale * rng.normal(size=shape)).astype(np.float32)

  labels = rng.integers(0, VOCAB, TOKENS).astype(np.int32)
  # The first and last classes (on the first and last shards), two ignored.
  labels[0], labels[1], labels[[5, 11]] = 0, VOCAB - 1, IGNORE
  teacher = 2.0 * rng.normal(size=(TOKENS, VOCAB))
  top_k = np.argsort(-teacher, axis=1)[:, :TOP_K]
  teacher_log_probs = teacher - np.log(np.exp(teacher).sum(1, keepdims=True))
  where = rng.random(TOKENS) > 0.25
  where[0] = True
  return dict(
      x=normal(TOKENS, HIDDEN), w=normal(HIDDEN, VOCAB, scale=0.8),
      bias=normal(VOCAB), q_x=normal(TOKENS, Q_HIDDEN),
      q_w=normal(Q_HIDDEN, VOCAB), q_bias=normal(VOCAB, scale=0.5),
      labels=labels, where=where,
      top_k_indices=top_k.astype(np.int32),
      top_k_log_probs=np.take_along_axis(teacher_log_probs, top_k,
                                         1).astype(np.float32),
      # Per-token cotangents, one row per output: a permuted or misplaced
      # token gradient changes the result.
      cotangent=normal(2, TOKENS),
  )


# How each input is split: tokens over "data", classes over "vocab".
_SPLIT = dict(x="tokens", q_x="tokens", labels="tokens", where="tokens",
              top_k_indices="tokens", top_k_log_probs="tokens", w="vocab",
              q_w="vocab", bias="classes", q_bias="classes")


@dataclasses.dataclass(frozen=True)
class Case:
  """One loss, in its plain and its sharded form.

  Attributes:
    fn: Called with the inputs named by `args`, and keywords `vocab` and
      `data`, the mesh axes of the classes and of the tokens; with
      `vocab=None` it is the plain, unsharded jxent function.
    args: Names of the inputs, keys of `make_inputs()`.
    wrt: Positions in `args` to differentiate.
    per_token: Whether the outputs have one value per token (else scalars).
    outputs: How many arrays `fn` returns (more than 1: a tuple).
  """

  fn: Callable
  args: tuple[str, ...]
  wrt: tuple[int, ...]
  per_token: bool
  outputs: int = 1


def _cross_entropy(x, w, bias, labels, vocab=None, data=None):
  options = dict(ignore_index=IGNORE, label_smoothing=0.1, z_loss=1e-3,
                 logit_softcap=5.0)
  if vocab is None:
    return jxent.linear_softmax_cross_entropy(x, w, labels, bias=bias,
                                              **options)
  return sharded.linear_softmax_cross_entropy(
      x, w, labels, vocab, local_bias=bias, batch_axis_name=data,
      block_size=BLOCK, **options)


def _log_probs(x, w, bias, labels, where, vocab=None, data=None):
  del data  # Per token: nothing to reduce over the tokens.
  options = dict(temperature=0.7, logit_softcap=4.0, return_entropy=True,
                 ignore_index=IGNORE, where=where)
  if vocab is None:
    return jxent.linear_log_probs(x, w, labels, bias=bias, **options)
  return sharded.linear_log_probs(x, w, labels, vocab, local_bias=bias,
                                  block_size=BLOCK, **options)


def _kl(x, w, bias, q_x, q_w, where, vocab=None, data=None):
  options = dict(temperature=2.0, where=where, reduction="mean")
  if vocab is None:
    return jxent.linear_kl_divergence(x, w, q_x, q_w, p_bias=bias,
                                      **options)
  return sharded.linear_kl_divergence(
      x, w, q_x, q_w, vocab, local_p_bias=bias, block_size=BLOCK,
      batch_axis_name=data, **options)


def _js(x, w, q_x, q_w, q_bias, vocab=None, data=None):
  del data
  options = dict(beta=0.3, logit_softcap=6.0)
  if vocab is None:
    return jxent.linear_js_divergence(x, w, q_x, q_w, q_bias=q_bias,
                                      **options)
  return sharded.linear_js_divergence(x, w, q_x, q_w, vocab,
                                      local_q_bias=q_bias, block_size=BLOCK,
                                      **options)


def _top_k(tail, reduction):
  def fn(top_k_indices, top_k_log_probs, x, w, bias, where, vocab=None,
         data=None):
    options = dict(tail=tail, temperature=1.5, where=where,
                   reduction=reduction)
    if vocab is None:
      return jxent.linear_kl_divergence_from_top_k(
          top_k_indices, top_k_log_probs, x, w, bias=bias, **options)
    return sharded.linear_kl_divergence_from_top_k(
        top_k_indices, top_k_log_probs, x, w, vocab, local_bias=bias,
        block_size=BLOCK, batch_axis_name=data, **options)
  return fn


CASES = {
    "cross_entropy": Case(_cross_entropy, ("x", "w", "bias", "labels"),
                          (0, 1, 2), per_token=False),
    "log_probs": Case(_log_probs, ("x", "w", "bias", "labels", "where"),
                      (0, 1, 2), per_token=True, outputs=2),
    "kl": Case(_kl, ("x", "w", "bias", "q_x", "q_w", "where"),
               (0, 1, 2, 3, 4), per_token=False),
    "js": Case(_js, ("x", "w", "q_x", "q_w", "q_bias"), (0, 1, 2, 3, 4),
               per_token=True),
    "top_k_bin": Case(
        _top_k("bin", "sum"),
        ("top_k_indices", "top_k_log_probs", "x", "w", "bias", "where"),
        (2, 3, 4), per_token=False),
    "top_k_renormalize": Case(
        _top_k("renormalize", "none"),
        ("top_k_indices", "top_k_log_probs", "x", "w", "bias", "where"),
        (2, 3, 4), per_token=True),
}


def _values_and_grads(case: Case, fn: Callable, args, cotangent):
  """Traced: the outputs of `fn(*args)`, and the gradients of one scalar.

  The scalar is the sum of the outputs, each weighted by its row of
  `cotangent` when there is one value per token.
  """
  outputs, vjp = jax.vjp(fn, *args)
  many = case.outputs > 1
  outputs = outputs if many else (outputs,)
  weights = tuple(cotangent[i] if case.per_token else jnp.ones_like(o)
                  for i, o in enumerate(outputs))
  grads = vjp(weights if many else weights[0])
  results = {f"value{i}": o for i, o in enumerate(outputs)}
  for i in case.wrt:
    results[f"grad_{case.args[i]}"] = grads[i]
  return results


def all_cases(arrays: dict[str, jax.Array], wrap=None):
  """Traced: every case, keyed "<case>/<value0|grad_x|...>".

  `wrap(case)` gives the function to run; by default the plain,
  unsharded one.
  """
  results = {}
  for name, case in CASES.items():
    fn = case.fn if wrap is None else wrap(case)
    args = [arrays[a] for a in case.args]
    for key, value in _values_and_grads(case, fn, args,
                                        arrays["cotangent"]).items():
      results[f"{name}/{key}"] = value
  return results


def reference() -> dict[str, np.ndarray]:
  """`all_cases` unsharded, on one device of this process."""
  arrays = {k: jnp.asarray(v) for k, v in make_inputs().items()}
  return jax.tree.map(np.asarray, jax.jit(all_cases)(arrays))


def meshes() -> dict[str, tuple[Mesh, str | None]]:
  """Meshes of the 8 global devices, and the name of their token axis.

  "vocab8" splits the vocabulary 8 ways over both processes. In
  "data2_vocab4" each row of 4 vocabulary shards, and each column of 2
  token shards, holds devices of both processes, so every collective
  crosses them.
  """
  devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
  a, b = devices[:LOCAL_DEVICES], devices[LOCAL_DEVICES:]
  grid = np.array([[a[0], a[1], b[0], b[1]], [b[2], b[3], a[2], a[3]]])
  vocab8 = Mesh(np.array(devices), ("vocab",), axis_types=(AxisType.Auto,))
  mixed = Mesh(grid, ("data", "vocab"), axis_types=(AxisType.Auto,) * 2)
  return dict(zip(MESHES, [(vocab8, None), (mixed, "data")], strict=True))


def _spec(name, data):
  split = _SPLIT.get(name)  # The cotangent is replicated.
  return {"tokens": P(data), "vocab": P(None, "vocab"),
          "classes": P("vocab"), None: P()}[split]


def run_sharded(mesh: Mesh, data: str | None) -> dict[str, np.ndarray]:
  """`all_cases` with the sharded losses on `mesh`, in one program."""
  arrays = {
      k: jax.make_array_from_callback(
          v.shape, NamedSharding(mesh, _spec(k, data)),
          lambda index, v=v: v[index])
      for k, v in make_inputs().items()}

  def wrap(case):
    out = P(data) if case.per_token else P()
    return jax.shard_map(
        lambda *a: case.fn(*a, vocab="vocab", data=data), mesh=mesh,
        in_specs=tuple(_spec(a, data) for a in case.args),
        out_specs=(out,) * case.outputs if case.outputs > 1 else out)

  # Replicated outputs: every process holds each result whole.
  results = jax.jit(lambda a: all_cases(a, wrap),
                    out_shardings=NamedSharding(mesh, P()))(arrays)
  return {k: np.asarray(v.addressable_data(0)) for k, v in results.items()}


def _has_gloo() -> bool:
  """Whether gloo may be here: False only if this jaxlib is known to lack it.

  When it cannot be told, the test runs, and `initialize` or the first
  collective says what is missing.
  """
  try:
    from jax._src.lib import _jax  # The extension gloo is built into.
  except ImportError:
    return True
  return hasattr(_jax, "make_gloo_tcp_collectives")


def main(argv: list[str]) -> int:
  process_id, port, out_dir = int(argv[1]), int(argv[2]), argv[3]
  if not _has_gloo():
    print("this jaxlib has no gloo CPU collectives", file=sys.stderr)
    return SKIP
  # Before any computation: the backend is created with these.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.config.update("jax_num_cpu_devices", LOCAL_DEVICES)
  jax.config.update("jax_numpy_rank_promotion", "raise")
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.distributed.initialize(
      coordinator_address=f"localhost:{port}", num_processes=NUM_PROCESSES,
      process_id=process_id, initialization_timeout=60)
  assert jax.process_count() == NUM_PROCESSES
  assert jax.device_count() == NUM_PROCESSES * LOCAL_DEVICES
  results = {}
  for mesh_name, (mesh, data) in meshes().items():
    for key, value in run_sharded(mesh, data).items():
      results[f"{mesh_name}/{key}"] = value
  path = pathlib.Path(out_dir) / f"process_{process_id}.npz"
  np.savez(path.with_suffix(".tmp.npz"), **results)
  path.with_suffix(".tmp.npz").rename(path)  # Whole, or not at all.
  jax.distributed.shutdown()
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv))
  except Exception:
    traceback.print_exc()
    sys.stderr.flush()
    # Now: jax's exit handler would wait at a barrier for the other process.
    os._exit(1)
