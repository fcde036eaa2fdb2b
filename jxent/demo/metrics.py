r"""What the demo measures: accuracy, information in nats and bits, calibration.

The information quantities come from jxent itself. On the test set, with
`P` the training target (one-hot, or smoothed by `label_smoothing`) and `Q`
the model's softmax,

.. math:: H(P, Q) = H(P) + D_{KL}(P \| Q)

so with label smoothing `H(P)` is positive and the cross-entropy the model
minimises can never reach zero.
"""

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jxent

NUM_BINS = 15


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Share of examples whose largest logit is the label.

  Examples:
    >>> accuracy(np.array([[2.0, 1.0], [0.0, 3.0]]), np.array([0, 0]))
    0.5
  """
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def information(
    logits: np.ndarray, labels: np.ndarray, *, label_smoothing: float = 0.0
) -> dict[str, float]:
  """Means over examples of the information quantities, in nats, via jxent.

  Args:
    logits: Shape `(n, num_classes)`.
    labels: Integer labels, shape `(n,)`.
    label_smoothing: Smoothing of the target distribution `P`.

  Returns:
    A dict with

    * `cross_entropy`: `-log Q(y)`, the plain test loss;
    * `predictive_entropy`: `H(Q)`, how unsure the model is;
    * `target_entropy`: `H(P)`, zero without smoothing;
    * `kl_divergence`: `D_KL(P || Q)`;
    * `target_cross_entropy`: `H(P, Q)`, the smoothed loss the model was
      trained on, which equals `target_entropy + kl_divergence`.

  Examples:
    >>> info = information(np.array([[0.0, 0.0]]), np.array([0]))
    >>> print(round(info["cross_entropy"] / math.log(2), 4))
    1.0
  """
  values = _information(
      jnp.asarray(logits, jnp.float32), jnp.asarray(labels), label_smoothing
  )
  return {k: float(v) for k, v in values.items()}


@functools.partial(jax.jit, static_argnums=2)
def _information(logits, labels, label_smoothing):
  """The quantities of :func:`information`, compiled as one program."""
  num_classes = logits.shape[-1]
  one_hot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
  p = (1.0 - label_smoothing) * one_hot + label_smoothing / num_classes
  q = jxent.softmax(logits)
  return {
      "cross_entropy": jxent.softmax_cross_entropy_with_integer_labels(
          logits, labels, reduction="mean"
      ),
      "predictive_entropy": jnp.mean(jxent.entropy_from_logits(logits)),
      "target_entropy": jnp.mean(jxent.entropy(p)),
      "kl_divergence": jnp.mean(jxent.kl_divergence(p, q)),
      "target_cross_entropy": jxent.softmax_cross_entropy(
          logits, p, reduction="mean"
      ),
  }


def to_bits(nats: float) -> float:
  """Converts nats to bits.

  Examples:
    >>> to_bits(math.log(2))
    1.0
  """
  return nats / math.log(2)


def reliability(
    probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
) -> dict[str, Any]:
  r"""Top-label confidence against accuracy in equal-width bins, and the ECE.

  .. math:: \mathrm{ECE} = \sum_b \frac{n_b}{n} |\mathrm{acc}_b - \mathrm{conf}_b|

  Args:
    probs: Predicted probabilities, shape `(n, num_classes)`.
    labels: Integer labels, shape `(n,)`.
    num_bins: Bins over the confidence range `[0, 1]`.

  Returns:
    A dict with lists of length `num_bins`: `edges` (the lower edges),
    `count`, `confidence` (mean top probability) and `accuracy`, the last
    two 0 for empty bins; and `ece`, the expected calibration error.
  """
  confidence = np.max(probs, axis=-1)
  correct = np.argmax(probs, axis=-1) == labels
  bins = np.clip((confidence * num_bins).astype(int), 0, num_bins - 1)
  count = np.bincount(bins, minlength=num_bins)
  safe = np.maximum(count, 1)
  mean_confidence = np.bincount(bins, confidence, minlength=num_bins) / safe
  mean_accuracy = np.bincount(bins, correct, minlength=num_bins) / safe
  gap = np.abs(mean_accuracy - mean_confidence)
  return {
      "edges": (np.arange(num_bins) / num_bins).tolist(),
      "count": count.tolist(),
      "confidence": mean_confidence.tolist(),
      "accuracy": mean_accuracy.tolist(),
      "ece": float(np.sum(count * gap) / max(count.sum(), 1)),
  }


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
) -> float:
  """Expected calibration error of the top-label confidence.

  See :func:`reliability` for the definition.

  Args:
    probs: Predicted probabilities, shape `(n, num_classes)`.
    labels: Integer labels, shape `(n,)`.
    num_bins: Equal-width confidence bins.

  Returns:
    The ECE, between 0 and 1.

  Examples:
    >>> probs = np.array([[0.9, 0.1], [0.9, 0.1]])
    >>> print(round(expected_calibration_error(probs, np.array([0, 1])), 2))
    0.4
  """
  return reliability(probs, labels, num_bins)["ece"]


def confusion_matrix(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> np.ndarray:
  """Counts with true labels along rows and predictions along columns.

  Examples:
    >>> confusion_matrix(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
    [[1, 0], [1, 1]]
  """
  flat = labels * num_classes + predictions
  counts = np.bincount(flat, minlength=num_classes * num_classes)
  return counts.reshape(num_classes, num_classes)
