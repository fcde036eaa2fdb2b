"""The benchmark suites, their inputs and the implementations compared.

A *suite* is one loss: softmax cross-entropy with integer labels (``ce_int``)
or soft labels (``ce_soft``), entropy from logits (``entropy``) or
KL divergence from logits (``kl``). Each suite has several *implementations*:
jxent, its peers as users call them, and a naive ``jax.numpy`` formula.
A *case* is one suite, implementation, mode (``fwd`` or ``vjp``), dtype and
(rows, classes) shape.

Every implementation takes ``(x, *extra)`` and returns the per-row loss,
where ``x`` is the model's logits of shape ``(rows, classes)`` (the argument
``vjp`` differentiates) and ``extra`` is what the suite adds: integer labels
of shape ``(rows,)``, soft labels of the shape of ``x``, or for ``kl`` the
data distribution's logits ``p`` (the loss is ``D_KL(P || Q)`` with ``Q`` the
model's ``softmax(x)``, as in distillation).
"""

import dataclasses
import functools
import importlib
import os
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

SUITES = ("ce_int", "ce_soft", "entropy", "kl")
IMPLS = ("jxent", "optax", "optax_f32", "jax_nn", "jax_nn_f32", "naive", "torch")
MODES = ("fwd", "vjp")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Logits are LOGIT_SCALE * standard normal: the naive formulas cannot overflow
# and the softmax is neither uniform nor one-hot.
LOGIT_SCALE = 2.0

# The peer each suite's jxent is compared with first, as users run it, and the
# same after the usual upcast to float32. Entropy has no optax loss, so its
# peer is what users write with jax.nn.
BASELINE = {
    "ce_int": ("optax", "optax_f32"),
    "ce_soft": ("optax", "optax_f32"),
    "entropy": ("jax_nn", "jax_nn_f32"),
    "kl": ("optax", "optax_f32"),
}

# Relative tolerances for agreement with jxent, as a fraction of the largest
# |value| jxent gives (at least 1 for losses). Keyed by (dtype, whether the
# implementation accumulates in float32). A bfloat16 gradient computed in
# float32 may still differ by one bfloat16 step (2**-8 relative) where the
# rounding goes the other way. bfloat16 arithmetic rounds log-probabilities of
# about -10 to steps of 1/16, so such implementations are a few percent off;
# the loose bound still catches NaNs and wrong formulas.
LOSS_RTOL = {
    ("float32", True): 1e-5,
    ("bfloat16", True): 1e-5,
    ("bfloat16", False): 5e-2,
}
GRAD_RTOL = {
    ("float32", True): 1e-4,
    ("bfloat16", True): 1e-2,
    ("bfloat16", False): 1e-1,
}


# Default (rows, classes) grids. The CPU grid sweeps classes at 512 rows (the
# plot's x axis) and adds 4096 rows; at most 16M elements (64 MB in float32),
# well beyond the caches, so that it runs in a few minutes on two cores.
QUICK_SHAPES = ((256, 2048),)
CPU_SHAPES = (
    (512, 1024),
    (512, 4096),
    (512, 16384),
    (512, 32768),
    (4096, 1024),
    (4096, 4096),
)
GPU_SHAPES = {
    "ce_int": ((8192, 32768), (8192, 131072), (8192, 262144)),
    "ce_soft": ((8192, 32768), (8192, 131072)),
    "entropy": ((8192, 32768), (8192, 131072)),
    "kl": ((8192, 32768), (8192, 131072)),
}


@dataclasses.dataclass(frozen=True)
class Impl:
  """One implementation of a suite's loss.

  Attributes:
    name: Short name used in tables (``jxent``, ``optax``, ``optax_f32``...).
    fn: ``fn(x, *extra)`` returning the per-row loss, over jax arrays for the
      ``jax`` backend and over torch tensors for ``torch``.
    code: The user code it stands for, one line.
    backend: ``"jax"`` or ``"torch"``.
    upcasts: True if it converts its inputs to float32 first; such an
      implementation is skipped for float32 inputs, where it is the same as
      the one without the upcast.
  """

  name: str
  fn: Callable
  code: str
  backend: str = "jax"
  upcasts: bool = False

  def accumulates_f32(self, dtype: str) -> bool:
    """Whether its arithmetic is float32 for inputs of `dtype`."""
    return self.upcasts or self.name == "jxent" or dtype == "float32"


def import_jxent():
  """Imports jxent.

  Returns:
    ``(module, None)``, or ``(None, message)`` when the import fails, so the
    harness still runs (without jxent rows) while the library is broken.
  """
  try:
    return importlib.import_module("jxent"), None
  except Exception as e:  # any failure: report it, run the peers
    return None, f"{type(e).__name__}: {e}"


def import_torch():
  """Imports torch if it is installed; torch is optional.

  Unless the environment already says otherwise, torch's OpenMP threads are
  told to sleep rather than spin while idle (``OMP_WAIT_POLICY=PASSIVE``):
  on a small CPU, spinning torch threads and JAX's own thread pool slow each
  other down about tenfold. This must happen before torch is first imported.

  Returns:
    The torch module, or None.
  """
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  try:
    torch = importlib.import_module("torch")
    importlib.import_module("torch.nn.functional")
  except Exception:  # absent or broken: torch rows are skipped silently
    return None
  return torch


def _f32(*arrays):
  return tuple(a.astype(jnp.float32) for a in arrays)


def _naive_log_softmax(x):
  # The textbook formula: no max shift, arithmetic in the input dtype.
  return x - jnp.log(jnp.sum(jnp.exp(x), axis=-1, keepdims=True))


# ce_int: x (rows, classes), labels (rows,) int32.
def _ce_int_optax(x, labels):
  return optax.losses.softmax_cross_entropy_with_integer_labels(x, labels)


def _ce_int_optax_f32(x, labels):
  return _ce_int_optax(x.astype(jnp.float32), labels)


def _ce_int_naive(x, labels):
  logp = _naive_log_softmax(x)
  return -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]


# ce_soft: x and labels both (rows, classes).
def _ce_soft_optax(x, labels):
  return optax.losses.softmax_cross_entropy(x, labels)


def _ce_soft_optax_f32(x, labels):
  return _ce_soft_optax(*_f32(x, labels))


def _ce_soft_naive(x, labels):
  return -jnp.sum(labels * _naive_log_softmax(x), axis=-1)


# entropy: x only.
def _entropy_jax_nn(x):
  return -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), axis=-1)


def _entropy_jax_nn_f32(x):
  return _entropy_jax_nn(x.astype(jnp.float32))


def _entropy_naive(x):
  logp = _naive_log_softmax(x)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


# kl: x = q logits (the model, differentiated), p = the data's logits.
def _kl_optax(x, p):
  return optax.losses.kl_divergence(jax.nn.log_softmax(x), jax.nn.softmax(p))


def _kl_optax_f32(x, p):
  return _kl_optax(*_f32(x, p))


def _kl_naive(x, p):
  logp = _naive_log_softmax(p)
  return jnp.sum(jnp.exp(logp) * (logp - _naive_log_softmax(x)), axis=-1)


def _jax_impls(suite: str) -> list[Impl]:
  """The jax peers of jxent for `suite`, jxent excluded."""
  if suite == "ce_int":
    return [
        Impl("optax", _ce_int_optax,
             "optax.losses.softmax_cross_entropy_with_integer_labels(x, y)"),
        Impl("optax_f32", _ce_int_optax_f32,
             "optax.losses.softmax_cross_entropy_with_integer_labels("
             "x.astype(f32), y)", upcasts=True),
        Impl("naive", _ce_int_naive,
             "-take(x - log(sum(exp(x))), y)"),
    ]
  if suite == "ce_soft":
    return [
        Impl("optax", _ce_soft_optax, "optax.losses.softmax_cross_entropy(x, y)"),
        Impl("optax_f32", _ce_soft_optax_f32,
             "optax.losses.softmax_cross_entropy(x.astype(f32), y.astype(f32))",
             upcasts=True),
        Impl("naive", _ce_soft_naive, "-sum(y * (x - log(sum(exp(x)))))"),
    ]
  if suite == "entropy":
    return [
        Impl("jax_nn", _entropy_jax_nn,
             "-sum(jax.nn.softmax(x) * jax.nn.log_softmax(x))"),
        Impl("jax_nn_f32", _entropy_jax_nn_f32,
             "the same on x.astype(f32)", upcasts=True),
        Impl("naive", _entropy_naive,
             "logp = x - log(sum(exp(x))); -sum(exp(logp) * logp)"),
    ]
  if suite == "kl":
    return [
        Impl("optax", _kl_optax,
             "optax.losses.kl_divergence(jax.nn.log_softmax(x), "
             "jax.nn.softmax(p))"),
        Impl("optax_f32", _kl_optax_f32, "the same on x, p .astype(f32)",
             upcasts=True),
        Impl("naive", _kl_naive,
             "sum(exp(logp) * (logp - logq)), log-softmax as x - log(sum(exp(x)))"),
    ]
  raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")


def _jxent_impl(suite: str, jxent) -> Impl:
  """jxent's implementation of `suite`."""
  if suite == "ce_int":
    fn = jxent.softmax_cross_entropy_with_integer_labels
    code = "jxent.softmax_cross_entropy_with_integer_labels(x, y)"
  elif suite == "ce_soft":
    fn = jxent.softmax_cross_entropy
    code = "jxent.softmax_cross_entropy(x, y)"
  elif suite == "entropy":
    fn = jxent.entropy_from_logits
    code = "jxent.entropy_from_logits(x)"
  elif suite == "kl":
    def fn(x, p):
      return jxent.kl_divergence_from_logits(p, x)
    code = "jxent.kl_divergence_from_logits(p, x)"
  else:
    raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
  return Impl("jxent", fn, code)


def _torch_impl(suite: str, torch) -> Impl:
  """PyTorch's implementation of `suite`, over torch tensors."""
  functional = torch.nn.functional
  if suite == "ce_int":
    def fn(x, labels):
      return functional.cross_entropy(x, labels, reduction="none")
    code = "torch.nn.functional.cross_entropy(x, y, reduction='none')"
  elif suite == "ce_soft":
    def fn(x, labels):
      return functional.cross_entropy(x, labels, reduction="none")
    code = "torch.nn.functional.cross_entropy(x, y_probs, reduction='none')"
  elif suite == "entropy":
    def fn(x):
      dist = torch.distributions.Categorical(logits=x, validate_args=False)
      return dist.entropy()
    code = "torch.distributions.Categorical(logits=x).entropy()"
  elif suite == "kl":
    def fn(x, p):
      return functional.kl_div(
          functional.log_softmax(x, dim=-1),
          functional.log_softmax(p, dim=-1),
          reduction="none",
          log_target=True,
      ).sum(-1)
    code = "F.kl_div(F.log_softmax(x), F.log_softmax(p), log_target=True).sum(-1)"
  else:
    raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
  return Impl("torch", fn, code, backend="torch")


def implementations(suite: str, *, jxent=None, torch=None) -> list[Impl]:
  """All implementations of `suite`, jxent first.

  Args:
    suite: One of `SUITES`.
    jxent: The jxent module, or None to leave jxent out.
    torch: The torch module, or None to leave torch out.

  Returns:
    The implementations in table order: jxent, the jax peers, torch.
  """
  impls = _jax_impls(suite)
  if jxent is not None:
    impls.insert(0, _jxent_impl(suite, jxent))
  if torch is not None:
    impls.append(_torch_impl(suite, torch))
  return impls


# Inputs up to this many elements are drawn with numpy on the host, which
# needs no compilation; larger ones are drawn on the device.
HOST_DRAW_MAX_ELEMENTS = 2**24


def _draw_host(suite, rows, classes, jdtype, seed):
  rng = np.random.default_rng(seed)
  shape = (rows, classes)
  x = (LOGIT_SCALE * rng.standard_normal(shape, np.float32)).astype(jdtype)
  if suite == "ce_int":
    extra = (rng.integers(0, classes, (rows,), np.int32),)
  elif suite == "ce_soft":
    z = LOGIT_SCALE * rng.standard_normal(shape, np.float32)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    extra = ((z / z.sum(axis=-1, keepdims=True)).astype(jdtype),)
  elif suite == "entropy":
    extra = ()
  elif suite == "kl":
    z = LOGIT_SCALE * rng.standard_normal(shape, np.float32)
    extra = (z.astype(jdtype),)
  else:
    raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
  return jax.device_put((x, extra))


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _draw_device(suite, rows, classes, jdtype, seed):
  kx, ky = jax.random.split(jax.random.key(seed))
  shape = (rows, classes)
  x = (LOGIT_SCALE * jax.random.normal(kx, shape, jnp.float32)).astype(jdtype)
  if suite == "ce_int":
    extra = (jax.random.randint(ky, (rows,), 0, classes, jnp.int32),)
  elif suite == "ce_soft":
    z = LOGIT_SCALE * jax.random.normal(ky, shape, jnp.float32)
    extra = (jax.nn.softmax(z, axis=-1).astype(jdtype),)
  elif suite == "entropy":
    extra = ()
  elif suite == "kl":
    z = LOGIT_SCALE * jax.random.normal(ky, shape, jnp.float32)
    extra = (z.astype(jdtype),)
  else:
    raise ValueError(f"unknown suite {suite!r}; expected one of {SUITES}")
  return x, extra


def make_inputs(suite: str, rows: int, classes: int, dtype: str, seed: int = 0):
  """Makes a case's inputs on the default device, seeded.

  The logits are ``LOGIT_SCALE`` times a standard normal, drawn in float32 and
  rounded to `dtype`. Soft labels are the softmax of another such draw, and
  ``kl``'s ``p`` logits another draw, both in `dtype`. Integer labels are
  uniform int32. Small inputs are drawn by numpy on the host, large ones on
  the device (`HOST_DRAW_MAX_ELEMENTS`).

  Args:
    suite: One of `SUITES`.
    rows: Batch size.
    classes: Size of the class axis.
    dtype: ``"float32"`` or ``"bfloat16"``.
    seed: Seed of the draw.

  Returns:
    ``(x, extra)``: the logits and a tuple of the suite's other inputs.
  """
  jdtype = DTYPES[dtype]
  if rows * classes <= HOST_DRAW_MAX_ELEMENTS:
    return _draw_host(suite, rows, classes, jdtype, seed)
  return _draw_device(suite, rows, classes, jdtype, seed)


def min_bytes(suite: str, mode: str, rows: int, classes: int, dtype: str) -> int:
  """The least number of bytes a case must move between memory and chip.

  The byte model: the forward pass reads the logits once (plus, for
  ``ce_soft`` and ``kl``, the second ``(rows, classes)`` array once, in the
  same dtype; for ``ce_int`` the int32 labels) and writes one float32 loss per
  row. Loss and gradient read the same inputs once and write the gradient,
  which has the logits' dtype, once; the scalar loss is negligible. Any upcast
  an implementation does is its own cost: bytes are always counted at the
  input dtype.

  Args:
    suite: One of `SUITES`.
    mode: ``"fwd"`` or ``"vjp"``.
    rows: Batch size.
    classes: Size of the class axis.
    dtype: ``"float32"`` or ``"bfloat16"``.

  Returns:
    The byte count.
  """
  big = rows * classes * jnp.dtype(DTYPES[dtype]).itemsize
  total = big
  if suite in ("ce_soft", "kl"):
    total += big
  elif suite == "ce_int":
    total += rows * 4
  if mode == "fwd":
    total += rows * 4
  elif mode == "vjp":
    total += big
  else:
    raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
  return total


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
  """Parses ``"8192x32768,8192x262144"`` into ``((8192, 32768), ...)``.

  Args:
    text: Comma-separated ``ROWSxCLASSES`` pairs.

  Returns:
    The shapes, in the order given.
  """
  shapes = []
  for item in text.split(","):
    item = item.strip()
    if not item:
      continue
    match = re.fullmatch(r"(\d+)\s*[xX*]\s*(\d+)", item)
    if match is None:
      raise ValueError(f"bad shape {item!r}; expected ROWSxCLASSES, e.g. 8192x32768")
    shapes.append((int(match.group(1)), int(match.group(2))))
  if not shapes:
    raise ValueError("no shapes given")
  return tuple(shapes)


def default_shapes(suite: str, platform: str, quick: bool = False):
  """The default (rows, classes) grid for `suite` on `platform`.

  Args:
    suite: One of `SUITES`.
    platform: JAX platform name, ``"cpu"``, ``"gpu"``/``"cuda"``, ``"tpu"``...
    quick: The tiny grid of ``--quick``.

  Returns:
    A tuple of (rows, classes).
  """
  if quick:
    return QUICK_SHAPES
  if platform == "cpu":
    return CPU_SHAPES
  return GPU_SHAPES[suite]
