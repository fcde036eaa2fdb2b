"""Training and evaluation: a Flax NNX model, Optax AdamW, a jxent loss.

The loss inside the jitted training step is
:func:`jxent.softmax_cross_entropy_with_integer_labels`, with label
smoothing passed through. :func:`train_and_evaluate` runs the whole demo
and returns its metrics.
"""

import dataclasses
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
from jxent.demo import data as data_lib
from jxent.demo import metrics as metrics_lib
from jxent.demo import model as model_lib

PREDICT_BATCH = 512


class ConfigError(ValueError):
  """A setting out of range; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run; the command-line flags map onto these.

  Attributes:
    epochs: Passes over the training set.
    batch_size: Examples per training step (capped at the training size).
    lr: Peak learning rate of the warmup-then-cosine schedule.
    weight_decay: AdamW's decoupled weight decay.
    seed: Seed of the initial weights and of the batch order.
    model: "mlp" or "cnn".
    label_smoothing: Smoothing of the one-hot targets, in `[0, 1)`.
    data: A ``.npz`` file with `x` and `y`, or None for the digits.
    out: Output folder; None makes a new one under ``runs/``.
    plots: Whether to write the PNG figures.
    test_fraction: Share of the data held out for testing.
    split_seed: Seed of the train/test split, kept apart from `seed` so
      that runs with different seeds are scored on the same test set.
    warmup_fraction: Share of the steps spent warming the learning rate up.
    progress: Show progress bars; None shows them only on a terminal.
    verbose: Print the summary table at the end.
  """

  epochs: int = 20
  batch_size: int = 64
  lr: float = 3e-3
  weight_decay: float = 1e-4
  seed: int = 0
  model: str = "mlp"
  label_smoothing: float = 0.1
  data: str | None = None
  out: str | None = None
  plots: bool = True
  test_fraction: float = 0.25
  split_seed: int = 0
  warmup_fraction: float = 0.1
  progress: bool | None = None
  verbose: bool = True


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


def new_run_folder(root: str = "runs") -> str:
  """A folder under `root` named by the time, not yet in use."""
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  path, n = os.path.join(root, stamp), 1
  while os.path.exists(path):
    n += 1
    path = os.path.join(root, f"{stamp}-{n}")
  return path


def _check(config: Config) -> None:
  """Raises ConfigError for a setting out of range."""
  if config.epochs < 1:
    raise ConfigError(f"epochs must be at least 1, got {config.epochs}")
  if config.batch_size < 1:
    raise ConfigError(f"batch size must be at least 1, got {config.batch_size}")
  if not 0.0 <= config.label_smoothing < 1.0:
    raise ConfigError(
        f"label smoothing must be in [0, 1), got {config.label_smoothing}"
    )
  if not 0.0 < config.test_fraction < 1.0:
    raise ConfigError(
        f"test fraction must be in (0, 1), got {config.test_fraction}"
    )
  if config.model not in model_lib.MODELS:
    raise ConfigError(
        f"unknown model {config.model!r}; choose from {model_lib.MODELS}"
    )


def _fit(
    model: nnx.Module,
    data: data_lib.Dataset,
    config: Config,
) -> tuple[list[dict[str, float]], np.ndarray]:
  """Trains `model` in place; returns the history and the last test logits."""
  n_train = len(data.y_train)
  batch_size = min(config.batch_size, n_train)
  steps_per_epoch = n_train // batch_size
  tx, schedule = make_optimizer(config, config.epochs * steps_per_epoch)
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(config.seed)
  smoothing = float(config.label_smoothing)
  history = []
  for epoch in range(1, config.epochs + 1):
    bar = tqdm.tqdm(
        total=steps_per_epoch,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="step",
        disable=None if config.progress is None else not config.progress,
    )
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
        "test_accuracy": metrics_lib.accuracy(test_logits, data.y_test),
    }
    history.append(record)
    bar.set_postfix(
        loss=f"{record['train_loss']:.4f}",
        acc=f"{record['train_accuracy']:.3f}",
        test_acc=f"{record['test_accuracy']:.3f}",
    )
    bar.close()
  return history, test_logits


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

  Under `config.out` it writes ``metrics.json``, the checkpoint folder
  ``checkpoint/`` and, unless `config.plots` is False, ``loss.png``,
  ``confusion.png`` and ``reliability.png``.

  Args:
    config: The run's settings.

  Returns:
    The metrics, as written to ``metrics.json``.

  Raises:
    DataError: If the data file cannot be used, or does not suit the model.
    ConfigError: If a setting is out of range.
  """
  _check(config)
  start = time.perf_counter()
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

  history, test_logits = _fit(model, data, config)

  out = config.out or new_run_folder()
  os.makedirs(out, exist_ok=True)
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
      "checkpoint": checkpoint.save(
          os.path.join(out, "checkpoint"), model, model_config
      ),
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
