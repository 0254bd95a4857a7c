"""CIFAR-10 and CIFAR-100 from their "python version" pickled batches (safely unpickled)."""

import os
import pickle

import numpy as np

from kd_research.common.errors import UserError
from kd_research.data import sources


class CifarUnpickler(pickle.Unpickler):
  """Unpickles only what CIFAR "python version" batches hold; refuses everything else.

  A plain ``pickle.load`` calls any importable callable a file names (``__reduce__``),
  so a crafted file in a data directory could run code. CIFAR batches are dicts of
  bytes/str keys to lists of ints, bytes/str and NumPy uint8 arrays; rebuilding those
  arrays needs only the NumPy reconstructors below. Any other global is refused.
  """

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
      ("numpy", "ndarray"), ("numpy", "dtype"),
      ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
      ("builtins", "bytearray"), ("_codecs", "encode"),
  }

  def find_class(self, module, name):
    if (module, name) in self._ALLOWED:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"refused to load global {module}.{name}: a CIFAR batch holds only dicts, lists, "
        "bytes/str, ints and NumPy arrays")


def _unpickle(path):
  try:
    with open(path, "rb") as f:
      return CifarUnpickler(f, encoding="bytes").load()
  except PermissionError:
    raise UserError(f"Cannot read {path}: permission denied.")
  except pickle.UnpicklingError as e:
    raise UserError(f"{path} is not a plain CIFAR python-version batch and was not loaded "
                    f"({e}). The file may have been tampered with; re-extract the dataset "
                    "archive.")
  except Exception as e:  # pickle raises many types on corrupt input.
    raise UserError(f"{path} is not a valid CIFAR python-version batch ({type(e).__name__}: {e}). "
                    "Re-extract the dataset archive.")


def _cifar_arrays(path, label_key):
  batch = _unpickle(path)
  if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
    raise UserError(f"{path} is not a CIFAR batch: expected a dict with keys b'data' and "
                    f"{label_key!r}.")
  data = np.asarray(batch[b"data"], np.uint8)
  if data.ndim != 2 or data.shape[1] != 3072:
    raise UserError(f"{path}: CIFAR data must have shape [N, 3072], got {data.shape}.")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, np.asarray(batch[label_key], np.int32)


def _load_cifar_dir(directory, name):
  if name == "cifar10":
    train_files = [os.path.join(directory, f"data_batch_{i}") for i in range(1, 6)]
    test_file, label_key, classes = os.path.join(directory, "test_batch"), b"labels", 10
  else:
    train_files = [os.path.join(directory, "train")]
    test_file, label_key, classes = os.path.join(directory, "test"), b"fine_labels", 100
  if not all(os.path.isfile(f) for f in train_files + [test_file]):
    return None
  parts = [_cifar_arrays(f, label_key) for f in train_files]
  test_x, test_y = _cifar_arrays(test_file, label_key)
  return sources.RawData(np.concatenate([p[0] for p in parts]),
                         np.concatenate([p[1] for p in parts]),
                         test_x, test_y, classes, directory)


def _loader(name):
  return lambda directory: _load_cifar_dir(directory, name)


sources.register(sources.Source(
    "cifar10", _loader("cifar10"), ("cifar-10-batches-py",),
    "download and unpack cifar-10-python.tar.gz (the 'python version') so that "
    "cifar-10-batches-py/ is inside --config.run.data_dir", keras_cache_root=True))
sources.register(sources.Source(
    "cifar100", _loader("cifar100"), ("cifar-100-python",),
    "download and unpack cifar-100-python.tar.gz so that cifar-100-python/ is inside "
    "--config.run.data_dir", keras_cache_root=True))
