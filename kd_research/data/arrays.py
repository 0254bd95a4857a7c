"""NumPy arrays as a dataset: ``--config.dataset=npz:PATH``.

The file holds ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the names of Keras'
``load_data``), images as [N, H, W] or [N, H, W, C] with pixel values in [0, 255], integer
labels from 0, and optionally ``classes`` (one name per label). The Python API
(``kd_research.distill(data=(x_train, y_train, x_test, y_test))``) writes the arrays it is
given into such a file, named by the digest of its contents, so that a run directory
records which data it trained on and a rerun with the same arrays resumes it.
"""

import hashlib
import io
import os
import zipfile

from absl import logging
import numpy as np

from kd_research.common import fileio
from kd_research.common.errors import UserError
from kd_research.data import sources
from kd_research.data import splits as splits_lib

KEYS = ("x_train", "y_train", "x_test", "y_test")


def as_images(x, what):
  """uint8 [N, H, W, C] pixels from [N, H, W] or [N, H, W, C] values in [0, 255].

  Float images whose largest value is at most 1 (``x / 255``, the habit of Keras tutorials)
  are scaled by 255 with a log line: rounded as they are, they would become {0, 1}."""
  x = np.asarray(x)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise UserError(f"{what}: images must be [N, H, W] or [N, H, W, C], got shape {x.shape}.")
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.number) or (x.size and (x.min() < 0 or x.max() > 255)):
      raise UserError(f"{what}: pixel values must lie in [0, 255] (models rescale inside), got "
                      f"{x.dtype} values from {x.min()} to {x.max()}. Pass the uint8 pixels, "
                      "or floats in [0, 1] (scaled by 255), not standardised values.")
    if np.issubdtype(x.dtype, np.floating) and x.size and x.max() <= 1.0:
      logging.warning("%s: float pixels in [0, %g] read as x / 255 and scaled by 255 to "
                      "[0, 255] (pass uint8 pixels to skip this).", what, float(x.max()))
      x = x * 255.0
    x = np.round(x).astype(np.uint8)
  return x


def as_labels(y, n, what):
  """int32 [N] labels (a [N, 1] column is accepted) for ``n`` images."""
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise UserError(f"{what}: labels must be integers of shape [N] (class indices, not one-hot), "
                    f"got {y.dtype} of shape {y.shape}.")
  if len(y) != n:
    raise UserError(f"{what}: {n} images but {len(y)} labels.")
  return y.astype(np.int32)


def write(directory, x_train, y_train, x_test, y_test, classes=()):
  """Writes the arrays as DIRECTORY/arrays-<digest>.npz (once per content); returns its path."""
  arrays = {"x_train": as_images(x_train, "x_train"), "x_test": as_images(x_test, "x_test")}
  arrays["y_train"] = as_labels(y_train, len(arrays["x_train"]), "y_train")
  arrays["y_test"] = as_labels(y_test, len(arrays["x_test"]), "y_test")
  if classes:
    arrays["classes"] = np.asarray([str(c) for c in classes])
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  data = buffer.getvalue()
  path = os.path.join(directory, f"arrays-{hashlib.sha256(data).hexdigest()[:16]}.npz")
  if not os.path.exists(path):
    os.makedirs(directory, exist_ok=True)
    fileio.atomic_write_bytes(path, data)
  return path


def open_npz(path, spec):
  """The file's train and test splits (in memory, like the built-ins)."""
  if not os.path.isfile(path):
    raise UserError(f"config.dataset=npz:{path}: no such file.")
  try:
    with np.load(path, allow_pickle=False) as f:
      missing = [k for k in KEYS if k not in f.files]
      if missing:
        raise UserError(f"config.dataset=npz:{path} lacks {', '.join(missing)}; it must hold "
                        f"{', '.join(KEYS)} (and optionally classes).")
      arrays = {k: f[k] for k in f.files}
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    raise UserError(f"config.dataset=npz:{path} is not a readable .npz file: {e}.") from None
  train_x, test_x = as_images(arrays["x_train"], "x_train"), as_images(arrays["x_test"], "x_test")
  train_y = as_labels(arrays["y_train"], len(train_x), "y_train")
  test_y = as_labels(arrays["y_test"], len(test_x), "y_test")
  classes = tuple(str(c) for c in arrays.get("classes", ()))
  num_classes = spec.data.num_classes or len(classes) or int(max(train_y.max(), test_y.max())) + 1
  raw = sources.RawData(train_x, train_y, test_x, test_y, num_classes, f"npz:{path}")
  sources.check_arrays(raw)
  if classes and len(classes) != num_classes:
    raise UserError(f"npz:{path}: {len(classes)} class names for {num_classes} classes.")
  return sources.Opened(splits_lib.ArraySplit(train_x, train_y),
                        splits_lib.ArraySplit(test_x, test_y), num_classes, classes, raw.source)


sources.register(sources.SpecSource("npz", open_npz, "npz:PATH"))
