"""Tests for jxent.checked: bad labels raise, in any order of transforms."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jxent

int_ce = jxent.softmax_cross_entropy_with_integer_labels


def _problem():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)),
                       jnp.float32)
  return logits, jnp.array([0, 3, 4, 1]), jnp.array([0, 3, 9, 1])


def _loss(x, y):
  return int_ce(x, y, label_smoothing=0.1, reduction="mean")


def _two_losses(x, y):
  # A check before a custom VJP (the linear loss) under grad failed in JAX's
  # checkify ("Custom VJP bwd rule must produce an output with the same
  # type as the args tuple"), issue 11, defect 6.
  w = jnp.eye(5)
  return _loss(x, y) + jxent.linear_softmax_cross_entropy(x, w, y)


COMPOSITIONS = {
    "grad(checked)": lambda f: jax.grad(jxent.checked(f)),
    "value_and_grad(checked)": lambda f: jax.value_and_grad(jxent.checked(f)),
    "jit(grad(checked))": lambda f: jax.jit(jax.grad(jxent.checked(f))),
    "jit(checked)": lambda f: jax.jit(jxent.checked(f)),
    "checked(jit)": lambda f: jxent.checked(jax.jit(f)),
    "checked(grad)": lambda f: jxent.checked(jax.grad(f)),
    "checked(jit(grad))": lambda f: jxent.checked(jax.jit(jax.grad(f))),
    "vmap(checked)": lambda f: lambda x, y: jax.vmap(jxent.checked(f))(
        x[None], y[None])[0],
    "checked(vmap)": lambda f: lambda x, y: jxent.checked(jax.vmap(f))(
        x[None], y[None])[0],
}


@pytest.mark.parametrize("loss", [_loss, _two_losses])
@pytest.mark.parametrize("name", COMPOSITIONS)
def test_checked_composes_with_every_transform(name, loss):
  logits, good, bad = _problem()
  plain = {
      "grad": jax.grad(loss), "value_and_grad": jax.value_and_grad(loss)}
  fn = COMPOSITIONS[name](loss)
  out = fn(logits, good)
  expected = (plain["value_and_grad"](logits, good) if "value_and_grad"
              in name else plain["grad"](logits, good) if "grad" in name
              else loss(logits, good))
  for got, want in zip(jax.tree.leaves(out), jax.tree.leaves(expected),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6)
  with pytest.raises(Exception, match=r"labels must lie in \[0, 5\)"):
    jax.block_until_ready(fn(logits, bad))


def test_checked_under_flax_nnx_transforms():
  logits, good, bad = _problem()

  class Head(nnx.Module):
    def __init__(self, rngs):
      self.linear = nnx.Linear(5, 5, rngs=rngs)

    def __call__(self, x):
      return self.linear(x)

  model = Head(nnx.Rngs(0))

  def loss_fn(model, x, y):
    return _loss(model(x), y)

  for fn in (nnx.value_and_grad(jxent.checked(loss_fn)),
             nnx.jit(nnx.value_and_grad(jxent.checked(loss_fn))),
             jxent.checked(nnx.jit(nnx.value_and_grad(loss_fn)))):
    value, grads = fn(model, logits, good)
    assert np.isfinite(value)
    assert np.isfinite(grads["linear"]["kernel"][...]).all()
    with pytest.raises(Exception, match="labels must lie"):
      jax.block_until_ready(fn(model, logits, bad))


def test_checked_keeps_the_signature():
  def loss(logits, labels, *, smoothing=0.0):
    return int_ce(logits, labels, label_smoothing=smoothing)
  wrapped = jxent.checked(loss)
  assert inspect.signature(wrapped) == inspect.signature(loss)
  assert wrapped.__name__ == "loss"


def test_checked_catches_a_traced_smoothing_out_of_range():
  logits, good, _ = _problem()
  step = jxent.checked(jax.jit(lambda x, s: int_ce(
      x, good, label_smoothing=s, reduction="mean")))
  assert np.isfinite(step(logits, jnp.float32(0.2)))
  with pytest.raises(Exception, match="label_smoothing"):
    step(logits, jnp.float32(1.5))


def test_checks_reach_functions_jitted_before_the_first_checked():
  # `checked` turns the checks on and retraces: a function jitted (and
  # cached) before it still raises under it.
  logits, good, bad = _problem()
  jitted = jax.jit(_loss)
  jitted(logits, bad)  # Traced and cached; NaN, no error.
  with pytest.raises(Exception, match="labels must lie"):
    jxent.checked(jitted)(logits, bad)



def _assert_silent(capfd, caplog):
  # Under pytest the log goes to caplog; outside, to stderr (capfd).
  assert capfd.readouterr() == ("", "")
  assert not caplog.records, caplog.text


@pytest.mark.parametrize("name", COMPOSITIONS)
def test_a_caught_error_prints_nothing(name, capfd, caplog):
  """Issue 19: a caught error still printed JAX's log of the failed callback
  (about 40 lines of traceback on stderr)."""
  logits, good, bad = _problem()
  fn = COMPOSITIONS[name](_loss)
  jax.block_until_ready(fn(logits, good))
  capfd.readouterr()
  with pytest.raises(Exception, match=r"labels must lie in \[0, 5\)"):
    jax.block_until_ready(fn(logits, bad))
  _assert_silent(capfd, caplog)


def test_a_caught_error_under_nnx_jit_prints_nothing(capfd, caplog):
  logits, good, bad = _problem()
  model = nnx.Linear(5, 5, rngs=nnx.Rngs(0))
  step = nnx.jit(nnx.value_and_grad(jxent.checked(
      lambda model, x, y: _loss(model(x), y))))
  jax.block_until_ready(step(model, logits, good))
  capfd.readouterr()
  with pytest.raises(Exception, match=r"labels must lie in \[0, 5\)"):
    jax.block_until_ready(step(model, logits, bad))
  _assert_silent(capfd, caplog)


def test_other_failing_callbacks_are_still_logged(caplog):
  jxent.checked(_loss)  # Quiets its own errors only.

  def fail(x):
    raise ValueError("not checked's")

  fn = jax.jit(lambda x: jax.debug.callback(fail, x))
  with pytest.raises(Exception, match="not checked's"):
    jax.block_until_ready(fn(jnp.ones(2)))
  assert "jax.debug.callback failed" in caplog.text
