"""The arrays a row kernel reads, flattened to rows, with their vmap axes."""

import jax
import jax.numpy as jnp


def row_inputs(logits, mask, class_weights, label_index, targets
               ) -> tuple[str, list[jax.Array], list[int | None]]:
  """The kernels' shared inputs: logits, labels, mask and class weights.

  Args:
    logits: Logits [..., C], classes last.
    mask: Boolean mask of the logits' shape, or None.
    class_weights: Per-class weights [C], or None.
    label_index: Integer labels (class indices), or None.
    targets: Soft labels of the logits' shape, used when `label_index` is
      None.

  Returns:
    `(kind, inputs, axes)`: "integer" or "soft"; the arrays, one row each
    per call of the kernel (the class weights are shared); and their
    `jax.vmap` axes.
  """
  num_classes = logits.shape[-1]
  rows = lambda a: a.reshape(-1, num_classes)  # noqa: E731
  if label_index is not None:
    kind, labels = "integer", label_index.reshape(-1).astype(jnp.int32)
  else:
    assert targets is not None
    kind, labels = "soft", rows(targets)
  inputs: list[jax.Array] = [rows(logits), labels]
  axes: list[int | None] = [0, 0]
  if mask is not None:
    inputs.append(rows(mask).astype(jnp.int8))  # As the kernels read it.
    axes.append(0)
  if class_weights is not None:
    inputs.append(class_weights)
    axes.append(None)
  return kind, inputs, axes
