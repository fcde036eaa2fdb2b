"""The demo's figures, drawn with Matplotlib's Agg renderer.

Figures are made with :class:`matplotlib.figure.Figure` and an Agg canvas
directly, not with `pyplot`, so no display is needed and no global backend
is switched.
"""

import os
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 80


def _save(fig: Figure, path: str) -> str:
  FigureCanvasAgg(fig)
  fig.savefig(path, dpi=DPI)
  return path


def loss_curves(
    history: list[dict[str, float]], path: str, floor: float = 0.0
) -> str:
  """Training and test loss and accuracy against the epoch.

  The loss panel shows the objective, the cross-entropy `H(P,Q)` against
  the (smoothed) targets `P`, for training and test. With label smoothing
  it also shows the test cross-entropy `-log Q(y)` against the labels,
  which is the summary table's headline number, and the floor `H(P)` that
  `H(P,Q)` cannot go below.

  Args:
    history: One dict per epoch with `epoch`, `train_loss`, `test_loss`,
      `train_accuracy`, `test_accuracy` and, for the headline curve,
      `test_cross_entropy`.
    path: PNG file to write.
    floor: The target entropy `H(P)`, positive with label smoothing.

  Returns:
    `path`.
  """
  epoch = [h["epoch"] for h in history]
  fig = Figure(figsize=(8, 3.4), layout="constrained")
  loss_ax, acc_ax = fig.subplots(1, 2)
  smoothed = floor > 0
  objective = "H(P,Q), smoothed P" if smoothed else "-log Q(y)"
  for split, style in (("train", ".-"), ("test", ".--")):
    loss_ax.plot(epoch, [h[f"{split}_loss"] for h in history], style,
                 label=f"{split} {objective}")
    acc_ax.plot(epoch, [h[f"{split}_accuracy"] for h in history], style,
                label=split)
  if smoothed:
    if "test_cross_entropy" in history[0]:
      loss_ax.plot(epoch, [h["test_cross_entropy"] for h in history], ".-.",
                   label="test -log Q(y), the table's cross-entropy")
    loss_ax.axhline(floor, color="gray", linestyle=":",
                    label=f"floor of H(P,Q): H(P) = {floor:.3f}")
  loss_ax.set(xlabel="epoch", ylabel="nats per example", ylim=(0, None),
              title="loss" + (": H(P,Q) = H(P) + KL(P||Q)" if smoothed else ""))
  acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
  for ax in (loss_ax, acc_ax):
    ax.set_xlim(0.5, epoch[-1] + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10],
                                               min_n_ticks=1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
  return _save(fig, path)


def confusion(matrix: np.ndarray, path: str) -> str:
  """The test-set confusion matrix, true classes down, predictions across.

  Args:
    matrix: Counts of shape `(num_classes, num_classes)`.
    path: PNG file to write.

  Returns:
    `path`.
  """
  matrix = np.asarray(matrix)
  k = matrix.shape[0]
  fig = Figure(figsize=(4.4, 4), layout="constrained")
  ax = fig.subplots()
  image = ax.imshow(matrix, cmap="Blues")
  fig.colorbar(image, ax=ax, shrink=0.8)
  if k <= 20:
    threshold = matrix.max() / 2
    for i, j in np.ndindex(matrix.shape):
      if matrix[i, j]:
        ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                color="white" if matrix[i, j] > threshold else "black")
    ax.set(xticks=range(k), yticks=range(k))
  ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
  return _save(fig, path)


def reliability_diagram(
    bins: dict[str, list[float]], ece: float, path: str
) -> str:
  """Accuracy against confidence per bin, with the diagonal of calibration.

  Args:
    bins: The output of :func:`jxent.demo.metrics.reliability`.
    ece: The expected calibration error, for the title.
    path: PNG file to write.

  Returns:
    `path`.
  """
  edges = np.asarray(bins["edges"])
  width = 1.0 / len(edges)
  count = np.asarray(bins["count"])
  filled = count > 0
  fig = Figure(figsize=(4.4, 4), layout="constrained")
  ax = fig.subplots()
  ax.bar(edges[filled], np.asarray(bins["accuracy"])[filled], width=width,
         align="edge", edgecolor="black", alpha=0.8, label="accuracy")
  ax.bar(edges[filled], np.asarray(bins["confidence"])[filled], width=width,
         align="edge", fill=False, edgecolor="red", hatch="//",
         label="confidence")
  for edge, n in zip(edges[filled], count[filled], strict=True):
    ax.text(edge + width / 2, 0.02, str(n), ha="center", va="bottom",
            fontsize=6, bbox={"facecolor": "white", "edgecolor": "none",
                              "pad": 0.5})
  ax.plot([0, 1], [0, 1], "k:", label="calibrated")
  ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy",
         xlabel="confidence (top probability), n per bin",
         title=f"reliability, ECE = {ece:.2%}")
  ax.legend(loc="upper left")
  return _save(fig, path)


def write_all(out: str, metrics: dict[str, Any]) -> list[str]:
  """Writes ``loss.png``, ``confusion.png`` and ``reliability.png``.

  Args:
    out: The run's folder.
    metrics: The run's metrics (`history`, `test_target_entropy_nats`,
      `confusion_matrix`, `reliability`, `test_ece`).

  Returns:
    The paths written.
  """
  return [
      loss_curves(metrics["history"], os.path.join(out, "loss.png"),
                  floor=metrics["test_target_entropy_nats"]),
      confusion(metrics["confusion_matrix"], os.path.join(out, "confusion.png")),
      reliability_diagram(metrics["reliability"], metrics["test_ece"],
                          os.path.join(out, "reliability.png")),
  ]
