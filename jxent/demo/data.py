"""Data for the demo: scikit-learn's digits, or the user's own ``.npz`` file.

Everything here is plain NumPy. A bad user file raises :class:`DataError`
whose message is one line saying what is wrong; the command line prints it
and exits with status 2.
"""

import dataclasses
import os
import zipfile

import numpy as np


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


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every array in a NumPy ``.npz`` archive, read without pickle.

  Args:
    path: The archive, as written by `np.savez`.

  Returns:
    The arrays by name.

  Raises:
    ValueError: If the file is missing or not an archive, or a member is
      not a plain array (garbage bytes, objects that need pickle). The
      message names the file and the problem in one line.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = "a folder, not a file" if os.path.isdir(path) else "no such file"
    raise ValueError(f"{path}: {what}")
  if not zipfile.is_zipfile(path):
    raise ValueError(f"{path}: not an .npz file (expected a NumPy archive"
                     " written by np.savez)")
  arrays, name = {}, None
  try:
    with np.load(path, allow_pickle=False) as archive:
      for name in archive.files:
        arrays[name] = archive[name]
  except Exception as e:  # Whatever np.load's zip, zlib, header readers raise.
    reason = (str(e) or type(e).__name__).splitlines()[0]
    raise ValueError(f"{path}: cannot read {name!r} ({reason})") from None
  for name, array in arrays.items():
    if not isinstance(array, np.ndarray):  # np.load gives bytes for non-.npy.
      raise ValueError(f"{path}: {name!r} holds no NumPy array")
  return arrays


def load_npz(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads and checks a user's ``.npz`` file with arrays `x` and `y`.

  Sparse labels such as `{0, 1, 1000000}` are refused, not renumbered, so
  that output `k` of the model is label `k` of the file;
  ``np.unique(y, return_inverse=True)`` renumbers them.

  Args:
    path: A ``.npz`` archive (see :func:`read_npz`) with `x`, finite
      features of shape `(n, d)` or images of shape `(n, h, w)` or
      `(n, h, w, c)`, channels last; and `y`, integer labels of shape `(n,)`
      that take every value in `0..K-1`.

  Returns:
    `(x, y)` as float32 and int32 arrays.

  Raises:
    DataError: If the file or its arrays break these rules, with one line
      naming the file and the problem.
  """
  path = os.fspath(path)
  try:
    arrays = read_npz(path)
  except ValueError as e:
    raise DataError(str(e)) from None
  problem = _problem(arrays)
  if problem:
    raise DataError(f"{path}: {problem}")
  return arrays["x"].astype(np.float32), arrays["y"].astype(np.int32)


def _problem(arrays: dict[str, np.ndarray]) -> str | None:
  """What makes the arrays of :func:`load_npz` unusable; None if nothing."""
  if "x" not in arrays or "y" not in arrays:
    return ("expected arrays 'x' (inputs) and 'y' (integer labels), found"
            f" {', '.join(map(repr, arrays)) or 'none'}")
  x, y = arrays["x"], arrays["y"]
  if y.dtype.kind not in "iu" or y.ndim != 1:
    return ("labels 'y' must be integers of shape (n,), got"
            f" {y.dtype}{list(y.shape)}")
  if x.dtype.kind not in "biuf" or x.ndim < 2:
    return ("inputs 'x' must be numbers of shape (n, ...), got"
            f" {x.dtype}{list(x.shape)}")
  if len(x) != len(y):
    return (f"lengths disagree: 'x' has {len(x)} examples but 'y' has"
            f" {len(y)} labels")
  with np.errstate(over="ignore"):  # Overflow to inf is refused below.
    x = x.astype(np.float32)
  if not np.isfinite(x).all():
    return "inputs 'x' hold NaN, infinity or values beyond float32"
  classes = np.unique(y)
  if classes.size and (classes[0] != 0 or classes[-1] != classes.size - 1):
    return (f"labels 'y' must be 0..K-1 with every class present, found"
            f" {classes.size} distinct labels from {classes[0]} to"
            f" {classes[-1]}; renumber them with np.unique(y,"
            " return_inverse=True)")
  return None


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
  n_test = int(np.ceil(test_fraction * len(y)))
  if counts.size < 2:
    raise DataError(f"{name}: need at least two classes, found {counts.size}")
  if counts.min() < 2:
    raise DataError(
        f"{name}: class {counts.argmin()} has {counts.min()} example(s); a"
        " stratified split needs at least two per class"
    )
  if min(n_test, len(y) - n_test) < counts.size:
    raise DataError(
        f"{name}: {len(y)} examples are too few to split {counts.size}"
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
  x, y = load_digits() if path is None else load_npz(path)
  name = "digits" if path is None else os.path.basename(os.fspath(path))
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
