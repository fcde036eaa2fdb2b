"""Tests for the vocabulary-parallel losses in jxent.sharded.

They need 8 CPU devices, which conftest.py asks for (`jax_num_cpu_devices`).
Each sharded loss is run inside `jax.shard_map` on meshes (8,), (2, 4) and
(4, 2) (batch axis "data" x vocabulary axis "vocab") and compared, in value
and gradient, with the unsharded jxent function on the full arrays.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jxent
from jxent import sharded

RTOL, ATOL = 2e-5, 2e-6
MESHES = [(1, 8), (2, 4), (4, 2)]  # (data, vocab); (1, 8) is the (8,) mesh.
BATCH, VOCAB, DIM = 8, 32, 6

pytestmark = pytest.mark.skipif(
    len(jax.devices()) < 8, reason="needs 8 devices (see conftest.py)")


def _mesh(shape):
  if shape[0] == 1:
    return jax.make_mesh((shape[1],), ("vocab",), axis_types=(AxisType.Auto,))
  return jax.make_mesh(shape, ("data", "vocab"),
                       axis_types=(AxisType.Auto,) * 2)


def _data_axis(mesh):
  return "data" if "data" in mesh.axis_names else None


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected),
                             rtol=RTOL, atol=ATOL)


def _logits(rng, vocab=VOCAB, scale=3.0):
  return jnp.asarray(scale * rng.normal(size=(BATCH, vocab)), jnp.float32)


def _labels(rng, vocab=VOCAB):
  return jnp.asarray(rng.integers(0, vocab, size=BATCH), jnp.int32)


def _check(sharded_fn, reference, args, argnums):
  """Compares values, then gradients of the summed output."""
  _close(jax.jit(sharded_fn)(*args), reference(*args))
  total = lambda fn: lambda *a: jnp.sum(fn(*a))  # noqa: E731
  got = jax.jit(jax.grad(total(sharded_fn), argnums))(*args)
  want = jax.grad(total(reference), argnums)(*args)
  for g, w in zip(got, want, strict=True):
    _close(g, w)


# --- integer labels ---------------------------------------------------------

OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-2},
    {"ignore_index": -100, "label_smoothing": 0.2, "z_loss": 1e-3},
]


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize(("options", "reduction"), [
    *((o, "mean") for o in OPTIONS), (OPTIONS[-1], "none"),
    (OPTIONS[-1], "sum")])
def test_integer_labels_match_unsharded(rng, shape, options, reduction):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  logits, labels = _logits(rng), _labels(rng)
  if "ignore_index" in options:
    labels = labels.at[::3].set(-100)

  def local(z, y):
    return sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", reduction=reduction, batch_axis_name=data, **options)

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(data, "vocab"), P(data)),
                     out_specs=P(data) if reduction == "none" else P())
  ref = lambda z, y: jxent.softmax_cross_entropy_with_integer_labels(  # noqa: E731
      z, y, reduction=reduction, **options)
  _check(fn, ref, (logits, labels), (0,))


@pytest.mark.parametrize("shape", MESHES[1:])
def test_integer_labels_sum_without_batch_axis_is_per_shard(rng, shape):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  logits, labels = _logits(rng), _labels(rng)

  def local(z, y):
    out = sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", reduction="sum")
    return out[None]

  per_shard = jax.jit(jax.shard_map(local, mesh=mesh,
                                    in_specs=(P(data, "vocab"), P(data)),
                                    out_specs=P(data)))(logits, labels)
  rows = jxent.softmax_cross_entropy_with_integer_labels(logits, labels)
  _close(per_shard, rows.reshape(shape[0], -1).sum(axis=1))


def test_integer_labels_with_where_and_masked_logits_match(rng):
  mesh = _mesh((2, 4))
  logits = _logits(rng).at[:, 5].set(-jnp.inf).at[0, :].set(-jnp.inf)
  labels = _labels(rng).at[1].set(7)
  where = jnp.asarray(rng.random((BATCH, VOCAB)) > 0.2).at[1, 7].set(True)
  options = {"label_smoothing": 0.1, "reduction": "mean"}

  def local(z, y, m):
    return sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", m, batch_axis_name="data", **options)

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(P("data", "vocab"), P("data"),
                               P("data", "vocab")), out_specs=P())
  ref = lambda z, y, m: jxent.softmax_cross_entropy_with_integer_labels(  # noqa: E731
      z, y, where=m, **options)
  # Rows with an unmasked label only; others give +inf in both.
  ok = where[jnp.arange(BATCH), labels] & (logits[jnp.arange(BATCH), labels]
                                           > -jnp.inf)
  labels = jnp.where(ok, labels, jnp.argmax(where, axis=1).astype(jnp.int32))
  _check(fn, ref, (logits, labels, where), (0,))


def test_out_of_range_label_gives_nan(rng):
  mesh = _mesh((1, 8))
  labels = _labels(rng).at[2].set(VOCAB)
  fn = jax.shard_map(
      lambda z, y: sharded.softmax_cross_entropy_with_integer_labels(
          z, y, "vocab"),
      mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P())
  out = np.asarray(fn(_logits(rng), labels))
  assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()


# --- soft labels, entropy, KL ----------------------------------------------


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize(
    "options", [{}, {"label_smoothing": 0.1, "z_loss": 1e-2}])
def test_soft_labels_match_unsharded(rng, shape, options):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  logits = _logits(rng).at[:, 3].set(-jnp.inf)
  labels = jnp.asarray(rng.dirichlet(np.ones(VOCAB), size=BATCH), jnp.float32)
  labels = labels.at[:, 3].set(0.0)

  def local(z, y):
    return sharded.softmax_cross_entropy(
        z, y, "vocab", reduction="mean", batch_axis_name=data, **options)

  spec = P(data, "vocab")
  fn = jax.shard_map(local, mesh=mesh, in_specs=(spec, spec), out_specs=P())
  ref = lambda z, y: jxent.softmax_cross_entropy(  # noqa: E731
      z, y, reduction="mean", **options)
  # Both arguments, the labels' gradient at the -inf logit included (0 in
  # both, issue 11; it was 0 here and +inf unsharded).
  _check(fn, ref, (logits, labels), (0, 1))
  assert np.all(np.asarray(jax.jit(jax.grad(fn, 1))(logits, labels)[:, 3])
                == 0)


@pytest.mark.parametrize("shape", MESHES)
def test_entropy_matches_unsharded(rng, shape):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  logits = _logits(rng).at[:, ::5].set(-jnp.inf)
  fn = jax.shard_map(lambda z: sharded.entropy_from_logits(z, "vocab"),
                     mesh=mesh, in_specs=P(data, "vocab"), out_specs=P(data))
  _check(fn, jxent.entropy_from_logits, (logits,), (0,))


@pytest.mark.parametrize("shape", MESHES)
def test_kl_matches_unsharded(rng, shape):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  p_logits = _logits(rng).at[:, ::7].set(-jnp.inf)
  q_logits = _logits(rng)
  spec = P(data, "vocab")
  fn = jax.shard_map(
      lambda p, q: sharded.kl_divergence_from_logits(p, q, "vocab"),
      mesh=mesh, in_specs=(spec, spec), out_specs=P(data))
  _check(fn, jxent.kl_divergence_from_logits, (p_logits, q_logits), (0, 1))


# --- linear -----------------------------------------------------------------


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("options", [
    {},
    {"ignore_index": -1, "label_smoothing": 0.1, "z_loss": 1e-3,
     "logit_softcap": 5.0},
])
def test_linear_matches_unsharded(rng, shape, options):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  x = jnp.asarray(rng.normal(size=(BATCH, DIM)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(DIM, VOCAB)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=VOCAB), jnp.float32)
  labels = _labels(rng)
  if "ignore_index" in options:
    labels = labels.at[::4].set(-1)

  def local(x, w, b, y):
    return sharded.linear_softmax_cross_entropy(
        x, w, y, "vocab", local_bias=b, batch_axis_name=data, **options)

  fn = jax.shard_map(
      local, mesh=mesh,
      in_specs=(P(data, None), P(None, "vocab"), P("vocab"), P(data)),
      out_specs=P())
  ref = lambda x, w, b, y: jxent.linear_softmax_cross_entropy(  # noqa: E731
      x, w, y, bias=b, **options)
  _check(fn, ref, (x, w, bias, labels), (0, 1, 2))


# --- a vocabulary that does not split evenly --------------------------------


def test_non_divisible_vocab_is_refused_by_shard_map(rng):
  mesh = _mesh((2, 4))
  fn = jax.shard_map(
      lambda z, y: sharded.softmax_cross_entropy_with_integer_labels(
          z, y, "vocab"),
      mesh=mesh, in_specs=(P("data", "vocab"), P("data")), out_specs=P("data"))
  with pytest.raises(ValueError, match="divisible|divide|evenly"):
    fn(_logits(rng, vocab=13), _labels(rng, vocab=13))


@pytest.mark.parametrize("shape", MESHES)
def test_pad_vocab_gives_the_unpadded_loss(rng, shape):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  vocab = 13
  logits, labels = _logits(rng, vocab), _labels(rng, vocab)
  options = {"label_smoothing": 0.1, "z_loss": 1e-2, "reduction": "mean"}

  def local(z, y):
    return sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", batch_axis_name=data, **options)

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(data, "vocab"), P(data)),
                     out_specs=P())
  padded_fn = lambda z, y: fn(sharded.pad_vocab(z, shape[1]), y)  # noqa: E731
  ref = lambda z, y: jxent.softmax_cross_entropy_with_integer_labels(  # noqa: E731
      z, y, **options)
  _check(padded_fn, ref, (logits, labels), (0,))


def test_pad_vocab_shapes_and_fill():
  z = jnp.zeros((2, 13))
  assert sharded.pad_vocab(z, 4).shape == (2, 16)
  assert sharded.pad_vocab(z, 13) is z or sharded.pad_vocab(z, 13).shape == (
      2, 13)
  w = sharded.pad_vocab(jnp.ones((3, 5)), 4, value=0.0)
  assert w.shape == (3, 8) and float(w[:, 5:].sum()) == 0.0
  assert bool(jnp.all(sharded.pad_vocab(z, 8)[:, 13:] == -jnp.inf))
  with pytest.raises(ValueError, match="multiple"):
    sharded.pad_vocab(z, 0)


def test_linear_with_padded_w_and_vocab_size(rng):
  mesh = _mesh((2, 4))
  vocab = 13
  x = jnp.asarray(rng.normal(size=(BATCH, DIM)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(DIM, vocab)), jnp.float32)
  labels = _labels(rng, vocab)
  options = {"label_smoothing": 0.1, "z_loss": 1e-3}

  def local(x, w, y):
    return sharded.linear_softmax_cross_entropy(
        x, w, y, "vocab", vocab_size=vocab, batch_axis_name="data", **options)

  fn = jax.shard_map(local, mesh=mesh,
                     in_specs=(P("data", None), P(None, "vocab"), P("data")),
                     out_specs=P())
  padded_fn = lambda x, w, y: fn(x, sharded.pad_vocab(w, 4, value=0.0), y)  # noqa: E731
  ref = lambda x, w, y: jxent.linear_softmax_cross_entropy(  # noqa: E731
      x, w, y, **options)
  _check(padded_fn, ref, (x, w, labels), (0, 1))


def test_linear_vocab_size_larger_than_padded_raises(rng):
  mesh = _mesh((1, 8))
  fn = jax.shard_map(
      lambda x, w, y: sharded.linear_softmax_cross_entropy(
          x, w, y, "vocab", vocab_size=VOCAB + 1),
      mesh=mesh, in_specs=(P(), P(None, "vocab"), P()), out_specs=P())
  with pytest.raises(ValueError, match="vocab_size"):
    fn(jnp.ones((BATCH, DIM)), jnp.ones((DIM, VOCAB)), _labels(rng))


# --- compiled programs: no all-gather of the vocabulary ---------------------

BIG_VOCAB = 1024  # Large enough that a full-vocabulary shape stands out.


def _compiled_text(fn, *args):
  return jax.jit(fn).lower(*args).compile().as_text()


def _assert_vocab_stays_split(hlo):
  # All-gathers of per-row partial sums ([rows, shards], for a reduction
  # XLA partitions that way) are fine; one as wide as a vocabulary shard
  # (1024 / 4 columns) or wider is not.
  for line in hlo.splitlines():
    if "all-gather(" in line:
      shape = line.split("=")[1].split("{")[0].split("[")[1].rstrip("]")
      assert max(int(d) for d in shape.split(",")) < BIG_VOCAB // 4, line
  assert "all-reduce" in hlo  # The program really is partitioned.
  # No buffer spans the full vocabulary: each device holds 1024 / 4 columns.
  assert f",{BIG_VOCAB}]" not in hlo and f"[{BIG_VOCAB}]" not in hlo


@pytest.mark.parametrize("options", [
    {}, {"label_smoothing": 0.1, "z_loss": 1e-3, "ignore_index": -100}])
def test_gspmd_jit_of_unsharded_loss_does_not_all_gather(options):
  # Plain jit with the logits' vocabulary axis sharded: GSPMD partitions the
  # ordinary function (its custom VJP included) with all-reduces only.
  mesh = _mesh((2, 4))
  logits = jax.device_put(jnp.zeros((BATCH, BIG_VOCAB)),
                          NamedSharding(mesh, P("data", "vocab")))
  labels = jax.device_put(jnp.zeros((BATCH,), jnp.int32),
                          NamedSharding(mesh, P("data")))

  def loss(z, y):
    return jxent.softmax_cross_entropy_with_integer_labels(
        z, y, reduction="mean", **options)

  _assert_vocab_stays_split(_compiled_text(loss, logits, labels))
  _assert_vocab_stays_split(_compiled_text(jax.grad(loss), logits, labels))


def test_shard_map_losses_do_not_all_gather():
  mesh = _mesh((2, 4))
  logits = jnp.zeros((BATCH, BIG_VOCAB))
  labels = jnp.zeros((BATCH,), jnp.int32)
  x, w = jnp.zeros((BATCH, DIM)), jnp.zeros((DIM, BIG_VOCAB))

  def integer(z, y):
    return sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", label_smoothing=0.1, z_loss=1e-3, reduction="mean",
        batch_axis_name="data")

  def linear(x, w, y):
    return sharded.linear_softmax_cross_entropy(
        x, w, y, "vocab", label_smoothing=0.1, batch_axis_name="data")

  integer = jax.shard_map(integer, mesh=mesh,
                          in_specs=(P("data", "vocab"), P("data")),
                          out_specs=P())
  linear = jax.shard_map(linear, mesh=mesh,
                         in_specs=(P("data", None), P(None, "vocab"),
                                   P("data")), out_specs=P())
  for hlo in (
      _compiled_text(integer, logits, labels),
      _compiled_text(jax.grad(integer), logits, labels),
      _compiled_text(linear, x, w, labels),
      _compiled_text(jax.grad(linear, (0, 1)), x, w, labels),
  ):
    _assert_vocab_stays_split(hlo)


# --- regressions of the core second pass (issue 11) -------------------------


@pytest.mark.parametrize("shape", MESHES)
def test_class_weights_match_unsharded(rng, shape):
  mesh = _mesh(shape)
  data = _data_axis(mesh)
  logits = _logits(rng)
  labels = _labels(rng).at[0].set(-100)
  soft = jnp.asarray(rng.dirichlet(np.ones(VOCAB), size=BATCH), jnp.float32)
  weights = jnp.asarray(rng.uniform(0.5, 2.0, VOCAB), jnp.float32)
  options = dict(class_weights=weights, label_smoothing=0.1,
                 reduction="mean")

  def integer(z, y):
    return sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", ignore_index=-100, batch_axis_name=data, **options)

  def soft_local(z, t):
    return sharded.softmax_cross_entropy(z, t, "vocab", batch_axis_name=data,
                                         **options)

  spec = P(data, "vocab")
  fn = jax.shard_map(integer, mesh=mesh, in_specs=(spec, P(data)),
                     out_specs=P())
  _check(fn, lambda z, y: jxent.softmax_cross_entropy_with_integer_labels(
      z, y, ignore_index=-100, **options), (logits, labels), (0,))
  fn = jax.shard_map(soft_local, mesh=mesh, in_specs=(spec, spec),
                     out_specs=P())
  _check(fn, lambda z, t: jxent.softmax_cross_entropy(z, t, **options),
         (logits, soft), (0, 1))


def test_forward_mode_matches_unsharded(rng):
  mesh = _mesh((2, 4))
  logits, labels = _logits(rng), _labels(rng)
  tangent = jnp.asarray(rng.normal(size=logits.shape), jnp.float32)

  def local(z, y):
    return sharded.softmax_cross_entropy_with_integer_labels(
        z, y, "vocab", label_smoothing=0.1, z_loss=1e-3)

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P("data", "vocab"),
                                                  P("data")),
                     out_specs=P("data"))
  ref = lambda z: jxent.softmax_cross_entropy_with_integer_labels(  # noqa
      z, labels, label_smoothing=0.1, z_loss=1e-3)
  got = jax.jit(lambda z, t: jax.jvp(lambda z: fn(z, labels), (z,), (t,)))(
      logits, tangent)
  want = jax.jvp(ref, (logits,), (tangent,))
  for g, w in zip(got, want, strict=True):
    _close(g, w)


def test_nan_logit_on_one_shard_makes_the_row_nan(rng):
  mesh = _mesh((1, 8))
  logits = _logits(rng).at[2, 30].set(jnp.nan)
  labels = _labels(rng)
  fn = jax.jit(jax.shard_map(
      lambda z, y: sharded.softmax_cross_entropy_with_integer_labels(
          z, y, "vocab"),
      mesh=mesh, in_specs=(P(None, "vocab"), P()), out_specs=P()))
  out = np.asarray(fn(logits, labels))
  assert np.isnan(out[2]) and np.isfinite(np.delete(out, 2)).all()


# --- vocabulary-scale heads: log-probabilities, KL, JS, top-k ---------------

HEAD_OPTIONS = [
    {"block_size": 3},  # Does not divide any device's columns.
    {"temperature": 0.7, "logit_softcap": 4.0, "block_size": 5,
     "where": np.arange(BATCH) % 3 != 1},
]


def _head(rng, dim, vocab):
  x = jnp.asarray(rng.normal(size=(BATCH, dim)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(dim, vocab)), jnp.float32)
  b = jnp.asarray(rng.normal(size=vocab), jnp.float32)
  return x, w, b


def _heads_problem(rng, name, vocab):
  """Arguments, which of them to differentiate, and their PartitionSpecs,
  for the sharded (`sharded.NAME`) and unsharded (`jxent.NAME`) calls."""
  if name == "linear_log_probs":
    x, w, b = _head(rng, DIM, vocab)
    return (x, w, b, _labels(rng, vocab)), (0, 1, 2), "xwby"
  if name in ("linear_kl_divergence", "linear_js_divergence"):
    return (*_head(rng, DIM, vocab), *_head(rng, DIM + 3, vocab)), (
        0, 1, 2, 3, 4, 5), "xwbxwb"
  k = 4
  indices = np.stack([rng.choice(vocab, k, replace=False)
                      for _ in range(BATCH)])
  teacher = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(BATCH, vocab))))
  top = jnp.take_along_axis(teacher, jnp.asarray(indices), axis=1)
  return (jnp.asarray(indices, jnp.int32), top.astype(jnp.float32),
          *_head(rng, DIM, vocab)), (2, 3, 4), "ktxwb"


def _head_call(name, args, axis=None, **options):
  """Calls jxent.NAME (axis None) or sharded.NAME on `args` by their roles."""
  fn = getattr(sharded if axis else jxent, name)
  bias = "local_bias" if axis else "bias"
  extra = (axis,) if axis else ()
  if name == "linear_log_probs":
    x, w, b, y = args
    return fn(x, w, y, *extra, **{bias: b}, return_entropy=True,
              return_lse=True, return_argmax=True, **options)
  if name == "linear_kl_divergence_from_top_k":
    k, t, x, w, b = args
    return fn(k, t, x, w, *extra, tail="bin", **{bias: b}, **options)
  px, pw, pb, qx, qw, qb = args
  return fn(px, pw, qx, qw, *extra, **{"local_p_bias" if axis else "p_bias": pb,
                                       "local_q_bias" if axis else "q_bias": qb},
            **options)


def _check_heads(name, args, argnums, roles, mesh, options, pad_to=None,
                 vocab_size=None):
  data = _data_axis(mesh)
  spec = {"x": P(data, None), "w": P(None, "vocab"), "b": P("vocab"),
          "y": P(data), "k": P(data, None), "t": P(data, None)}
  out = (P(data),) * 4 if name == "linear_log_probs" else P(data)
  where = options.pop("where", None)
  in_specs = tuple(spec[r] for r in roles)
  if where is not None:
    in_specs += (P(data),)
    args += (jnp.asarray(where),)

  def local(*a):
    extra = {"where": a[-1]} if where is not None else {}
    a = a[:-1] if where is not None else a
    return _head_call(name, a, axis="vocab", vocab_size=vocab_size,
                      **options, **extra)

  def reference(*a):
    extra = {"where": a[-1]} if where is not None else {}
    a = a[:-1] if where is not None else a
    if pad_to is not None:  # The reference sees the unpadded columns.
      a = tuple(v[..., :pad_to] if r in "wb" else v
                for v, r in zip(a, roles, strict=True))
    return _head_call(name, a, **options, **extra)

  fn = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out)
  total = lambda f: lambda *a: sum(  # noqa: E731
      jnp.sum(o) for o in jax.tree.leaves(f(*a))
      if jnp.issubdtype(o.dtype, jnp.floating))  # Not the argmax.
  for got, want in zip(jax.tree.leaves(jax.jit(fn)(*args)),
                       jax.tree.leaves(reference(*args)), strict=True):
    _close(got, want)
  got = jax.jit(jax.grad(total(fn), argnums))(*args)
  want = jax.grad(total(reference), argnums)(*args)
  for g, w in zip(got, want, strict=True):
    if pad_to is not None and g.shape != w.shape:
      g = g[..., :pad_to]
    _close(g, w)


HEADS = ["linear_log_probs", "linear_kl_divergence", "linear_js_divergence",
         "linear_kl_divergence_from_top_k"]


@pytest.mark.parametrize("name", HEADS)
@pytest.mark.parametrize(("shape", "options"), [
    ((1, 8), HEAD_OPTIONS[0]), ((4, 2), HEAD_OPTIONS[0]),
    ((2, 4), HEAD_OPTIONS[1])])
def test_heads_match_unsharded(rng, shape, name, options):
  args, argnums, roles = _heads_problem(rng, name, VOCAB)
  _check_heads(name, args, argnums, roles, _mesh(shape), dict(options))


@pytest.mark.parametrize("name", HEADS)
def test_heads_with_padded_w_and_vocab_size(rng, name):
  vocab, n = 13, 4
  args, argnums, roles = _heads_problem(rng, name, vocab)
  # Zero columns, zero bias: only vocab_size keeps them out of the softmax.
  padded = tuple(sharded.pad_vocab(v, n, value=0.0) if r in "wb" else v
                 for v, r in zip(args, roles, strict=True))
  _check_heads(name, padded, argnums, roles, _mesh((2, n)),
               {"block_size": 3}, pad_to=vocab, vocab_size=vocab)


@pytest.mark.parametrize("name", HEADS)
def test_heads_vocab_size_larger_than_padded_raises(rng, name):
  args, _, roles = _heads_problem(rng, name, VOCAB)
  spec = {"x": P(), "w": P(None, "vocab"), "b": P("vocab"), "y": P(),
          "k": P(), "t": P()}
  out = (P(), P()) if name == "linear_log_probs" else P()
  fn = jax.shard_map(
      lambda *a: _head_call(name, a, axis="vocab", vocab_size=VOCAB + 1),
      mesh=_mesh((1, 8)), in_specs=tuple(spec[r] for r in roles),
      out_specs=out)
  with pytest.raises(ValueError, match="vocab_size"):
    fn(*args)


def test_top_k_with_a_temperature_is_finite_on_every_shard():
  # Logits divided by a temperature may be recomputed a hair above the max
  # they gave (another XLA fusion, another rounding): the sum's split at
  # the max once counted such a term as -7e22 ties, and the KL was NaN.
  import multihost_worker as worker  # the two-process test's inputs

  inputs = {k: jnp.asarray(v) for k, v in worker.make_inputs().items()}
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("vocab",))

  def local(w, bias):
    return sharded.linear_kl_divergence_from_top_k(
        inputs["top_k_indices"], inputs["top_k_log_probs"], inputs["x"], w,
        "vocab", local_bias=bias, block_size=8, tail="bin", temperature=1.5)

  got = jax.shard_map(local, mesh=mesh, in_specs=(P(None, "vocab"),
                                                  P("vocab")),
                      out_specs=P())(inputs["w"], inputs["bias"])
  want = jxent.linear_kl_divergence_from_top_k(
      inputs["top_k_indices"], inputs["top_k_log_probs"], inputs["x"],
      inputs["w"], bias=inputs["bias"], tail="bin", temperature=1.5)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
