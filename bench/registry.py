"""The registry: benchmark suites and their implementations, as data.

A *suite* is one loss to time: its inputs, its byte model, its
implementations and its shapes (`Suite`). An *implementation* is one way to
compute it (`Impl`). A *case* is one suite, implementation, mode (``fwd``:
the loss; ``vjp``: the loss and its gradient, the per-row losses averaged
outside; ``vjp_mean``: the same with the mean taken inside the loss where
the loss can, as a training step calls it), dtype and shape. The runner
(`bench.runner`) is written once, for every suite.

* To add a peer to a suite, add an `Impl` to the suite's ``peers``.
* To add one of jxent's own implementations to every suite, such as the
  suite's jxent loss called with ``implementation="triton"``, add a `Variant`
  to `JXENT`.
* To add a suite, ``register(Suite(...))`` in one of `SUITE_MODULES`.
"""

import dataclasses
import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

Shape = tuple[int, ...]

# The modules whose imports register the suites.
SUITE_MODULES = ("bench.logits", "bench.linear", "bench.sharded")


@dataclasses.dataclass(frozen=True)
class Impl:
  """One implementation of a suite's loss.

  Attributes:
    name: Short name used in tables and by ``--impls``.
    fn: ``fn(*inputs)``: the loss, per row or already reduced, over jax
      arrays (backend ``"jax"``) or torch tensors (``"torch"``).
    code: The user code it stands for, one line.
    backend: ``"jax"`` or ``"torch"``.
    needs: A module it needs beyond jax and optax (``"jxent"``,
      ``"torch"``); where that module does not import, it is left out.
    upcasts: It converts its inputs to float32 first. It is skipped on
      float32 inputs, where it is the peer it upcasts for.
    f32: It computes in float32 whatever the inputs' dtype.
    rounded: Its intermediate values (say, logits from a matmul in the
      inputs' dtype) are rounded to the inputs' dtype before it upcasts:
      its arithmetic is float32 after that, but its results carry that
      rounding, so they are held to the 16-bit tolerances.
    mean: ``mean(*inputs)``: the loss averaged over the rows inside the
      call (``reduction="mean"``), for ``vjp_mean``; None: ``fn(...)``'s
      mean, taken outside.
  """

  name: str
  fn: Callable[..., Any]
  code: str
  backend: str = "jax"
  needs: str | None = None
  upcasts: bool = False
  f32: bool = False
  rounded: bool = False
  mean: Callable[..., Any] | None = None

  def accumulates_f32(self, dtype: str) -> bool:
    """Whether its arithmetic is float32 for inputs of `dtype`, with no
    rounding to 16 bits on the way."""
    if self.rounded and dtype != "float32":
      return False
    return self.upcasts or self.f32 or dtype == "float32"


@dataclasses.dataclass(frozen=True)
class Variant:
  """One of jxent's implementations: each suite's jxent loss with `options`.

  Attributes:
    name: Its name in tables and for ``--impls`` and ``--reference``.
    options: Keyword arguments added to every suite's ``jxent`` call.
    suites: The suites it runs in; None for all.
    platforms: The JAX backends it runs on (``"gpu"``, ...); None for all.
      With $JXENT_BENCH_INTERPRET=1 it runs anywhere, its Pallas kernels in
      interpret mode (to rehearse the GPU script on a CPU).
  """

  name: str
  options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  suites: tuple[str, ...] | None = None
  platforms: tuple[str, ...] | None = None

  def runs_here(self) -> bool:
    """Whether this backend (or interpret mode) runs it."""
    if self.platforms is None or interpret_kernels():
      return True
    return jax.default_backend() in self.platforms


def interpret_kernels() -> bool:
  """$JXENT_BENCH_INTERPRET=1: run jxent's Pallas kernels interpreted."""
  return os.environ.get("JXENT_BENCH_INTERPRET", "") == "1"


# jxent's implementations, compared side by side in every suite they name:
# the default (on a GPU, the forward kernel inside the XLA path), XLA alone,
# and the Pallas kernels (for the cross-entropies, both passes; for the
# entropy and KL of logits, the forward kernel, as the default); for the
# reducing linear heads, the default (the fast mode, token chunks) and the
# low-memory vocabulary walk.
_KERNEL_SUITES = ("ce_int", "ce_soft", "entropy", "kl")
_REDUCING_LINEAR_SUITES = ("linear_ce", "linear_kl", "linear_js",
                           "linear_top_k", "linear_policy_gradient")
JXENT = (
    Variant("jxent"),
    Variant("jxent_xla", {"implementation": "xla"}, suites=_KERNEL_SUITES,
            platforms=("gpu",)),
    Variant("jxent_triton", {"implementation": "triton"},
            suites=_KERNEL_SUITES, platforms=("gpu",)),
    Variant("jxent_low_memory", {"mode": "low_memory"},
            suites=_REDUCING_LINEAR_SUITES),
)


@dataclasses.dataclass(frozen=True)
class Suite:
  """One loss to benchmark: inputs, byte model, implementations, shapes.

  Attributes:
    name: Short name, used by ``--suite`` and in tables.
    title: What it computes, a few words.
    dims: Names of a shape's sizes, e.g. ``("rows", "classes")``;
      ``--shapes`` joins them with ``x``.
    inputs: ``inputs(draw, shape, dtype)``: the case's arrays, drawn from a
      `Draw` and cast to `dtype` (a numpy dtype) where floating.
    jxent: ``jxent(*inputs, **options)``: the loss as jxent computes it;
      each `Variant` of `JXENT` calls it with its options.
    jxent_code: The user code of `jxent`, one line.
    peers: The other implementations, in table order.
    shapes: Default shapes for ``"quick"``, ``"cpu"`` and ``"gpu"`` (any
      accelerator).
    dtypes: Default dtypes, keyed as `shapes`.
    min_bytes: ``min_bytes(mode, shape, dtype)``: the fewest bytes a case
      must move between memory and chip; None where the loss is not bound
      by memory (no GB/s, no plot).
    byte_model: What `min_bytes` counts, or why there is none; a phrase.
    baseline: The peers, as users run them, summarised against the
      reference (with jxent's own implementations, `summarised`).
    modes: Modes run unless ``--modes`` says otherwise.
    grad_argnums: The inputs ``vjp`` and ``vjp_mean`` differentiate.
    reduces: Its ``jxent`` takes ``reduction=``: in ``vjp_mean`` jxent's
      implementations are called with ``reduction="mean"``.
    place: Puts the drawn arrays on the devices (e.g. sharded); None puts
      them on the default device.
    check_shape: ``check_shape(shape)``: why a shape does not suit the
      suite, or None.
    inspect: ``inspect(compiled, inputs)``: extra row fields from the
      compiled program, with an optional ``"notes"`` text for the table.
    cpu_devices: Simulated CPU devices it needs, set before JAX starts.
    reps: Repetitions per case, by default.
    max_case_s: Seconds of repetitions per implementation, by default.
    note: How to read its results, for table.md.
    default: Whether ``python -m bench`` runs it without ``--suite``.
  """

  name: str
  title: str
  dims: tuple[str, ...]
  inputs: Callable[..., tuple]
  jxent: Callable[..., Any]
  jxent_code: str
  peers: tuple[Impl, ...]
  shapes: Mapping[str, tuple[Shape, ...]]
  dtypes: Mapping[str, tuple[str, ...]]
  min_bytes: Callable[[str, Shape, str], int] | None
  byte_model: str
  baseline: tuple[str, ...]
  modes: tuple[str, ...] = ("fwd", "vjp")
  grad_argnums: tuple[int, ...] = (0,)
  reduces: bool = False
  place: Callable[[tuple], tuple] | None = None
  check_shape: Callable[[Shape], str | None] | None = None
  inspect: Callable[[Any, tuple], dict] | None = None
  cpu_devices: int = 1
  reps: int = 10
  max_case_s: float = 2.0
  note: str = ""
  default: bool = True

  def impls(self) -> tuple[Impl, ...]:
    """Its implementations: jxent's (`JXENT`), then the peers."""
    own = tuple(
        Impl(v.name, _with_options(self.jxent, v.options),
             self.jxent_code + "".join(f", {k}={o!r}"
                                       for k, o in v.options.items()),
             needs="jxent", f32=True,
             mean=_with_options(self.jxent, {**v.options,
                                             "reduction": "mean"})
             if self.reduces else None)
        for v in JXENT
        if (v.suites is None or self.name in v.suites) and v.runs_here())
    return own + self.peers

  def summarised(self) -> tuple[str, ...]:
    """The implementations table.md and the plot compare with the reference:
    jxent's own and the baseline peers."""
    return tuple(i.name for i in self.impls() if i.needs == "jxent"
                 and i.name not in self.baseline) + self.baseline

  def describe(self) -> dict:
    """What results.json records of the suite, for its report."""
    return {"title": self.title, "dims": list(self.dims),
            "summarised": list(self.summarised()), "note": self.note}


def _with_options(fn, options):
  """`fn` with `options` added to every call (kernels interpreted with
  $JXENT_BENCH_INTERPRET=1)."""
  if not options and not interpret_kernels():
    return fn

  def call(*inputs):
    if not interpret_kernels():
      return fn(*inputs, **options)
    from jxent._cross_entropy import api  # The kernels on any backend.
    with api.kernels_anywhere(interpret=True, block=64):
      return fn(*inputs, **options)

  return call


_SUITES: dict[str, Suite] = {}


def register(suite: Suite) -> Suite:
  """Adds `suite` to the registry, replacing one of the same name."""
  _SUITES[suite.name] = suite
  return suite


def suites() -> dict[str, Suite]:
  """Every registered suite by name, in registration order."""
  for module in SUITE_MODULES:
    importlib.import_module(module)
  return dict(_SUITES)


def get(name: str) -> Suite:
  """The suite called `name`."""
  return suites()[name]


class Lazy:
  """A module imported on first use, so the harness runs while it is broken.

  ``jxent = Lazy("jxent")`` lets an implementation read
  ``jxent.softmax_cross_entropy(x, y)`` while nothing imports jxent until a
  case calls it.
  """

  def __init__(self, name: str):
    self._name = name

  def __getattr__(self, attr: str):
    return getattr(importlib.import_module(self._name), attr)


class Draw:
  """Seeded random arrays: on the host with numpy, or traced with jax.random.

  Args:
    seed: Seed of the draw.
    host: Draw with numpy (no compilation, for small inputs); otherwise
      with `jax.random`, under the caller's `jit`.
  """

  def __init__(self, seed: int, host: bool):
    self._rng = np.random.default_rng(seed) if host else None
    self._key = None if host else jax.random.key(seed)

  def _next_key(self):
    self._key, key = jax.random.split(self._key)
    return key

  def normal(self, shape: Shape, scale: float = 1.0):
    """``scale`` times a standard normal, float32."""
    if self._rng is not None:
      return scale * self._rng.standard_normal(shape, np.float32)
    return scale * jax.random.normal(self._next_key(), shape, np.float32)

  def integers(self, high: int, shape: Shape):
    """Uniform int32 in ``[0, high)``."""
    if self._rng is not None:
      return self._rng.integers(0, high, shape, np.int32)
    return jax.random.randint(self._next_key(), shape, 0, high, np.int32)

  def probabilities(self, shape: Shape, scale: float = 1.0):
    """The softmax of `normal` along the last axis, float32."""
    z = self.normal(shape, scale)
    e = (np if self._rng is not None else jax.numpy).exp(
        z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
