"""The suites on logits: cross-entropy, entropy and KL divergence.

* ``ce_int``: softmax cross-entropy with integer labels;
* ``ce_soft``: softmax cross-entropy with soft labels;
* ``entropy``: the entropy of ``softmax(x)``;
* ``kl``: ``D_KL(P || Q)``, with ``Q = softmax(x)`` the model and ``P`` the
  softmax of the data's logits ``p``, as in distillation.

Every implementation takes ``(x, *extra)`` and returns the per-row loss.
``x`` is the model's logits of shape ``(rows, classes)``, the argument
``vjp`` differentiates; ``extra`` is what the suite adds: int32 labels of
shape ``(rows,)``, soft labels of the shape of ``x``, or ``kl``'s ``p``
logits. Each suite compares jxent with its peers as users call them
(optax, or ``jax.nn`` for entropy, which optax lacks), the same after the
usual upcast to float32, a naive ``jax.numpy`` formula and, when it is
installed, PyTorch.
"""

import jax
import jax.numpy as jnp
import optax

from bench.registry import Impl, Lazy, Suite, register

jxent = Lazy("jxent")
torch = Lazy("torch")

# Logits are LOGIT_SCALE * standard normal: the naive formulas cannot overflow
# and the softmax is neither uniform nor one-hot.
LOGIT_SCALE = 2.0

# The CPU grid sweeps classes at 512 rows (the plot's x axis) and adds 4096
# rows; at most 16M elements (64 MB in float32), well beyond the caches, so
# that it runs in a few minutes on two cores. The GPU grid has 8192 rows.
QUICK_SHAPES = ((256, 2048),)
CPU_SHAPES = ((512, 1024), (512, 4096), (512, 16384), (512, 32768),
              (4096, 1024), (4096, 4096))
GPU_SHAPES = ((8192, 32768), (8192, 131072))
DTYPES = ("float32", "bfloat16")

BYTE_MODEL = ("reads the logits{plus} once; writes one float32 loss per row "
              "(fwd) or the gradient, in the logits' dtype, once (vjp, vjp_mean)")


def logits_suite(name, title, *, second, extra, jxent_fn, jxent_code, peers,
                 baseline, gpu_shapes=GPU_SHAPES, reduces=False) -> Suite:
  """A suite on logits of shape (rows, classes).

  Args:
    name: The suite's name.
    title: What it computes.
    second: The second input the byte model counts: ``"labels"`` (int32,
      one per row), ``"dense"`` (a second array of the logits' shape and
      dtype) or None.
    extra: ``extra(draw, rows, classes, dtype)``: the inputs after ``x``.
    jxent_fn: ``jxent_fn(x, *extra, **options)``, jxent's loss.
    jxent_code: Its user code.
    peers: The other implementations.
    baseline: The peers summarised, as users run them.
    gpu_shapes: The accelerator grid.
    reduces: jxent's loss takes ``reduction=`` (see `Suite.reduces`).

  Returns:
    The suite.
  """
  def inputs(draw, shape, dtype):
    x = draw.normal(shape, LOGIT_SCALE).astype(dtype)
    return (x, *extra(draw, *shape, dtype))

  def min_bytes(mode, shape, dtype):
    rows, classes = shape
    big = rows * classes * jnp.dtype(dtype).itemsize
    reads = big + {"labels": 4 * rows, "dense": big, None: 0}[second]
    return reads + (4 * rows if mode == "fwd" else big)

  plus = {"labels": " and the int32 labels",
          "dense": " and the second (rows, classes) array", None: ""}[second]
  return Suite(
      name=name, title=title, dims=("rows", "classes"), inputs=inputs,
      jxent=jxent_fn, jxent_code=jxent_code, peers=peers,
      shapes={"quick": QUICK_SHAPES, "cpu": CPU_SHAPES, "gpu": gpu_shapes},
      dtypes={"quick": DTYPES, "cpu": DTYPES, "gpu": DTYPES},
      min_bytes=min_bytes, byte_model=BYTE_MODEL.format(plus=plus),
      baseline=baseline, reduces=reduces)


def as_is_and_upcast(name, fn, code) -> tuple[Impl, Impl]:
  """A peer as users call it, and ``<name>_f32``: the same on its floating
  inputs converted to float32 first, the usual fix for bfloat16."""
  def upcast_fn(*args):
    return fn(*(a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating)
                else a for a in args))
  return (Impl(name, fn, code),
          Impl(f"{name}_f32", upcast_fn, f"{code}, floating inputs .astype(f32) first",
               upcasts=True))


def naive_log_softmax(x):
  """The textbook formula: no max shift, arithmetic in the input dtype."""
  return x - jnp.log(jnp.sum(jnp.exp(x), axis=-1, keepdims=True))


def _ce_int_optax(x, labels):
  return optax.losses.softmax_cross_entropy_with_integer_labels(x, labels)


def _ce_soft_optax(x, labels):
  return optax.losses.softmax_cross_entropy(x, labels)


def _entropy_jax_nn(x):
  return -jnp.sum(jax.nn.softmax(x) * jax.nn.log_softmax(x), axis=-1)


def _kl_optax(x, p):
  return optax.losses.kl_divergence(jax.nn.log_softmax(x), jax.nn.softmax(p))


def _naive_entropy(x):
  logp = naive_log_softmax(x)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def _naive_kl(x, p):
  logp = naive_log_softmax(p)
  return jnp.sum(jnp.exp(logp) * (logp - naive_log_softmax(x)), axis=-1)


def _torch_ce(x, labels):
  return torch.nn.functional.cross_entropy(x, labels, reduction="none")


def _torch_entropy(x):
  return torch.distributions.Categorical(logits=x, validate_args=False
                                         ).entropy()


def _torch_kl(x, p):
  f = torch.nn.functional
  return f.kl_div(f.log_softmax(x, dim=-1), f.log_softmax(p, dim=-1),
                  reduction="none", log_target=True).sum(-1)


register(logits_suite(
    "ce_int", "softmax cross-entropy, integer labels", second="labels",
    extra=lambda draw, rows, classes, dtype: (
        draw.integers(classes, (rows,)),),
    jxent_fn=lambda x, y, **o: jxent.softmax_cross_entropy_with_integer_labels(
        x, y, **o),
    jxent_code="jxent.softmax_cross_entropy_with_integer_labels(x, y)",
    peers=(
        *as_is_and_upcast(
            "optax", _ce_int_optax,
            "optax.losses.softmax_cross_entropy_with_integer_labels(x, y)"),
        Impl("naive", lambda x, y: -jnp.take_along_axis(
            naive_log_softmax(x), y[:, None], axis=-1)[:, 0],
             "-take(x - log(sum(exp(x))), y)"),
        Impl("torch", _torch_ce,
             "torch.nn.functional.cross_entropy(x, y, reduction='none')",
             backend="torch", needs="torch"),
    ),
    baseline=("optax", "optax_f32"), reduces=True,
    gpu_shapes=((8192, 32768), (8192, 131072), (8192, 262144))))

register(logits_suite(
    "ce_soft", "softmax cross-entropy, soft labels", second="dense",
    extra=lambda draw, rows, classes, dtype: (
        draw.probabilities((rows, classes), LOGIT_SCALE).astype(dtype),),
    jxent_fn=lambda x, y, **o: jxent.softmax_cross_entropy(x, y, **o),
    jxent_code="jxent.softmax_cross_entropy(x, y)", reduces=True,
    peers=(
        *as_is_and_upcast("optax", _ce_soft_optax,
                          "optax.losses.softmax_cross_entropy(x, y)"),
        Impl("naive", lambda x, y: -jnp.sum(y * naive_log_softmax(x), axis=-1),
             "-sum(y * (x - log(sum(exp(x)))))"),
        Impl("torch", _torch_ce,
             "torch.nn.functional.cross_entropy(x, y_probs, reduction='none')",
             backend="torch", needs="torch"),
    ),
    baseline=("optax", "optax_f32")))

register(logits_suite(
    "entropy", "entropy of softmax(x)", second=None,
    extra=lambda draw, rows, classes, dtype: (),
    jxent_fn=lambda x, **o: jxent.entropy_from_logits(x, **o),
    jxent_code="jxent.entropy_from_logits(x)",
    peers=(
        *as_is_and_upcast("jax_nn", _entropy_jax_nn,
                          "-sum(jax.nn.softmax(x) * jax.nn.log_softmax(x))"),
        Impl("naive", _naive_entropy,
             "logp = x - log(sum(exp(x))); -sum(exp(logp) * logp)"),
        Impl("torch", _torch_entropy,
             "torch.distributions.Categorical(logits=x).entropy()",
             backend="torch", needs="torch"),
    ),
    baseline=("jax_nn", "jax_nn_f32")))

register(logits_suite(
    "kl", "KL divergence D(P || softmax(x)) from logits", second="dense",
    extra=lambda draw, rows, classes, dtype: (
        draw.normal((rows, classes), LOGIT_SCALE).astype(dtype),),
    jxent_fn=lambda x, p, **o: jxent.kl_divergence_from_logits(p, x, **o),
    jxent_code="jxent.kl_divergence_from_logits(p, x)",
    peers=(
        *as_is_and_upcast("optax", _kl_optax,
                          "optax.losses.kl_divergence(jax.nn.log_softmax(x), "
                          "jax.nn.softmax(p))"),
        Impl("naive", _naive_kl,
             "sum(exp(logp) * (logp - logq)), log-softmax as "
             "x - log(sum(exp(x)))"),
        Impl("torch", _torch_kl,
             "F.kl_div(F.log_softmax(x), F.log_softmax(p), "
             "log_target=True).sum(-1)",
             backend="torch", needs="torch"),
    ),
    baseline=("optax", "optax_f32")))
