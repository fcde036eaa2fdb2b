"""Compiled memory: no float32 [batch, classes] temporary for 16-bit logits.

Issue 11: under `jit`, the loss and gradient of 16-bit logits must keep no
float32 array of the logits' shape, on any platform, for every
cross-entropy, entropy and KL from logits. XLA's own accounting
(`memory_analysis().temp_size_in_bytes`) is the measure, a control shows
that it sees such a buffer when one exists, and the accelerators' path is
checked on the CPU too, by forcing it (`jxent._numerics.softmax_rows.recompute_everywhere`).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import jxent
from jxent._numerics import softmax_rows

# Large enough that a CPU keeps no float32 copy of 16-bit logits either
# (a copy above softmax_rows.CPU_UPCAST_BYTES); compiled, never run.
BATCH, CLASSES = 512, 8192
FLOAT32_COPY = BATCH * CLASSES * 4
assert FLOAT32_COPY > softmax_rows.CPU_UPCAST_BYTES
# Anything near a float32 copy of the logits is a failure; per-row numbers
# and XLA's small scratch are far below it.
LIMIT = FLOAT32_COPY // 4


def _temp(loss, *args):
  """Temporary bytes of loss and gradient (w.r.t. the first argument)."""
  step = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(loss(*a))))
  return step.lower(*args).compile().memory_analysis().temp_size_in_bytes


def _sharded(fn, n_inputs):
  mesh = jax.make_mesh((1,), ("vocab",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  spec = P(None, "vocab")
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec,) * n_inputs,
                       out_specs=P())


LABELS = jnp.zeros((BATCH,), jnp.int32)
SOFT = jnp.zeros((BATCH, CLASSES), jnp.bfloat16)


def _cases(dtype):
  other = jnp.zeros((BATCH, CLASSES), dtype)
  return {
      "int_ce": lambda x: jxent.softmax_cross_entropy_with_integer_labels(
          x, LABELS, label_smoothing=0.1, z_loss=1e-4),
      "soft_ce": lambda x: jxent.softmax_cross_entropy(
          x, SOFT.astype(dtype), label_smoothing=0.1),
      "entropy": jxent.entropy_from_logits,
      "kl_p": lambda x: jxent.kl_divergence_from_logits(x, other),
      "kl_q": lambda x: jxent.kl_divergence_from_logits(other, x),
      "cross_entropy": lambda x: jxent.cross_entropy_from_logits(other, x),
      "sharded_int_ce": _sharded(
          lambda x: jnp.sum(jxent.sharded.softmax_cross_entropy_with_integer_labels(
              x, LABELS, "vocab", label_smoothing=0.1)), 1),
      "sharded_entropy": _sharded(
          lambda x: jnp.sum(jxent.sharded.entropy_from_logits(x, "vocab")), 1),
  }


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", list(_cases(jnp.bfloat16)))
def test_16_bit_logits_keep_no_float32_copy(name, dtype):
  # 16-bit logits take the recomputing path on every platform.
  logits = jnp.zeros((BATCH, CLASSES), dtype)
  temp = _temp(_cases(dtype)[name], logits)
  assert temp < LIMIT, (name, temp, FLOAT32_COPY)


@pytest.mark.parametrize("name", list(_cases(jnp.float32)))
def test_accelerator_path_keeps_no_float32_copy_of_float32_logits(name):
  # Forced, the path every accelerator takes: recompute, keep per-row
  # numbers only, whatever the dtype.
  logits = jnp.zeros((BATCH, CLASSES), jnp.float32)
  with softmax_rows.recompute_everywhere():
    temp = _temp(_cases(jnp.float32)[name], logits)
  assert temp < LIMIT, (name, temp, FLOAT32_COPY)


@pytest.mark.parametrize("name", ["int_ce", "soft_ce", "entropy", "kl_q"])
def test_cpu_keeps_at_most_one_float32_buffer_for_float32_logits(name):
  # The CPU may keep exp for float32 logits (see jxent._numerics.softmax_rows.keeps_exp):
  # one buffer of the logits' size at most, often none (the gradient takes
  # its place).
  logits = jnp.zeros((BATCH, CLASSES), jnp.float32)
  temp = _temp(_cases(jnp.float32)[name], logits)
  assert temp <= FLOAT32_COPY * 1.05, (name, temp, FLOAT32_COPY)


def test_the_check_can_fail():
  # Controls: the usual recipe (upcast, then optax) keeps float32 arrays of
  # the logits' shape, and the measure sees them.
  logits = jnp.zeros((BATCH, CLASSES), jnp.bfloat16)
  upcast = lambda x: optax.softmax_cross_entropy_with_integer_labels(  # noqa
      x.astype(jnp.float32), LABELS)
  assert _temp(upcast, logits) >= FLOAT32_COPY
  entropy = lambda x: -jnp.sum(  # noqa: E731
      jax.nn.softmax(x.astype(jnp.float32)) * jax.nn.log_softmax(
          x.astype(jnp.float32)), -1)
  assert _temp(entropy, logits) >= FLOAT32_COPY


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_linear_losses_keep_no_logits(dtype):
  tokens, dim, vocab = 256, 64, 32768
  logits_copy = tokens * vocab * 4
  x = jnp.zeros((tokens, dim), dtype)
  w = jnp.zeros((dim, vocab), dtype)
  labels = jnp.zeros((tokens,), jnp.int32)
  mesh = jax.make_mesh((1,), ("vocab",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  sharded = jax.shard_map(
      lambda x, w: jxent.sharded.linear_softmax_cross_entropy(
          x, w, labels, "vocab", label_smoothing=0.1, block_size=1024),
      mesh=mesh, in_specs=(P(), P(None, "vocab")), out_specs=P())
  plain = lambda x, w: jxent.linear_softmax_cross_entropy(  # noqa: E731
      x, w, labels, label_smoothing=0.1, block_size=1024)
  materialised = lambda x, w: jxent.softmax_cross_entropy_with_integer_labels(  # noqa
      jnp.dot(x, w, preferred_element_type=jnp.float32), labels,
      label_smoothing=0.1, reduction="mean")

  def temp(loss):
    step = jax.jit(jax.value_and_grad(loss, (0, 1)))
    return step.lower(x, w).compile().memory_analysis().temp_size_in_bytes

  assert temp(materialised) >= logits_copy  # The check can fail.
  # A few [tokens, block] buffers (and, on a CPU, a float32 copy of a
  # bfloat16 W for XLA's dots), far from the logits.
  for loss in (plain, sharded):
    assert temp(loss) < logits_copy // 2, temp(loss)


BLOCK = 512


def _heads(tokens):
  """The four vocabulary-scale heads, plain and sharded (one device), and
  two materialised peers, as losses of a student (x, w) and a frozen
  teacher (tx, tw)."""
  labels = jnp.zeros((tokens,), jnp.int32)
  indices = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32), (tokens, 8))
  teacher_top = jnp.full((tokens, 8), -3.0, jnp.float32)
  options = {"block_size": BLOCK}

  def heads(module, *axis):
    return {
        "log_probs": lambda x, w, tx, tw: sum(
            jnp.mean(o) for o in module.linear_log_probs(
                x, w, labels, *axis, return_entropy=True, **options)),
        "kl": lambda x, w, tx, tw: jnp.mean(module.linear_kl_divergence(
            tx, tw, x, w, *axis, **options)),
        "js": lambda x, w, tx, tw: jnp.mean(module.linear_js_divergence(
            tx, tw, x, w, *axis, **options)),
        "top_k": lambda x, w, tx, tw: jnp.mean(
            module.linear_kl_divergence_from_top_k(
                indices, teacher_top, x, w, *axis, tail="bin", **options)),
    }

  mesh = jax.make_mesh((1,), ("vocab",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  spec = (P(), P(None, "vocab")) * 2
  sharded = {
      name: jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=P())
      for name, fn in heads(jxent.sharded, "vocab").items()}
  dot = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32)  # noqa: E731
  materialised = {
      "log_probs": lambda x, w, tx, tw: jnp.mean(
          jax.nn.log_softmax(dot(x, w))[:, 0]),
      "kl": lambda x, w, tx, tw: jnp.mean(jxent.kl_divergence_from_logits(
          dot(tx, tw), dot(x, w))),
  }
  return heads(jxent), sharded, materialised


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_vocabulary_scale_heads_keep_no_logits(dtype):
  tokens, dim, vocab = 1024, 64, 32768
  logits_copy = tokens * vocab * 4
  student = (jnp.zeros((tokens, dim), dtype), jnp.zeros((dim, vocab), dtype))
  teacher = (jnp.ones((tokens, dim + 16), dtype),
             jnp.ones((dim + 16, vocab), dtype))

  def temp(loss):
    step = jax.jit(jax.value_and_grad(loss, (0, 1)))
    return step.lower(*student, *teacher).compile().memory_analysis(
        ).temp_size_in_bytes

  plain, sharded, materialised = _heads(tokens)
  for name, loss in materialised.items():
    assert temp(loss) >= logits_copy, name  # The check can fail.
  # A few [tokens, block] float32 buffers, an eighth of the logits at most;
  # for bfloat16 on a CPU, XLA's dots add float32 copies of both W, and the
  # student's dW accumulates in float32.
  limit = min(8 * tokens * BLOCK * 4, logits_copy // 8)
  if dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
    limit += (dim + dim + 16 + dim) * vocab * 4
  # The sharded walk is the same code; float32 is enough to check it.
  checked = [plain] + ([sharded] if dtype == jnp.float32 else [])
  for name in plain:
    for losses in checked:
      assert temp(losses[name]) <= limit, (name, temp(losses[name]), limit)



@pytest.mark.parametrize("shape", [(4096, 1024), (256, 8192)])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_cpu_soft_label_forward_pass_keeps_no_more_than_optax(
    shape, reduction):
  # Without a gradient, the soft-label loss on a CPU reads the logits in
  # fused row sums, as optax's does, and keeps no more than it: no step
  # after them may read the sum of exponentials, or XLA writes the shifted
  # logits out (float32 [batch, classes]) to feed two fusions. (With few
  # rows XLA writes them for optax too.)
  logits = jnp.zeros(shape, jnp.float32)
  labels = jnp.full(shape, 1 / shape[1], jnp.float32)

  def temp(loss):
    return jax.jit(loss).lower(logits, labels).compile().memory_analysis(
        ).temp_size_in_bytes

  ours = temp(lambda x, t: jxent.softmax_cross_entropy(
      x, t, reduction=reduction))
  theirs = temp(lambda x, t: optax.softmax_cross_entropy(x, t).mean()
                if reduction == "mean" else optax.softmax_cross_entropy(x, t))
  assert ours <= theirs + logits.nbytes // 8, (ours, theirs, logits.nbytes)


@pytest.mark.parametrize("name", ["int_ce", "soft_ce"])
def test_small_16_bit_logits_on_a_cpu_take_the_float32_path(name):
  # Where the float32 copy is small, a CPU converts 16-bit logits and keeps
  # exp, which is faster there; the numbers are the same as the no-copy
  # path's, and the gradient keeps the logits' dtype.
  rng = np.random.default_rng(0)
  shape = (64, 1000)
  assert shape[0] * shape[1] * 4 <= softmax_rows.CPU_UPCAST_BYTES
  logits = jnp.asarray(rng.normal(size=shape) * 3, jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, shape[1], shape[0]))
  soft = jnp.asarray(rng.dirichlet(np.ones(shape[1]), shape[0]),
                     jnp.bfloat16)
  loss = {
      "int_ce": lambda x: jxent.softmax_cross_entropy_with_integer_labels(
          x, labels, label_smoothing=0.1),
      "soft_ce": lambda x: jxent.softmax_cross_entropy(x, soft)}[name]
  copy = logits.size * 4
  assert _temp(loss, logits) >= copy
  fast = jax.jit(jax.value_and_grad(lambda x: jnp.sum(loss(x))))(logits)
  with softmax_rows.recompute_everywhere():
    assert _temp(loss, logits) < copy // 4
    lean = jax.jit(jax.value_and_grad(lambda x: jnp.sum(loss(x))))(logits)
  assert fast[1].dtype == jnp.bfloat16
  np.testing.assert_allclose(fast[0], lean[0], rtol=1e-6)
  np.testing.assert_allclose(np.asarray(fast[1], np.float32),
                             np.asarray(lean[1], np.float32), atol=2e-3)


def _loop_bodies(jaxpr):
  """Every loop's (body jaxpr, number of its consts), nested ones too: a
  `fori_loop` with static bounds is a scan."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while":
      yield eqn.params["body_jaxpr"].jaxpr, eqn.params["body_nconsts"]
    if eqn.primitive.name == "scan":
      yield eqn.params["jaxpr"].jaxpr, eqn.params["num_consts"]
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          yield from _loop_bodies(inner)


def _reads_carried(body, nconsts, shape):
  """Whether the loop body slices a carried array of this shape (in it, or
  in a `jit` it calls with that array)."""
  carried = {v for v in body.invars[nconsts:] if v.aval.shape == shape}

  def reads(jaxpr, carried):
    for eqn in jaxpr.eqns:
      # (A literal, which has a `val`, is never carried, nor hashable.)
      operand = eqn.invars[0] if eqn.invars else None
      if (eqn.primitive.name == "dynamic_slice"
          and not hasattr(operand, "val") and operand in carried):
        return True
      inner = eqn.params.get("jaxpr")
      if eqn.primitive.name in ("jit", "pjit") and inner is not None:
        passed = {v for v, a in zip(inner.jaxpr.invars, eqn.invars,
                                    strict=True)
                  if not hasattr(a, "val") and a in carried}
        if passed and reads(inner.jaxpr, passed):
          return True
    return False
  return reads(body, carried)


@pytest.mark.parametrize("head", ["ce", "kl"])
@pytest.mark.parametrize("block", [1024, 1000])
def test_backward_walk_writes_dw_without_reading_it(block, head):
  # A block that divides V writes its columns of dw (and dbias); one that
  # does not leaves a shifted last block, and every block adds to them.
  tokens, dim, vocab = 64, 16, 4096
  x, w = jnp.zeros((tokens, dim)), jnp.zeros((dim, vocab))
  bias = jnp.zeros((vocab,))
  labels = jnp.zeros((tokens,), jnp.int32)
  if head == "ce":
    loss = lambda x, w, bias: jxent.linear_softmax_cross_entropy(  # noqa
        x, w, labels, bias=bias, mode="low_memory", block_size=block)
  else:  # A frozen teacher: the student's dw and dbias are carried.
    teacher = (jnp.ones((tokens, dim)), jnp.ones((dim, vocab)))
    loss = lambda x, w, bias: jxent.linear_kl_divergence(  # noqa
        *teacher, x, w, q_bias=bias, reduction="mean", mode="low_memory",
        block_size=block)
  grad = jax.grad(loss, (0, 1, 2))
  bodies = list(_loop_bodies(jax.make_jaxpr(grad)(x, w, bias).jaxpr))
  # The backward walk carries dw and dbias: the last loop.
  assert len(bodies) == 2, len(bodies)
  for shape in (w.shape, bias.shape):
    reads = [_reads_carried(body, n, shape) for body, n in bodies]
    assert reads == [False, vocab % block != 0], (shape, reads)


@pytest.mark.parametrize("tail, more", [("renormalize", 0), ("bin", 2)])
def test_top_k_fast_mode_keeps_few_chunk_buffers(tail, more):
  # The teacher's probabilities are added into the gradient of the logits
  # in place, and its top k ruled out of the tail in place: no [chunk, V]
  # buffer of their own. The renormalised head then keeps what the
  # cross-entropy keeps; the tail bin two more (its share of the tail).
  tokens, dim, vocab, k, chunk = 512, 32, 8192, 8, 128
  x, w = jnp.zeros((tokens, dim)), jnp.zeros((dim, vocab))
  indices = jnp.zeros((tokens, k), jnp.int32)
  teacher = jnp.zeros((tokens, k))

  def temp(loss, *data):
    step = jax.jit(jax.value_and_grad(loss, (0, 1)))
    return step.lower(x, w, *data).compile().memory_analysis(
        ).temp_size_in_bytes

  top_k = temp(lambda x, w, i, t: jxent.linear_kl_divergence_from_top_k(
      i, t, x, w, tail=tail, reduction="mean", token_chunk=chunk),
               indices, teacher)
  ce = temp(lambda x, w, y: jxent.linear_softmax_cross_entropy(
      x, w, y, token_chunk=chunk), indices[:, 0])
  buffer = chunk * vocab * 4
  assert top_k <= ce + more * buffer + buffer // 8, (top_k - ce) / buffer


def _fusions_reading_the_first_input(loss, *args):
  """How many fused passes of the compiled entry computation read args[0]."""
  text = jax.jit(loss).lower(*args).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  name = re.search(r"(%\S+) = \S+ parameter\(0\)", entry).group(1)
  operand = re.compile(re.escape(name) + r"[,)]")
  return sum(1 for line in entry.splitlines()
             if " fusion(" in line
             and operand.search(line.split(" fusion(", 1)[1]))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's path")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 1024), (BATCH, CLASSES)])
def test_cpu_soft_label_forward_pass_reads_the_logits_once_as_optax(
    shape, dtype):
  # Without a gradient, a CPU first takes the plain sum that optax takes,
  # which XLA fuses with the max and the sum of exponentials into one pass
  # over the logits; the careful sum runs only for a batch where the plain
  # one gives NaN (tests/test_classification.py checks those batches).
  # Before, the max was a pass of its own, and 16-bit logits above the
  # upcast limit took several slower passes.
  logits = jnp.zeros(shape, dtype)
  labels = jnp.full(shape, 1 / shape[1], dtype)
  ours = _fusions_reading_the_first_input(jxent.softmax_cross_entropy,
                                          logits, labels)
  theirs = _fusions_reading_the_first_input(optax.softmax_cross_entropy,
                                            logits, labels)
  assert ours <= theirs, (ours, theirs)


def _arrays_written(loss, *args):
  """How many fused passes of a compiled loss and gradient write an array
  of the first input's shape (float32)."""
  step = jax.jit(jax.value_and_grad(lambda *a: jnp.sum(loss(*a))))
  text = step.lower(*args).compile().as_text()
  entry = text[text.index("\nENTRY"):]
  shape = re.escape("f32[" + ",".join(map(str, args[0].shape)) + "]")
  return sum(1 for line in entry.splitlines()
             if re.search(r"= " + shape + r"\{[^}]*\} fusion\(", line))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's path")
@pytest.mark.parametrize("shape", [(4096, 1024), (256, 8192)])
def test_cpu_soft_label_loss_and_gradient_write_no_more_than_optax(shape):
  # With a gradient, float32 logits on a CPU: the kept exp and the gradient
  # are the only arrays of the logits' shape written. The target mass and
  # dot product are plain sums first (their selects, taken only for a batch
  # where the plain sums are not finite, made XLA write two more arrays).
  logits = jnp.zeros(shape, jnp.float32)
  labels = jnp.full(shape, 1 / shape[1], jnp.float32)
  ours = _arrays_written(jxent.softmax_cross_entropy, logits, labels)
  theirs = _arrays_written(optax.softmax_cross_entropy, logits, labels)
  assert ours <= 2 <= theirs, (ours, theirs)
