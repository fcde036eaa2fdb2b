"""Tests for the kernel implementations, on a CPU: interpret mode, lowering.

Every implementation registered in `jxent._cross_entropy.api.KERNELS` must
compute what the XLA path computes. In Pallas' interpret mode the kernels
run here and are compared with it, option by option, on shapes that
exercise partial tiles. Interpret mode accepts things Triton refuses (say,
a tile that is not a power of two), so every configuration dispatch can
pick is also lowered for its platform with `jax.export`, which runs the
Triton lowering without a GPU. The default implementation chooses per
platform when it is lowered: the tests export it for CUDA, CPU, TPU and
CPU with CUDA together.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jxent
from jxent._cross_entropy import api
from jxent._cross_entropy import triton as _kernels
from jxent._numerics import softmax_rows

KERNELS = sorted(api.KERNELS)

int_ce = jxent.softmax_cross_entropy_with_integer_labels
soft_ce = jxent.softmax_cross_entropy

TOL = {jnp.float32: (2e-5, 2e-6), jnp.bfloat16: (1e-2, 1e-3),
       jnp.float16: (2e-3, 1e-4)}


@contextlib.contextmanager
def _as_on_a_gpu(**config):
  """The kernels in interpret mode, on the path a GPU traces: the default
  path's backward then runs the backward kernel too (a CPU's float32 path
  keeps exp for XLA's)."""
  with api.kernels_anywhere(interpret=True, **config), (
      softmax_rows.recompute_everywhere()):
    yield


def _problem(rng, rows, classes, dtype):
  x = rng.normal(size=(rows, classes)) * 3
  if rows >= 3:
    x[1, classes // 2] = np.nan          # A NaN row,
    x[1, 0] = -np.inf                    # whose -inf class stays NaN too.
    x[2, : classes // 2] = -np.inf       # Half the classes impossible.
  if rows >= 4:
    x[3] = -np.inf                       # An empty row.
  labels = rng.integers(0, classes, size=rows)
  if rows >= 5:
    labels[4] = -100                     # An ignored row.
  if rows >= 3:
    labels[2] = classes - 1              # A valid class of row 2.
  soft = rng.dirichlet(np.ones(classes), size=rows)
  weights = rng.uniform(0.5, 2.0, classes)
  mask = rng.uniform(size=(rows, classes)) > 0.2
  return (jnp.asarray(x, dtype), jnp.asarray(labels),
          jnp.asarray(soft, jnp.float32), jnp.asarray(weights, jnp.float32),
          jnp.asarray(mask))


OPTIONS = {
    "plain": dict(),
    "smoothing": dict(label_smoothing=0.1),
    "z_loss": dict(z_loss=1e-2),
    "weights": dict(class_weights=True, label_smoothing=0.2),
    "where": dict(where=True, label_smoothing=0.1),
    "everything": dict(class_weights=True, where=True, label_smoothing=0.1,
                       z_loss=1e-3),
}


def _kwargs(options, weights, mask):
  kw = dict(options)
  if kw.pop("class_weights", False):
    kw["class_weights"] = weights
  if kw.pop("where", False):
    kw["where"] = mask
  return kw


def _row_weights(value):
  return jnp.linspace(0.5, 2.0, value.size).reshape(value.shape)


def _loss_and_grads(loss, x, labels):
  """Per-row losses, and gradients of their weighted sum over finite rows
  (a cotangent that differs from row to row).

  Under jit: an interpreted kernel run op by op is slow to test.
  """
  value = jax.jit(loss)(x, labels)
  weights = _row_weights(value)
  total = lambda x, y: jnp.sum(  # noqa: E731
      weights * jnp.where(jnp.isnan(value), 0, loss(x, y)))
  argnums = (0,) if jnp.issubdtype(labels.dtype, jnp.integer) else (0, 1)
  grads = jax.jit(jax.grad(total, argnums))(x, labels)
  return value, grads


def _compare(got, want, dtype):
  rtol, atol = TOL[dtype]
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(g, np.float32),
                               np.asarray(w, np.float32), rtol=rtol,
                               atol=atol)


@pytest.mark.parametrize("implementation, splits",
                         [(None, 1), (None, 2), *((k, 1) for k in KERNELS)])
@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("kind", ["integer", "soft"])
def test_kernels_match_the_xla_path(rng, implementation, options, kind,
                                    splits):
  # 5 rows of 300 classes in tiles of 128: two full tiles and a partial one,
  # walked by one program per row, or by two (two tiles, then the partial
  # one and a tile past the row). The forward kernel is the same for every
  # implementation: the splits run once.
  x, labels, soft, weights, mask = _problem(rng, 5, 300, jnp.float32)
  kw = _kwargs(OPTIONS[options], weights, mask)
  if kind == "integer":
    kw["ignore_index"] = -100
    target, fn = labels, int_ce
  else:
    target, fn = soft, soft_ce
  want = _loss_and_grads(lambda x, t: fn(x, t, implementation="xla", **kw),
                         x, target)
  with _as_on_a_gpu(block=128, splits=splits):
    got = _loss_and_grads(
        lambda x, t: fn(x, t, implementation=implementation, **kw), x,
        target)
  _compare(got, want, jnp.float32)
  # The edge rows are what they are on the XLA path: NaN, finite, empty.
  assert np.isnan(got[0][1]) and got[0][3] == 0


@pytest.mark.parametrize("implementation", KERNELS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("shape", [(1, 7), (3, 1000), (4, 64)])
def test_kernels_on_every_dtype_and_awkward_shapes(rng, implementation,
                                                   dtype, shape):
  # One row; a tiny class count; a width that is not a multiple of the tile;
  # one that is.
  x, labels, soft, weights, mask = _problem(rng, *shape, dtype)
  labels = jnp.abs(labels) % shape[1]
  kw = dict(label_smoothing=0.1, z_loss=1e-3)
  for fn, target in ((int_ce, labels), (soft_ce, soft.astype(dtype))):
    want = _loss_and_grads(
        lambda x, t, fn=fn: fn(x, t, implementation="xla", **kw), x, target)
    with _as_on_a_gpu(block=256):
      got = _loss_and_grads(
          lambda x, t, fn=fn: fn(x, t, implementation=implementation,
                                 **kw), x, target)
    _compare(got, want, dtype)
    assert got[1][0].dtype == dtype


@pytest.mark.parametrize("options", ["plain", "everything"])
@pytest.mark.parametrize("kind", ["integer", "soft"])
def test_lane_sums_match_the_xla_path(rng, options, kind):
  # The forward kernel's running sums kept per lane and added once after
  # the loop: the same numbers as the XLA path, edge rows included.
  x, labels, soft, weights, mask = _problem(rng, 5, 300, jnp.float32)
  kw = _kwargs(OPTIONS[options], weights, mask)
  fn, target = (int_ce, labels) if kind == "integer" else (soft_ce, soft)
  if kind == "integer":
    kw["ignore_index"] = -100
  want = _loss_and_grads(lambda x, t: fn(x, t, implementation="xla", **kw),
                         x, target)
  with _as_on_a_gpu(block=128, lane_sums=True):
    got = _loss_and_grads(lambda x, t: fn(x, t, implementation="triton",
                                          **kw), x, target)
  _compare(got, want, jnp.float32)
  assert np.isnan(got[0][1]) and got[0][3] == 0


def test_split_rows_match_the_xla_path_at_ties_jumps_and_empty_splits(rng):
  # Few rows: the forward kernel splits each (by default, `splits_for`)
  # and combines the splits' sums. A max shared by two splits (its ties
  # stay ties), a max that jumps in the last split, a split that is all
  # -inf or masked, a +inf logit, a NaN: each as the XLA path gives it.
  x = rng.normal(size=(6, 200)) * 3
  x[0, [5, 150]] = 9.0               # The max in two splits.
  x[1, -1] = 40.0                    # A jump in the last split.
  x[2, :100] = -np.inf               # The first splits empty.
  x[3, 60] = np.inf
  x[4, 7] = np.nan
  mask = np.ones((6, 200), bool)
  mask[5, 100:] = False              # The last splits masked.
  x, mask = jnp.asarray(x, jnp.float32), jnp.asarray(mask)
  labels = jnp.array([150, 199, 120, 60, 3, 50])
  soft = jnp.asarray(rng.dirichlet(np.ones(200), size=6), jnp.float32)
  from jxent._cross_entropy.triton import config
  assert config.splits_for(6, 200 // 8) > 1
  for fn, target in ((int_ce, labels), (soft_ce, soft)):
    kw = dict(where=mask, label_smoothing=0.1)
    want = _loss_and_grads(
        lambda x, t, fn=fn: fn(x, t, implementation="xla", **kw), x, target)
    with _as_on_a_gpu(block=8):
      got = _loss_and_grads(lambda x, t, fn=fn: fn(x, t, **kw), x, target)
    _compare(got, want, jnp.float32)
    # (Soft labels with mass on row 2's impossible classes: an inf loss.)
    finite = [0, 1, 2, 5] if fn is int_ce else [0, 1, 5]
    loss = np.asarray(got[0])
    assert np.isnan(loss[4]) and np.isfinite(loss[finite]).all()


def test_splits_per_row_follow_the_number_of_rows():
  from jxent._cross_entropy.triton.config import (
      MIN_PROGRAMS,
      MIN_SPLIT_TILES,
      splits_for,
  )
  assert splits_for(MIN_PROGRAMS, 64) == 1       # Enough rows: one each.
  assert splits_for(8192, 64) == 1
  assert splits_for(1, 64) == 64 // MIN_SPLIT_TILES
  assert splits_for(8, 64) == MIN_PROGRAMS // 8  # Enough programs in all.
  assert splits_for(8, 3) == 1                   # Too few tiles to split.
  for rows in (1, 3, 100, 255):
    for tiles in (1, 2, 7, 64, 1000):
      splits = splits_for(rows, tiles)
      assert 1 <= splits <= max(1, tiles // MIN_SPLIT_TILES)
  with pytest.raises(ValueError, match="splits"):
    _kernels.KernelConfig(splits=0)


def _runs_a_loop(fn, *args) -> bool:
  """Whether fn's CPU program has a loop: an interpreted kernel walking its
  tiles. The XLA path has none."""
  return "stablehlo.while" in jax.jit(fn).lower(*args).as_text()


def test_the_default_keeps_every_differentiation_mode(rng):
  # With the forward kernel inside the custom JVP, forward mode and second
  # derivatives still work (their tangents are the XLA reference's).
  x, labels, _, _, _ = _problem(rng, 2, 50, jnp.float32)
  labels = jnp.abs(labels) % 50
  x = jnp.nan_to_num(x, posinf=0.0, neginf=-5.0)
  tangent = jnp.ones_like(x)
  loss = lambda x: int_ce(x, labels, label_smoothing=0.1)  # noqa: E731
  xla = lambda x: int_ce(x, labels, label_smoothing=0.1,  # noqa: E731
                         implementation="xla")
  # Under jit: an interpreted kernel run op by op is slow to test.
  jvp = jax.jit(lambda f, x, t: jax.jvp(f, (x,), (t,)), static_argnums=0)
  hessian = jax.jit(lambda f, x: jax.hessian(lambda x: jnp.sum(f(x)))(x),
                    static_argnums=0)
  want = jvp(xla, x, tangent)
  want_hessian = hessian(xla, x)
  with _as_on_a_gpu(block=16):
    got = jvp(loss, x, tangent)
    got_hessian = hessian(loss, x)
    assert _runs_a_loop(loss, x)
  assert not _runs_a_loop(xla, x)
  _compare(got, want, jnp.float32)
  _compare(got_hessian, want_hessian, jnp.float32)


def test_the_default_under_vmap_runs_the_kernel(rng):
  x, labels, _, _, _ = _problem(rng, 6, 40, jnp.float32)
  x = jnp.nan_to_num(x, posinf=0.0, neginf=-5.0).reshape(2, 3, 40)
  labels = (jnp.abs(labels) % 40).reshape(2, 3)
  per_batch = jax.vmap(lambda x, y: int_ce(x, y, reduction="mean"))
  want = jax.vmap(lambda x, y: int_ce(x, y, reduction="mean",
                                      implementation="xla"))(x, labels)
  with _as_on_a_gpu(block=16):
    got = per_batch(x, labels)
    assert _runs_a_loop(per_batch, x, labels)
  _compare(got, want, jnp.float32)


@pytest.mark.parametrize("implementation", KERNELS)
def test_a_kernel_that_cannot_run_is_a_clear_error(implementation):
  x, labels = jnp.zeros((2, 8)), jnp.zeros((2,), jnp.int32)
  device = api.KERNELS[implementation].device
  with pytest.raises(ValueError, match=f"needs {device}.*cpu"):
    int_ce(x, labels, implementation=implementation)
  with pytest.raises(ValueError, match="implementation"):
    int_ce(x, labels, implementation="pallas")  # The old name.
  with jax.enable_x64(True), api.kernels_anywhere(
      interpret=True), pytest.raises(ValueError, match="float64"):
    int_ce(x.astype(jnp.float64), labels, implementation=implementation)


def test_a_computation_on_a_cpu_device_runs_xla():
  # The kernels are on for CUDA only (in interpret mode, so that running
  # them anywhere would succeed): inputs committed to a CPU device run XLA,
  # and the same function lowered for CUDA carries the kernel.
  cpu = jax.devices("cpu")[0]
  x = jax.device_put(jnp.linspace(-3, 3, 2 * 40).reshape(2, 40), cpu)
  labels = jax.device_put(jnp.array([3, 39]), cpu)
  fn = lambda x, y: int_ce(x, y, reduction="mean")  # noqa: E731
  with _as_on_a_gpu(platforms=(), block=16):
    value = jax.jit(fn)(x, labels)
    assert not _runs_a_loop(fn, x, labels)
    cuda = jax.export.export(jax.jit(fn), platforms=["cuda"])(x, labels)
    assert "stablehlo.while" in cuda.mlir_module()
  np.testing.assert_allclose(value, fn(x, labels), rtol=1e-6)
  assert value.devices() == {cpu}


@pytest.fixture
def untuned(tmp_path, monkeypatch):
  """The kernels' configurations as if no sweep had been committed."""
  from jxent._cross_entropy.triton import config
  monkeypatch.setattr(config, "_TUNED_FILE", tmp_path / "absent.json")
  monkeypatch.delenv("JXENT_KERNEL_CONFIGS", raising=False)
  config.tuned.cache_clear()
  yield
  config.tuned.cache_clear()


def test_the_committed_tuned_configurations_load_and_are_used():
  from jxent._cross_entropy.triton import config
  config.tuned.cache_clear()
  table = config.tuned()
  assert table, "jxent/_kernels/tuned.json is missing or empty"
  for (kind, bucket, dtype, kernel), tuned in table.items():
    assert kind and kernel in config.KERNELS and bucket & (bucket - 1) == 0
    assert _kernels.default_config(bucket, jnp.dtype(dtype), kernel,
                                   device_kind=kind) == tuned
    # Another kind of device (this CPU, exporting for CUDA) takes it too.
    assert _kernels.default_config(bucket, jnp.dtype(dtype), kernel) == tuned


def test_tile_widths_must_be_powers_of_two(untuned):
  with pytest.raises(ValueError, match="power of two"):
    _kernels.KernelConfig(block=1000)
  assert _kernels.default_config(262144, jnp.bfloat16).block == 4096
  assert _kernels.default_config(100, jnp.float32).block == 128


def test_configs_tuned_by_the_sweep_are_used(tmp_path, monkeypatch, untuned):
  from jxent._cross_entropy.triton import config
  table = {"best": [{"bucket": 32768, "dtype": "bfloat16",
                     "kernel": "logits_gradient", "block": 8192,
                     "num_warps": 16, "num_stages": 3}]}
  path = tmp_path / "sweep.json"
  path.write_text(__import__("json").dumps(table))
  monkeypatch.setenv("JXENT_KERNEL_CONFIGS", str(path))
  tuned = _kernels.default_config(32000, jnp.bfloat16, "logits_gradient")
  assert (tuned.block, tuned.num_warps, tuned.num_stages) == (8192, 16, 3)
  # Other kernels, dtypes and buckets keep the defaults.
  assert _kernels.default_config(32000, jnp.bfloat16, "row_stats").block == 4096
  assert _kernels.default_config(70000, jnp.bfloat16,
                                 "logits_gradient").num_warps == 8
  config.tuned.cache_clear()
  assert _kernels.default_config(262144, jnp.bfloat16).block == 4096
  assert _kernels.default_config(100, jnp.float32).block == 128


def test_tuned_configs_are_keyed_by_device_kind(tmp_path, monkeypatch,
                                                untuned):
  # Each kind of GPU takes its own sweep's entry; a kind that has none takes
  # another kind's; the file's device_kind applies to entries without one.
  entry = {"bucket": 32768, "dtype": "bfloat16", "kernel": "row_stats",
           "num_stages": 2}
  table = {"device_kind": "NVIDIA H100 80GB HBM3", "best": [
      {**entry, "block": 8192, "num_warps": 16},
      {**entry, "device_kind": "NVIDIA H200", "block": 32768,
       "num_warps": 32, "lane_sums": True}]}
  path = tmp_path / "sweep.json"
  path.write_text(__import__("json").dumps(table))
  monkeypatch.setenv("JXENT_KERNEL_CONFIGS", str(path))

  def chosen(kind):
    c = _kernels.default_config(30000, jnp.bfloat16, device_kind=kind)
    return c.block, c.num_warps, c.lane_sums

  assert chosen("NVIDIA H200") == (32768, 32, True)
  assert chosen("NVIDIA H100 80GB HBM3") == (8192, 16, False)
  assert chosen("NVIDIA B200") in {(8192, 16, False), (32768, 32, True)}


# --- lowering for CUDA, without a GPU --------------------------------------

TRITON = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
TRITON_CALL = "__gpu$xla.gpu.triton"
BENCH_SHAPES = [(8192, 32768), (8192, 131072), (8192, 262144)]


def _lower_for(platforms, fn, *args):
  exported = jax.export.export(jax.jit(fn), platforms=platforms,
                               disabled_checks=[TRITON])(*args)
  return exported.mlir_module()


def _steps(implementation, grad):
  """The integer- and soft-label losses, alone or with their gradient."""
  def int_loss(x, y):
    return int_ce(x, y, label_smoothing=0.1, reduction="mean",
                  implementation=implementation)

  def soft_loss(x, t):
    return soft_ce(x, t, label_smoothing=0.1, reduction="mean",
                   implementation=implementation)

  if not grad:
    return int_loss, soft_loss
  return (lambda x, y: jax.value_and_grad(int_loss)(x, y),
          lambda x, t: jax.value_and_grad(soft_loss, (0, 1))(x, t))


def _bench_inputs(shape):
  rows, _ = shape
  return ((jax.ShapeDtypeStruct(shape, jnp.bfloat16),
           jax.ShapeDtypeStruct((rows,), jnp.int32)),
          (jax.ShapeDtypeStruct(shape, jnp.bfloat16),
           jax.ShapeDtypeStruct(shape, jnp.bfloat16)))


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("shape", [BENCH_SHAPES[0], BENCH_SHAPES[-1]])
def test_the_default_is_chosen_per_platform_when_lowered(shape, grad):
  # No test override: the default as users trace it, on this CPU machine.
  for step, args in zip(_steps(None, grad), _bench_inputs(shape),
                        strict=True):
    # The forward kernel, and with the gradient the backward one too.
    calls = 2 if grad else 1
    assert _lower_for(["cuda"], step, *args).count(TRITON_CALL) == calls
    for platforms in (["cpu"], ["tpu"]):
      assert TRITON_CALL not in _lower_for(platforms, step, *args)
    both = jax.export.export(jax.jit(step), platforms=["cpu", "cuda"],
                             disabled_checks=[TRITON])(*args)
    assert both.platforms == ("cpu", "cuda")
    assert both.mlir_module().count(TRITON_CALL) == calls


def test_a_cpu_and_cuda_export_runs_xla_on_the_cpu(rng):
  x, labels, _, _, _ = _problem(rng, 4, 64, jnp.float32)
  x = jnp.nan_to_num(x, posinf=0.0, neginf=-5.0)
  labels = jnp.abs(labels) % 64
  step = lambda x, y: jax.value_and_grad(  # noqa: E731
      lambda x: int_ce(x, y, reduction="mean"))(x)
  exported = jax.export.export(jax.jit(step), platforms=["cpu", "cuda"],
                               disabled_checks=[TRITON])(x, labels)
  _compare(exported.call(x, labels), step(x, labels), jnp.float32)


@pytest.mark.parametrize("implementation", [None, *KERNELS])
@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_every_dispatched_kernel_lowers_for_cuda(shape, implementation):
  with api.kernels_anywhere(interpret=False):
    for step, args in zip(_steps(implementation, True), _bench_inputs(shape),
                          strict=True):
      # Triton's custom call twice: both passes, the default's included.
      assert _lower_for(["cuda"], step, *args).count(TRITON_CALL) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_split_rows_lower_for_cuda(dtype):
  # Eight rows of 262144 classes: the forward kernel splits each row.
  shape = (8, 262144)
  for step, args in zip(_steps("triton", True), _bench_inputs(shape),
                        strict=True):
    args = tuple(jax.ShapeDtypeStruct(a.shape, dtype)
                 if a.dtype == jnp.bfloat16 else a for a in args)
    with api.kernels_anywhere(interpret=False), (
        softmax_rows.recompute_everywhere()):
      assert _lower_for(["cuda"], step, *args).count(TRITON_CALL) == 2


@pytest.mark.parametrize("rows, calls", [(64, 0), (256, 2)])
def test_the_default_leaves_few_rows_to_xla(rows, calls):
  # Below `min_rows` (256) the default path runs XLA on a GPU too (the
  # kernels measured slower there); an explicit implementation still runs
  # them.
  assert api.KERNELS["triton"].min_rows == 256
  logits = jax.ShapeDtypeStruct((rows, 32768), jnp.bfloat16)
  for step, args in zip(_steps(None, True), _bench_inputs(logits.shape),
                        strict=True):
    assert _lower_for(["cuda"], step, *args).count(TRITON_CALL) == calls

  def entropy_step(p):
    return jax.value_and_grad(
        lambda p: jnp.mean(jxent.entropy_from_logits(p)))(p)

  def kl_step(p, q):
    return jax.value_and_grad(lambda q: jnp.mean(
        jxent.kl_divergence_from_logits(p, q)))(q)

  assert _lower_for(["cuda"], entropy_step, logits).count(
      TRITON_CALL) == calls
  assert _lower_for(["cuda"], kl_step, logits, logits).count(
      TRITON_CALL) == calls


@pytest.mark.parametrize("shape", BENCH_SHAPES)
def test_lane_sums_lower_for_cuda(shape):
  # Per-lane running sums are loop-carried vectors: Triton takes them.
  with api.kernels_anywhere(interpret=False, lane_sums=True):
    for step, args in zip(_steps(None, False), _bench_inputs(shape),
                          strict=True):
      assert _lower_for(["cuda"], step, *args).count(TRITON_CALL) == 1


@pytest.mark.parametrize("implementation", KERNELS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
def test_kernels_lower_for_cuda_in_other_dtypes_and_with_options(
    implementation, dtype):
  shape = (256, 50257)  # GPT-2's vocabulary: no power of two.
  logits = jax.ShapeDtypeStruct(shape, dtype)
  labels = jax.ShapeDtypeStruct((256,), jnp.int32)
  mask = jax.ShapeDtypeStruct(shape, jnp.bool_)
  weights = jax.ShapeDtypeStruct((shape[1],), jnp.float32)

  def step(x, y, m, w):
    return jax.grad(lambda x: int_ce(
        x, y, where=m, class_weights=w, ignore_index=-1, z_loss=1e-4,
        reduction="mean", implementation=implementation))(x)

  with api.kernels_anywhere(interpret=False):
    assert TRITON_CALL in _lower_for(["cuda"], step, logits, labels, mask,
                                     weights)


# --- the entropy, KL and cross-entropy of logits ----------------------------

INFORMATION = {
    "entropy": lambda p, q, **kw: jxent.entropy_from_logits(p, **kw),
    "kl": lambda p, q, **kw: jxent.kl_divergence_from_logits(p, q, **kw),
    "kl_reversed": lambda p, q, **kw: jxent.kl_divergence_from_logits(
        q, p, **kw),
    "cross_entropy": lambda p, q, **kw: jxent.cross_entropy_from_logits(
        p, q, **kw),
}


def _pair_problem(rng, rows, classes, dtype):
  """P's logits (NaN, half -inf and empty rows) and Q's, whose maxima sit
  in late tiles and jump (so the rebasing of every running sum is used),
  with a class that Q rules out and P does not."""
  p, _, _, _, mask = _problem(rng, rows, classes, dtype)
  q = rng.normal(size=(rows, classes)) * 2
  q[:, -3:] += np.arange(rows)[:, None] * 4.0  # Late, growing maxima.
  q[0, 1] = -np.inf
  return p, jnp.asarray(q, dtype), mask


def _information_values_and_grads(fn, p, q, mask):
  value = jax.jit(lambda p, q: fn(p, q, where=mask))(p, q)
  weights = _row_weights(value)
  total = lambda p, q: jnp.sum(weights * jnp.where(  # noqa: E731
      jnp.isfinite(value), fn(p, q, where=mask), 0))
  return value, jax.jit(jax.grad(total, (0, 1)))(p, q)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("kind", list(INFORMATION))
def test_information_kernels_match_the_xla_path(rng, kind, masked, dtype):
  p, q, mask = _pair_problem(rng, 6, 37, dtype)
  mask = mask if masked else None
  fn = INFORMATION[kind]
  want = _information_values_and_grads(fn, p, q, mask)
  with _as_on_a_gpu(block=8):
    # The kernel runs (not XLA's branch), over several tiles a row.
    assert _runs_a_loop(lambda p, q: fn(p, q, where=mask), p, q)
    got = _information_values_and_grads(fn, p, q, mask)
  _compare(got, want, dtype)


def _extreme_rows(rng, rows, classes):
  """Logits at every scale up to the float limit, with -inf, jumping maxima
  (exp's range and the float range both exceeded between tiles)."""
  scales = 10.0 ** rng.uniform(0, 38.4, size=(rows, 1))
  z = np.clip(rng.normal(size=(rows, classes)) * scales, -3.3e38, 3.3e38)
  z[rng.uniform(size=z.shape) < 0.1] = -np.inf
  z[0] = [-3e38] * 8 + [3e38] + [0.0] * (classes - 9)
  return z


@pytest.mark.parametrize("kind", list(INFORMATION))
def test_information_kernels_match_the_xla_path_at_the_float_limits(rng,
                                                                    kind):
  # The running sums rebase through jumps past exp's range (an old scale of
  # 0, where an infinite old term must not make 0 * inf = NaN), and P's
  # mass on a class that Q rules out counts (inf) only if it survives the
  # final shift, as on the XLA path, whatever the tiles' order.
  rows, classes = 64, 16
  p = _extreme_rows(rng, rows, classes)
  q = _extreme_rows(rng, rows, classes)
  q[1:, 0] = -np.inf
  p[1] = 0.0
  p[1, 12] = 200.0
  p[2], q[2] = p[1, ::-1], q[1, ::-1]
  p, q = jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32)
  fn = INFORMATION[kind]
  want = jax.jit(lambda p, q: fn(p, q))(p, q)
  with _as_on_a_gpu(block=8):
    got = jax.jit(lambda p, q: fn(p, q))(p, q)
  np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
  np.testing.assert_array_equal(np.isinf(got), np.isinf(want))
  finite = np.isfinite(want)
  np.testing.assert_allclose(np.asarray(got)[finite],
                             np.asarray(want)[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["entropy", "kl"])
def test_information_kernels_keep_second_derivatives_and_vmap(rng, kind):
  # The kernels give the numbers; every derivative is the XLA path's.
  p, q, _ = _pair_problem(rng, 6, 37, jnp.float32)
  p, q = jnp.nan_to_num(p, neginf=-9.0), jnp.nan_to_num(q, neginf=-9.0)
  fn = INFORMATION[kind]

  def steps():
    # New functions each time: jit's cache does not see the override.
    def hvp(p, q):
      grad = jax.grad(lambda p: jnp.sum(fn(p, q)))
      return jax.jvp(grad, (p,), (jnp.ones_like(p),))[1]
    return hvp, jax.vmap(lambda p, q: fn(p, q))

  want = tuple(jax.jit(step)(p, q) for step in steps())
  with _as_on_a_gpu(block=8):
    assert all(_runs_a_loop(step, p, q) for step in steps())
    got = tuple(jax.jit(step)(p, q) for step in steps())
  _compare(got, want, jnp.float32)


def test_information_kernels_keep_tiny_values_near_certainty(rng):
  # The kernels sum the terms at the max apart, as the Triton cross-entropy
  # does: a tiny entropy, KL and cross-entropy keep their digits against
  # float64 (Q: P with its top class 2 nats surer).
  rows, classes = 4, 40
  top = [3, 17, 29, 39]
  zp = -rng.uniform(25, 30, size=(rows, classes))
  zp[np.arange(rows), top] = 0.0
  zq = zp.copy()
  zq[np.arange(rows), top] = 2.0

  def log_softmax64(z):
    return z - np.log(np.sum(np.exp(z), -1, keepdims=True))

  log_p, log_q = log_softmax64(zp), log_softmax64(zq)
  entropy = -np.sum(np.exp(log_p) * log_p, -1)
  kl = np.sum(np.exp(log_p) * (log_p - log_q), -1)
  p32, q32 = jnp.asarray(zp, jnp.float32), jnp.asarray(zq, jnp.float32)
  with _as_on_a_gpu(block=8):
    got = jax.jit(lambda p, q: (
        jxent.entropy_from_logits(p), jxent.kl_divergence_from_logits(p, q),
        jxent.cross_entropy_from_logits(p, q)))(p32, q32)
  for value, want in zip(got, (entropy, kl, entropy + kl), strict=True):
    assert want.max() < 1e-8
    np.testing.assert_allclose(value, want, rtol=1e-3)


@pytest.mark.parametrize("implementation", [None, *KERNELS])
def test_a_batch_of_no_rows_runs_no_kernel(implementation):
  # No rows, no programs: the losses of an empty batch are empty (or 0),
  # as on the XLA path, on the default path and the kernels' alike.
  x, labels = jnp.zeros((0, 40)), jnp.zeros((0,), jnp.int32)
  with _as_on_a_gpu(block=8):
    outs = jax.jit(lambda x, y: (
        int_ce(x, y, implementation=implementation),
        int_ce(x, y, reduction="mean", implementation=implementation),
        jxent.entropy_from_logits(x, implementation=implementation),
        jxent.kl_divergence_from_logits(x, x,
                                        implementation=implementation)))(
            x, labels)
  assert [o.shape for o in outs] == [(0,), (), (0,), (0,)]
  assert float(outs[1]) == 0.0


@pytest.mark.parametrize("shape", [BENCH_SHAPES[0], BENCH_SHAPES[1],
                                   (256, 50257)])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_information_kernels_lower_for_cuda(shape, dtype):
  # The default path, as users trace it: on CUDA, the forward kernel and a
  # backward kernel per differentiated side; none for a CPU or a TPU.
  logits = jax.ShapeDtypeStruct(shape, dtype)
  mask = jax.ShapeDtypeStruct(shape, jnp.bool_)

  def entropy_step(p, q, m):
    return jax.value_and_grad(
        lambda p: jnp.mean(jxent.entropy_from_logits(p, where=m)))(p)

  def kl_step(p, q, m):
    return jax.value_and_grad(lambda p, q: jnp.mean(
        jxent.kl_divergence_from_logits(p, q, where=m)), (0, 1))(p, q)

  def cross_entropy_step(p, q, m):
    return jax.value_and_grad(lambda q: jnp.mean(
        jxent.cross_entropy_from_logits(p, q)))(q)

  def cross_entropy_forward(p, q, m):
    return jxent.cross_entropy_from_logits(p, q)

  for step, calls in ((entropy_step, 2), (kl_step, 3),
                      (cross_entropy_step, 2), (cross_entropy_forward, 1)):
    args = (logits, logits, mask)
    # Traced as on a GPU: traced here, float32 keeps a CPU's exp for XLA.
    with softmax_rows.recompute_everywhere():
      assert _lower_for(["cuda"], step, *args).count(TRITON_CALL) == calls
    for platforms in (["cpu"], ["tpu"]):
      assert TRITON_CALL not in _lower_for(platforms, step, *args)


@pytest.mark.parametrize("kind", list(INFORMATION))
def test_information_implementations_are_chosen_or_refused_clearly(rng, kind):
  p, q, _ = _pair_problem(rng, 4, 24, jnp.float32)
  fn = INFORMATION[kind]
  # "xla" never runs the kernel, even where the default would.
  with _as_on_a_gpu(block=8):
    assert not _runs_a_loop(
        lambda p, q: fn(p, q, implementation="xla"), p, q)
    assert _runs_a_loop(
        lambda p, q: fn(p, q, implementation="triton"), p, q)
  # Without an NVIDIA GPU, "triton" says why; an unknown name is refused.
  with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
    fn(p, q, implementation="triton")
  with pytest.raises(ValueError, match="`implementation` must be None"):
    fn(p, q, implementation="pallas")


def test_eager_calls_compile_nothing_new(caplog):
  # Un-jitted, the per-platform choice runs its platform's branch op by op:
  # a second call compiles nothing (a jit of the branches' fresh closures
  # compiled them again on every call, some 100 times slower).
  x, labels = jnp.ones((4, 50)), jnp.zeros((4,), jnp.int32)
  calls = (lambda: jxent.entropy_from_logits(x),
           lambda: jxent.kl_divergence_from_logits(x, 2 * x),
           lambda: int_ce(x, labels))
  for call in calls:
    jax.block_until_ready(call())
  with jax.log_compiles(True), caplog.at_level("DEBUG", logger="jax"):
    for call in calls:
      jax.block_until_ready(call())
  assert not [r for r in caplog.records if "ompil" in r.getMessage()]


def test_a_cpu_and_cuda_export_of_the_information_functions_runs_xla(rng):
  # One export carries both: the kernels for CUDA, XLA for the CPU, where
  # it runs and matches the jitted function (values and gradients). (256
  # rows: the default leaves fewer to XLA.)
  p, q, _ = _pair_problem(rng, 256, 64, jnp.float32)
  p, q = jnp.nan_to_num(p, neginf=-9.0), jnp.nan_to_num(q, neginf=-9.0)

  def step(p, q):
    return jax.value_and_grad(lambda p, q: jnp.mean(
        jxent.kl_divergence_from_logits(p, q)
        + jxent.cross_entropy_from_logits(q, p)
        + jxent.entropy_from_logits(q)), (0, 1))(p, q)

  exported = jax.export.export(jax.jit(step), platforms=["cpu", "cuda"],
                               disabled_checks=[TRITON])(p, q)
  assert exported.mlir_module().count(TRITON_CALL) == 3
  _compare(exported.call(p, q), jax.jit(step)(p, q), jnp.float32)


# --- the default path's backward kernels, in every differentiation mode -----

DIFFERENTIATED = {
    "int_ce": lambda x, y: int_ce(x, y[0], label_smoothing=0.1, **y[1]),
    "soft_ce": lambda x, y: soft_ce(x, y[2], z_loss=1e-3, **y[1]),
    # (kl_reversed and cross_entropy run kl's code with the sides swapped
    # or another per-class term, which the tests above compare; the suite's
    # time goes elsewhere.)
    **{k: (lambda x, y, fn=fn: fn(x, y[3], **y[1]))
       for k, fn in INFORMATION.items() if k in ("entropy", "kl")},
}


def _modes(loss):
  """Every way JAX differentiates, each of a scalar of the loss's rows."""
  def total(x):
    value = loss(x)
    return jnp.sum(jnp.linspace(0.5, 2.0, value.size) * value.ravel())

  def transposed(x):
    _, linear = jax.linearize(total, x)
    return jax.linear_transpose(linear, x)(1.0)[0]

  # (jacrev is the vmap of grad's transpose, which "vmap" runs.)
  return {
      "grad": jax.grad(jax.checkpoint(total)),
      "transposed": transposed,
      "jacfwd": jax.jacfwd(loss),
      "hessian": jax.hessian(total),
      "hessian_rev": jax.jacrev(jax.grad(total)),
      "vmap": lambda x: jax.vmap(jax.grad(total), in_axes=1, out_axes=1)(
          jnp.stack([x, 2 * x], axis=1)),
  }


@pytest.mark.parametrize("name", list(DIFFERENTIATED))
def test_the_backward_kernels_keep_every_differentiation_mode(rng, name):
  # The reverse-mode gradient comes from the backward kernel; every other
  # derivative (forward mode, second order, through the per-row numbers)
  # is XLA's. Each mode gives what the XLA path gives, with a mask.
  x, labels, soft, _, mask = _problem(rng, 3, 20, jnp.float32)
  x = jnp.nan_to_num(x, neginf=-9.0)
  q = jnp.asarray(rng.normal(size=(3, 20)), jnp.float32)
  kw = dict(where=mask)
  target = (jnp.abs(labels) % 20, kw, soft, q)
  fn = DIFFERENTIATED[name]

  def run(implementation):
    # New functions each time: jit's cache does not see the override.
    modes = _modes(lambda x: fn(x, (*target[:1], dict(
        kw, implementation=implementation), *target[2:])))
    return {mode: jax.jit(f)(x) for mode, f in modes.items()}

  want = run("xla")
  with _as_on_a_gpu(block=8):
    got = run(None)
  for mode in want:
    _compare(got[mode], want[mode], jnp.float32)
