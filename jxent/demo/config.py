"""The demo's settings: one frozen dataclass, from which the flags are built.

Each field is written once: its default, its help text and its check live in
the field's metadata, and ``python -m jxent.demo`` makes one flag of each
field marked as a flag (``batch_size`` becomes ``--batch-size``). This
module needs only the standard library, so the command line can answer
``--help`` and refuse bad settings without the demo's dependencies.
"""

import dataclasses
import inspect
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

MODELS = ("mlp", "cnn")
# Where runs without an output folder go, each in a new folder.
RUNS = "runs"


class ConfigError(ValueError):
  """A setting out of range; the message is one line."""


def _setting(
    default: Any,
    help_text: str,
    valid: tuple[Callable[[Any], bool], str] | None = None,
    *,
    flag: bool = True,
    **argparse_options: Any,
) -> Any:
  """A field whose metadata holds its help, its check and its flag options.

  Args:
    default: The default value.
    help_text: What the setting means, for ``--help`` and the docstring.
    valid: `(predicate, what)`: a value is refused unless `predicate(value)`;
      the message says the setting "must be `what`".
    flag: Whether the command line has a flag for it.
    **argparse_options: Passed on to `add_argument` (`choices`, `metavar`).

  Returns:
    A `dataclasses.field`.
  """
  return dataclasses.field(default=default, metadata={
      "help": help_text, "valid": valid, "flag": flag,
      "argparse": argparse_options,
  })


_AT_LEAST_ONE = (lambda v: v >= 1, "at least 1")
_SEED = (lambda v: 0 <= v < 2**32, "in [0, 2**32)")
# Written so that NaN fails each comparison.
_POSITIVE = (lambda v: 0 < v < math.inf, "a positive finite number")
_NON_NEGATIVE = (lambda v: 0 <= v < math.inf, "a finite number >= 0")


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of one run; :func:`check` says whether they are usable."""

  epochs: int = _setting(20, "passes over the training set", _AT_LEAST_ONE)
  batch_size: int = _setting(
      64, "examples per step (capped at the training size)", _AT_LEAST_ONE)
  lr: float = _setting(
      3e-3, "peak learning rate of AdamW's warmup+cosine schedule", _POSITIVE)
  weight_decay: float = _setting(
      1e-4, "AdamW's decoupled weight decay", _NON_NEGATIVE)
  seed: int = _setting(
      0, "seed of the initial weights and the batch order, in [0, 2**32)",
      _SEED)
  model: str = _setting(
      "mlp", "classifier: mlp (256-256, GELU) or cnn (two 3x3 conv blocks)",
      (lambda v: v in MODELS, f"one of {', '.join(MODELS)}"), choices=MODELS)
  label_smoothing: float = _setting(
      0.1, "label smoothing of the targets, in [0, 1)",
      (lambda v: 0 <= v < 1, "in [0, 1)"))
  data: str | None = _setting(
      None, "your own data: a .npz file with x (features [N, D], or images"
      " [N, H, W] or [N, H, W, C], channels last) and y (integer labels"
      " 0..K-1, every class present: sparse labels are refused, not"
      " renumbered) (default: scikit-learn's digits)",
      metavar="PATH.npz")
  out: str | None = _setting(
      None, "output folder: an existing folder, or a new one inside an"
      " existing folder (default: a new folder under runs/)", metavar="DIR")
  plots: bool = _setting(True, "write the PNG figures")
  test_fraction: float = _setting(
      0.25, "share of the data held out for testing",
      (lambda v: 0 < v < 1, "in (0, 1)"), flag=False)
  split_seed: int = _setting(
      0, "seed of the stratified train/test split, apart from `seed` so that"
      " runs with different seeds are scored on the same test set", _SEED,
      flag=False)
  warmup_fraction: float = _setting(
      0.1, "share of the steps spent warming the learning rate up",
      (lambda v: 0 <= v <= 1, "in [0, 1]"), flag=False)
  progress: bool | None = _setting(
      None, "show a progress bar; None shows it only on a terminal",
      flag=False)
  verbose: bool = _setting(
      True, "print the summary table at the end", flag=False)


# The attributes are documented from the same help texts as the flags.
Config.__doc__ = "\n".join([
    inspect.cleandoc(Config.__doc__), "", "Attributes:",
    *(f"  {f.name}: {f.metadata['help']}." for f in dataclasses.fields(Config)),
])


def check(config: Config) -> None:
  """Refuses settings out of range and an output folder that cannot be made.

  The output folder (`config.out`, or ``runs/`` where the default run
  folder goes) is tried for real: made if it is new, written to, then
  removed again, so that a folder the system refuses (``/proc/x``, a
  read-only disk) is found before anything is trained. Nothing is left
  behind.

  Args:
    config: The settings.

  Raises:
    ConfigError: With one line naming the setting and the problem.
  """
  for field in dataclasses.fields(config):
    value, valid = getattr(config, field.name), field.metadata["valid"]
    if valid is not None and not valid[0](value):
      name = field.name.replace("_", " ")
      raise ConfigError(f"{name} must be {valid[1]}, got {value!r}")
  out = config.out or RUNS
  parent = os.path.dirname(os.path.abspath(out))
  if os.path.exists(out) and not os.path.isdir(out):
    raise ConfigError(f"output folder {out} is a file, not a folder")
  if not os.path.isdir(parent):
    raise ConfigError(f"output folder {out}: no folder {parent} to make it in")
  problem = _cannot_write(out)
  if problem:
    hint = "" if config.out else "; name another with --out"
    raise ConfigError(f"output folder {out}: cannot write there ({problem})"
                      + hint)


def _cannot_write(folder: str) -> str | None:
  """Why `folder`, or a new folder of that name, cannot be written to.

  Args:
    folder: An existing folder, or a new one in an existing folder.

  Returns:
    None if a file can be written there, else the system's reason. A
    folder made to find out is removed again.
  """
  made = not os.path.isdir(folder)
  try:
    if made:
      os.mkdir(folder)
    try:
      with tempfile.TemporaryFile(dir=folder):
        pass
    finally:
      if made:
        os.rmdir(folder)
  except OSError as e:
    return e.strerror or type(e).__name__
  return None
