"""The demo's Flax NNX classifiers: an MLP and a small CNN.

Each model standardises its own input with statistics taken from the
training set and stored as non-trainable variables, so a checkpoint carries
everything needed to predict. :class:`ModelConfig` is the JSON-able recipe
that rebuilds a model for loading.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jxent.demo.config import MODELS as MODELS


class Statistic(nnx.Variable):
  """A non-trainable array computed from data (input mean and scale)."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to rebuild a model, apart from its weights.

  Attributes:
    name: "mlp" or "cnn".
    input_shape: Shape of one example; the CNN needs `(h, w)` or `(h, w, c)`,
      channels last (the MLP flattens any layout).
    num_classes: Number of outputs.
    widths: Hidden widths of the MLP, or convolution channels of the CNN.
  """

  name: str
  input_shape: tuple[int, ...]
  num_classes: int
  widths: tuple[int, ...]

  def to_json(self) -> dict[str, Any]:
    """Returns a dict that `json.dump` accepts."""
    return dataclasses.asdict(self) | {
        "input_shape": list(self.input_shape),
        "widths": list(self.widths),
    }

  @classmethod
  def from_json(cls, d: dict[str, Any]) -> "ModelConfig":
    """Rebuilds the config from :meth:`to_json`'s dict."""
    return cls(
        name=str(d["name"]),
        input_shape=tuple(int(n) for n in d["input_shape"]),
        num_classes=int(d["num_classes"]),
        widths=tuple(int(n) for n in d["widths"]),
    )


class Standardize(nnx.Module):
  """Subtracts a per-feature mean and divides by a per-feature scale."""

  def __init__(self, mean: np.ndarray, scale: np.ndarray):
    self.mean = Statistic(jnp.asarray(mean, jnp.float32))
    self.scale = Statistic(jnp.asarray(scale, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    mean, scale = self.mean[...][None], self.scale[...][None]
    return (x - mean) / scale


class MLP(nnx.Module):
  """Flatten, then dense layers with GELU, then class logits."""

  def __init__(
      self, config: ModelConfig, mean: np.ndarray, scale: np.ndarray,
      *, rngs: nnx.Rngs,
  ):
    self.standardize = Standardize(mean, scale)
    sizes = (int(np.prod(config.input_shape)), *config.widths)
    self.hidden = nnx.List(
        [nnx.Linear(i, o, rngs=rngs) for i, o in zip(sizes[:-1], sizes[1:], strict=True)]
    )
    self.head = nnx.Linear(sizes[-1], config.num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.standardize(x).reshape(x.shape[0], -1)
    for layer in self.hidden:
      x = nnx.gelu(layer(x))
    return self.head(x)


class CNN(nnx.Module):
  """3x3 convolutions with ReLU, 2x2 max pools, then a dense head."""

  def __init__(
      self, config: ModelConfig, mean: np.ndarray, scale: np.ndarray,
      *, rngs: nnx.Rngs,
  ):
    self.standardize = Standardize(mean, scale)
    h, w, c = _image_shape(config.input_shape)
    channels = (c, *config.widths)
    self.convs = nnx.List([
        nnx.Conv(i, o, kernel_size=(3, 3), rngs=rngs)
        for i, o in zip(channels[:-1], channels[1:], strict=True)
    ])
    for _ in config.widths:
      h, w = max(h // 2, 1), max(w // 2, 1)
    self.head = nnx.Linear(h * w * channels[-1], config.num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.standardize(x).reshape(x.shape[0], *_image_shape(x.shape[1:]))
    for conv in self.convs:
      x = nnx.relu(conv(x))
      window = (min(2, x.shape[1]), min(2, x.shape[2]))
      x = nnx.max_pool(x, window_shape=window, strides=window)
    return self.head(x.reshape(x.shape[0], -1))


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
  """`(h, w)` or `(h, w, c)` as `(h, w, c)`; refuses `(c, h, w)`."""
  if len(shape) == 2:
    return (*shape, 1)
  if len(shape) == 3 and shape[0] in (1, 3, 4) and min(shape[1:]) > 4:
    raise ValueError(
        f"--model cnn reads images as (n, h, w, c), and 'x' of shape (n,"
        f" {', '.join(map(str, shape))}) looks channels-first; transpose it"
        " to (n, h, w, c), e.g. with np.moveaxis(x, 1, -1)"
    )
  if len(shape) == 3:
    return tuple(shape)
  raise ValueError(
      "--model cnn needs images: 'x' of shape (n, h, w) or (n, h, w, c),"
      f" got examples of shape {tuple(shape)}"
  )


def default_widths(name: str) -> tuple[int, ...]:
  """The default hidden widths (MLP) or channels (CNN)."""
  return {"mlp": (256, 256), "cnn": (32, 64)}[name]


def make_model(
    config: ModelConfig,
    *,
    mean: np.ndarray | None = None,
    scale: np.ndarray | None = None,
    seed: int = 0,
) -> nnx.Module:
  """Builds a freshly initialised model.

  Args:
    config: Which model, and its sizes.
    mean: Per-feature input mean, shape `config.input_shape`; zeros if None.
    scale: Per-feature input scale, same shape; ones if None.
    seed: Seed of the initial weights.

  Returns:
    An :class:`MLP` or :class:`CNN` mapping a batch of shape
    `(n, *input_shape)` to logits of shape `(n, num_classes)`.

  Raises:
    ValueError: If the name is unknown, or the CNN is given non-images.

  Examples:
    >>> config = ModelConfig("mlp", (8, 8), 10, (16,))
    >>> model = make_model(config)
    >>> model(jnp.zeros((3, 8, 8))).shape
    (3, 10)
  """
  if config.name not in MODELS:
    raise ValueError(f"unknown model {config.name!r}; choose from {MODELS}")
  if config.name == "cnn":
    _image_shape(config.input_shape)  # Fail early on non-images.
  shape = config.input_shape
  mean = np.zeros(shape) if mean is None else mean
  scale = np.ones(shape) if scale is None else scale
  cls = MLP if config.name == "mlp" else CNN
  return cls(config, mean, scale, rngs=nnx.Rngs(seed))


def input_statistics(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature mean and scale for standardising inputs like `x`.

  The scale is the per-feature standard deviation, floored at a tenth of
  the overall standard deviation, so a feature that is almost constant in
  training (an always-blank border pixel) is not blown up at test time.

  Args:
    x: Training inputs of shape `(n, *input_shape)`.

  Returns:
    `(mean, scale)`, each of shape `input_shape`, float32.

  Examples:
    >>> mean, scale = input_statistics(np.array([[0.0, 5.0], [2.0, 5.0]]))
    >>> mean.tolist(), np.round(scale, 4).tolist()
    ([1.0, 5.0], [1.0, 0.2121])
  """
  x = np.asarray(x, np.float64)
  mean = x.mean(axis=0)
  floor = max(0.1 * float(x.std()), 1e-6)
  scale = np.maximum(x.std(axis=0), floor)
  return mean.astype(np.float32), scale.astype(np.float32)
