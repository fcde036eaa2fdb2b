"""Data for the demo: scikit-learn's digits, or the user's own ``.npz`` file.

Everything here is plain NumPy. A bad user file raises :class:`DataError`
whose message is one line saying what is wrong; the command line prints it
and exits with status 2.
"""

import dataclasses
import os
import zipfile

import numpy as np

_REQUIRED_KEYS = ("x", "y")


class DataError(ValueError):
  """A data file that cannot be used; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A stratified train/test split.

  Attributes:
    x_train: Float32 inputs, shape `(n_train, *input_shape)`.
    y_train: Int32 labels in `[0, num_classes)`, shape `(n_train,)`.
    x_test: Float32 inputs, shape `(n_test, *input_shape)`.
    y_test: Int32 labels, shape `(n_test,)`.
    num_classes: One more than the largest label.
    name: Where the data came from, for the report.
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one example."""
    return tuple(self.x_train.shape[1:])


def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns scikit-learn's handwritten digits as 8x8 images.

  The data set ships with scikit-learn, so nothing is downloaded.

  Returns:
    `(x, y)`: float32 images of shape `(1797, 8, 8)` with values in
    `[0, 16]`, and int32 labels `0..9` of shape `(1797,)`.

  Examples:
    >>> x, y = load_digits()
    >>> x.shape, y.shape, int(y.max())
    ((1797, 8, 8), (1797,), 9)
  """
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  return digits.images.astype(np.float32), digits.target.astype(np.int32)


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks a user's ``.npz`` file with arrays `x` and `y`.

  The file is opened with ``allow_pickle=False``, so it can hold only plain
  numeric arrays.

  Args:
    path: A NumPy ``.npz`` archive with `x` (features of shape `(n, d)` or
      images of shape `(n, h, w)` or `(n, h, w, c)`) and `y` (non-negative
      integer labels of shape `(n,)`).

  Returns:
    `(x, y)` as float32 and int32 arrays.

  Raises:
    DataError: If the file is missing, is not an ``.npz`` archive, lacks `x`
      or `y`, holds labels that are not integers, or `x` and `y` differ in
      length. The message names the file and the problem in one line.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise DataError(f"{path}: no such file")
  if os.path.isdir(path):
    raise DataError(f"{path}: is a directory, not an .npz file")
  if not zipfile.is_zipfile(path):
    raise DataError(
        f"{path}: not an .npz file (expected a NumPy archive written by"
        " np.savez)"
    )
  try:
    with np.load(path, allow_pickle=False) as archive:
      missing = [k for k in _REQUIRED_KEYS if k not in archive.files]
      if missing:
        found = ", ".join(repr(k) for k in archive.files) or "none"
        raise DataError(
            f"{path}: missing key(s) {', '.join(repr(k) for k in missing)};"
            f" expected 'x' (inputs) and 'y' (integer labels), found {found}"
        )
      x, y = archive["x"], archive["y"]
  except DataError:
    raise
  except ValueError as e:  # Object arrays need pickle, which is refused.
    raise DataError(
        f"{path}: cannot read without pickle ({_first_line(e)});"
        " store plain numeric arrays"
    ) from None
  except (OSError, zipfile.BadZipFile, EOFError) as e:
    raise DataError(
        f"{path}: not a readable .npz file ({_first_line(e)})"
    ) from None
  return _check_arrays(path, x, y)


def _first_line(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__


def _check_arrays(
    path: str, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Checks dtypes and shapes of `x` and `y`; returns them cast."""
  if y.dtype.kind not in "iu":
    raise DataError(
        f"{path}: labels 'y' must be integers, got dtype {y.dtype}"
    )
  if y.ndim != 1:
    raise DataError(
        f"{path}: labels 'y' must be one-dimensional, got shape {y.shape}"
    )
  if x.dtype.kind not in "biuf":
    raise DataError(f"{path}: inputs 'x' must be numeric, got dtype {x.dtype}")
  if x.ndim < 2:
    raise DataError(
        f"{path}: inputs 'x' must have shape (n, ...) with one row per"
        f" example, got shape {x.shape}"
    )
  if x.shape[0] != y.shape[0]:
    raise DataError(
        f"{path}: lengths disagree: 'x' has {x.shape[0]} examples but 'y' has"
        f" {y.shape[0]} labels"
    )
  if y.size and y.min() < 0:
    raise DataError(
        f"{path}: labels 'y' must be non-negative, found {int(y.min())}"
    )
  x = x.astype(np.float32)
  if not np.all(np.isfinite(x)):
    raise DataError(f"{path}: inputs 'x' contain NaN or infinity")
  return x, y.astype(np.int32)


def split(
    x: np.ndarray,
    y: np.ndarray,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
    name: str = "data",
) -> Dataset:
  """Splits into train and test sets, stratified by label.

  Args:
    x: Inputs, one row per example.
    y: Integer labels of shape `(n,)`.
    test_fraction: Share of the examples held out for testing.
    seed: Seed of the split; the same seed gives the same split.
    name: Where the data came from, for the report.

  Returns:
    The :class:`Dataset`.

  Raises:
    DataError: If some class has fewer than two examples, or the test set
      would be too small to hold every class.

  Examples:
    >>> x = np.arange(40, dtype=np.float32).reshape(20, 2)
    >>> y = np.repeat(np.arange(2), 10)
    >>> data = split(x, y, test_fraction=0.5)
    >>> data.x_train.shape, np.bincount(data.y_test).tolist()
    ((10, 2), [5, 5])
  """
  from sklearn import model_selection  # pylint: disable=g-import-not-at-top

  counts = np.bincount(y)
  present = np.flatnonzero(counts)
  if present.size < 2:
    raise DataError(f"{name}: need at least two classes, found {present.size}")
  rare = present[counts[present] < 2]
  if rare.size:
    raise DataError(
        f"{name}: class {int(rare[0])} has only one example; a stratified"
        " split needs at least two per class"
    )
  n_test = int(np.ceil(test_fraction * len(y)))
  if n_test < present.size or len(y) - n_test < present.size:
    raise DataError(
        f"{name}: {len(y)} examples are too few to split {present.size}"
        f" classes with test fraction {test_fraction}"
    )
  x_train, x_test, y_train, y_test = model_selection.train_test_split(
      x, y, test_size=n_test, stratify=y, random_state=seed
  )
  return Dataset(
      x_train=np.ascontiguousarray(x_train),
      y_train=np.ascontiguousarray(y_train),
      x_test=np.ascontiguousarray(x_test),
      y_test=np.ascontiguousarray(y_test),
      num_classes=int(y.max()) + 1,
      name=name,
  )


def load_dataset(
    path: str | os.PathLike | None = None,
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Dataset:
  """Loads the digits, or the user's ``.npz`` file, and splits it.

  Args:
    path: A ``.npz`` file with `x` and `y` (see :func:`load_npz`), or None
      for scikit-learn's digits.
    test_fraction: Share of the examples held out for testing.
    seed: Seed of the stratified split.

  Returns:
    The :class:`Dataset`.

  Raises:
    DataError: If the file cannot be used.
  """
  if path is None:
    x, y = load_digits()
    name = "digits"
  else:
    x, y = load_npz(path)
    name = os.path.basename(os.fspath(path))
  return split(x, y, test_fraction=test_fraction, seed=seed, name=name)


def batch_indices(n: int, batch_size: int, rng: np.random.Generator):
  """Yields shuffled index batches of exactly `batch_size`, dropping the rest.

  Every batch has the same shape, so a jitted step compiles once. The
  dropped remainder differs from epoch to epoch, so no example is left out
  for good.

  Args:
    n: Number of examples.
    batch_size: Examples per batch; at most `n`.
    rng: The generator that shuffles.

  Yields:
    Int arrays of shape `(batch_size,)`.

  Examples:
    >>> rng = np.random.default_rng(0)
    >>> [b.shape for b in batch_indices(10, 4, rng)]
    [(4,), (4,)]
  """
  order = rng.permutation(n)
  for start in range(0, n - batch_size + 1, batch_size):
    yield order[start : start + batch_size]
