"""Saving and loading a trained model without pickle.

A checkpoint is a folder with two files:

* ``model.json``: the :class:`~jxent.demo.model.ModelConfig`;
* ``state.npz``: every array of the model's ``nnx.state``, one entry per
  variable, named by its path (``hidden/0/kernel``).

Loading rebuilds the model from the config and fills in the arrays, read
with ``allow_pickle=False``; names and shapes must match exactly.
"""

import json
import os

import jax
import numpy as np
from flax import nnx

from jxent.demo import data as data_lib
from jxent.demo import model as model_lib

CONFIG_FILE = "model.json"
STATE_FILE = "state.npz"


def _flatten(tree, prefix: str = "") -> dict[str, object]:
  """A nested dict of leaves as ``{"a/b/c": leaf}``."""
  flat = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      flat.update(_flatten(value, name + "/"))
    else:
      flat[name] = value
  return flat


def _fill(tree, arrays, prefix: str = ""):
  """The nested dict `tree` with each leaf replaced from `arrays`."""
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out[key] = _fill(value, arrays, name + "/")
      continue
    if name not in arrays:
      raise ValueError(f"checkpoint has no array {name!r}")
    array = arrays[name]
    if array.shape != value.shape or array.dtype != value.dtype:
      raise ValueError(
          f"checkpoint array {name!r} is {array.dtype}{list(array.shape)},"
          f" the model expects {value.dtype}{list(value.shape)}"
      )
    out[key] = array
  return out


def save(
    directory: str | os.PathLike,
    model: nnx.Module,
    config: model_lib.ModelConfig,
) -> str:
  """Writes `model` and its `config` to `directory`.

  Args:
    directory: Folder to write to; created if needed.
    model: The model built from `config`.
    config: The recipe that rebuilds the model.

  Returns:
    The directory, as a string.
  """
  directory = os.fspath(directory)
  os.makedirs(directory, exist_ok=True)
  state = nnx.to_pure_dict(nnx.state(model))
  arrays = {k: np.asarray(v) for k, v in _flatten(state).items()}
  np.savez(os.path.join(directory, STATE_FILE), **arrays)
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(config.to_json(), f, indent=2)
  return directory


def load(
    directory: str | os.PathLike,
) -> tuple[nnx.Module, model_lib.ModelConfig]:
  """Rebuilds the model saved by :func:`save`.

  Args:
    directory: The checkpoint folder.

  Returns:
    `(model, config)`; the model predicts exactly as the saved one did.

  Raises:
    OSError: If ``model.json`` cannot be opened.
    ValueError: If ``model.json`` is not a model config, ``state.npz`` is
      missing or unreadable (see :func:`jxent.demo.data.read_npz`), or its
      arrays do not match the model the config describes.

  Examples:
    >>> import tempfile
    >>> config = model_lib.ModelConfig("mlp", (4,), 3, (8,))
    >>> model = model_lib.make_model(config, seed=1)
    >>> with tempfile.TemporaryDirectory() as d:
    ...   restored, _ = load(save(d, model, config))
    >>> x = np.ones((2, 4), np.float32)
    >>> bool((restored(x) == model(x)).all())
    True
  """
  directory = os.fspath(directory)
  path = os.path.join(directory, CONFIG_FILE)
  with open(path) as f:
    try:
      config = model_lib.ModelConfig.from_json(json.load(f))
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: not a model config ({e!r})") from None
  model = model_lib.make_model(config)
  state = nnx.state(model)
  arrays = data_lib.read_npz(os.path.join(directory, STATE_FILE))
  template = jax.tree.map(np.asarray, nnx.to_pure_dict(state))
  pure = _fill(template, arrays)
  unused = set(arrays) - set(_flatten(template))
  if unused:
    raise ValueError(f"checkpoint has unexpected arrays {sorted(unused)}")
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model, config
