"""Training and evaluation: a Flax NNX model, Optax AdamW, a jxent loss.

The loss inside the jitted training step is
:func:`jxent.softmax_cross_entropy_with_integer_labels`, with label
smoothing passed through. :func:`train_and_evaluate` runs the whole demo
and returns its metrics.
"""

import datetime
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

import jxent
from jxent.demo import checkpoint, summary
from jxent.demo import config as config_lib
from jxent.demo import data as data_lib
from jxent.demo import metrics as metrics_lib
from jxent.demo import model as model_lib
from jxent.demo.config import Config as Config

PREDICT_BATCH = 512


class DivergenceError(RuntimeError):
  """Training gave a loss or weights that are not finite; one line."""


@functools.partial(jax.jit, static_argnames="label_smoothing")
def objective(
    logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
  """The training loss: jxent's mean cross-entropy with label smoothing.

  Args:
    logits: Shape `(batch, num_classes)`.
    labels: Integer labels, shape `(batch,)`.
    label_smoothing: Share of the target mass spread evenly over classes.

  Returns:
    A scalar, in nats.
  """
  return jxent.softmax_cross_entropy_with_integer_labels(
      logits, labels, label_smoothing=label_smoothing, reduction="mean"
  )


def _loss(model, x, y, label_smoothing):
  logits = model(x)
  return objective(logits, y, label_smoothing=label_smoothing), logits


@functools.partial(nnx.jit, static_argnames="label_smoothing")
def train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    x: jax.Array,
    y: jax.Array,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """One AdamW step on one batch; updates `model` and `optimizer` in place.

  Args:
    model: The classifier.
    optimizer: Its `nnx.Optimizer` over the `nnx.Param` variables.
    x: A batch of inputs.
    y: Integer labels of shape `(batch,)`.
    label_smoothing: Passed to the jxent loss.

  Returns:
    `(loss, correct)`: the mean training loss of the batch before the step,
    and how many of its examples the model got right.
  """
  grad_fn = nnx.value_and_grad(_loss, has_aux=True)
  (loss, logits), grads = grad_fn(model, x, y, label_smoothing)
  # Optax's Adam bias correction mixes a float and an int32 step count,
  # which strict dtype promotion refuses; everything else here is strict.
  with jax.numpy_dtype_promotion("standard"):
    optimizer.update(model, grads)
  return loss, jnp.sum(jnp.argmax(logits, axis=-1) == y)


@nnx.jit
def _logits(model: nnx.Module, x: jax.Array) -> jax.Array:
  return model(x)


def predict(model: nnx.Module, x: np.ndarray) -> np.ndarray:
  """Logits for all of `x`, in fixed-size chunks so it compiles once.

  Args:
    model: The classifier.
    x: Inputs of shape `(n, *input_shape)`.

  Returns:
    Float32 logits of shape `(n, num_classes)`.
  """
  chunks = []
  for start in range(0, len(x), PREDICT_BATCH):
    chunk = x[start : start + PREDICT_BATCH]
    pad = PREDICT_BATCH - len(chunk)
    padded = np.pad(chunk, [(0, pad)] + [(0, 0)] * (chunk.ndim - 1))
    chunks.append(np.asarray(_logits(model, padded))[: len(chunk)])
  return np.concatenate(chunks)


def make_optimizer(
    config: Config, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with a linear warmup then a cosine decay to 1% of the peak.

  Args:
    config: The run's settings (`lr`, `weight_decay`, `warmup_fraction`).
    total_steps: Training steps in the whole run.

  Returns:
    `(tx, schedule)`.
  """
  warmup = max(1, round(config.warmup_fraction * total_steps))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.lr,
      warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=0.01 * config.lr,
  )
  return optax.adamw(schedule, weight_decay=config.weight_decay), schedule


def new_run_folder(root: str = config_lib.RUNS) -> str:
  """A folder under `root` named by the time, not yet in use."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path, n = os.path.join(root, stamp), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(root, f"{stamp}-{n}")
  return path


def _fit(
    model: nnx.Module,
    data: data_lib.Dataset,
    config: Config,
) -> tuple[list[dict[str, float]], np.ndarray]:
  """Trains `model` in place; returns the history and the last test logits.

  Raises:
    DivergenceError: At the end of the first epoch whose loss or weights
      are not finite.
  """
  n_train = len(data.y_train)
  batch_size = min(config.batch_size, n_train)
  steps_per_epoch = n_train // batch_size
  tx, schedule = make_optimizer(config, config.epochs * steps_per_epoch)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(config.seed)
  smoothing = float(config.label_smoothing)
  history = []
  with tqdm.tqdm(
      total=config.epochs * steps_per_epoch,
      desc="training",
      unit="step",
      disable=None if config.progress is None else not config.progress,
  ) as bar:
    for epoch in range(1, config.epochs + 1):
      losses, correct = [], []
      for idx in data_lib.batch_indices(n_train, batch_size, rng):
        loss, hits = train_step(
            model, optimizer, data.x_train[idx], data.y_train[idx],
            label_smoothing=smoothing,
        )
        losses.append(loss)
        correct.append(hits)
        bar.update()
      test_logits = predict(model, data.x_test)
      record = {
          "epoch": epoch,
          "lr": float(schedule(epoch * steps_per_epoch - 1)),
          "train_loss": float(jnp.mean(jnp.stack(losses))),
          "train_accuracy": float(jnp.sum(jnp.stack(correct)))
          / (steps_per_epoch * batch_size),
          "test_loss": float(objective(test_logits, data.y_test, smoothing)),
          "test_cross_entropy": float(objective(test_logits, data.y_test)),
          "test_accuracy": metrics_lib.accuracy(test_logits, data.y_test),
      }
      _check_finite(model, record)
      history.append(record)
      bar.set_postfix(
          epoch=f"{epoch}/{config.epochs}",
          loss=f"{record['train_loss']:.4f}",
          test_acc=f"{record['test_accuracy']:.3f}",
      )
  return history, test_logits


def _check_finite(model: nnx.Module, record: dict[str, float]) -> None:
  """Raises DivergenceError unless the epoch's losses and weights are finite."""
  weights = jax.tree.leaves(nnx.state(model, nnx.Param))
  finite_weights = all(bool(jnp.isfinite(w).all()) for w in weights)
  losses = (record["train_loss"], record["test_loss"])
  if finite_weights and np.isfinite(losses).all():
    return
  raise DivergenceError(
      f"training diverged in epoch {record['epoch']}: training loss"
      f" {record['train_loss']:.4g}, weights"
      f" {'finite' if finite_weights else 'not finite'}; try a smaller --lr"
  )


def _test_metrics(
    test_logits: np.ndarray, data: data_lib.Dataset, label_smoothing: float
) -> dict[str, Any]:
  """Accuracy, information in nats and bits, and calibration on the test set."""
  results: dict[str, Any] = {
      "test_accuracy": metrics_lib.accuracy(test_logits, data.y_test)
  }
  info = metrics_lib.information(
      test_logits, data.y_test, label_smoothing=label_smoothing
  )
  for name, nats in info.items():
    results[f"test_{name}_nats"] = nats
    results[f"test_{name}_bits"] = metrics_lib.to_bits(nats)
  probs = np.asarray(jxent.softmax(test_logits))
  reliability = metrics_lib.reliability(probs, data.y_test)
  predictions = np.argmax(test_logits, axis=-1)
  return results | {
      "test_ece": reliability["ece"],
      "ece_bins": metrics_lib.NUM_BINS,
      "reliability": reliability,
      "confusion_matrix": metrics_lib.confusion_matrix(
          data.y_test, predictions, data.num_classes
      ).tolist(),
  }


def train_and_evaluate(config: Config) -> dict[str, Any]:
  """Trains on the data, evaluates, writes the artefacts, prints a summary.

  The settings, the data and the output folder are checked first: nothing
  is trained or written before they pass. Under `config.out` it then
  writes ``metrics.json``, the checkpoint folder ``checkpoint/`` and,
  unless `config.plots` is False, ``loss.png``, ``confusion.png`` and
  ``reliability.png``.

  Args:
    config: The run's settings.

  Returns:
    The metrics, as written to ``metrics.json``.

  Raises:
    ConfigError: If a setting is out of range or `config.out` is unusable.
    DataError: If the data file cannot be used, or does not suit the model.
    DivergenceError: If the loss or the weights stop being finite; nothing
      is written then.
  """
  start = time.perf_counter()
  config_lib.check(config)
  data = data_lib.load_dataset(
      config.data, test_fraction=config.test_fraction, seed=config.split_seed
  )
  model_config = model_lib.ModelConfig(
      name=config.model,
      input_shape=data.input_shape,
      num_classes=data.num_classes,
      widths=model_lib.default_widths(config.model),
  )
  mean, scale = model_lib.input_statistics(data.x_train)
  try:
    model = model_lib.make_model(
        model_config, mean=mean, scale=scale, seed=config.seed
    )
  except ValueError as e:
    raise data_lib.DataError(f"{data.name}: {e}") from None
  out = config.out or new_run_folder()

  history, test_logits = _fit(model, data, config)

  os.makedirs(out, exist_ok=True)
  saved = checkpoint.save(os.path.join(out, "checkpoint"), model, model_config)
  results: dict[str, Any] = {
      "data": data.name,
      "model": config.model,
      "num_train": len(data.y_train),
      "num_test": len(data.y_test),
      "num_classes": data.num_classes,
      "epochs": config.epochs,
      "batch_size": min(config.batch_size, len(data.y_train)),
      "lr": config.lr,
      "weight_decay": config.weight_decay,
      "label_smoothing": float(config.label_smoothing),
      "seed": config.seed,
      "split_seed": config.split_seed,
      "train_accuracy": metrics_lib.accuracy(
          predict(model, data.x_train), data.y_train
      ),
      **_test_metrics(test_logits, data, float(config.label_smoothing)),
      "history": history,
      "versions": {
          "jax": jax.__version__,
          "flax": _version("flax"),
          "optax": optax.__version__,
      },
      "backend": jax.default_backend(),
      "out": out,
      "checkpoint": saved,
  }
  if config.plots:
    from jxent.demo import plots  # pylint: disable=g-import-not-at-top

    plots.write_all(out, results)
  results["seconds"] = time.perf_counter() - start
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(results, f, indent=2)
  if config.verbose:
    print(summary.format_summary(results))
  return results


def _version(package: str) -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top

  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return "unknown"
