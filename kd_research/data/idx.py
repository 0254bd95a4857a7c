"""IDX datasets (Fashion-MNIST, MNIST): the four IDX files, raw or gzip."""

import gzip
import os

import numpy as np

from kd_research.common.errors import UserError
from kd_research.data import sources

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _find_file(directory, base):
  for candidate in (base, base + ".gz"):
    path = os.path.join(directory, candidate)
    if os.path.isfile(path):
      return path
  return None


def read_idx(path, expected_ndim):
  """Reads one IDX file (raw or gzip) into a uint8 array, checking magic number and size."""
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
  except PermissionError:
    raise UserError(f"Cannot read {path}: permission denied. Make the file readable or point "
                    "--config.run.data_dir elsewhere.")
  except (OSError, EOFError) as e:
    raise UserError(f"Cannot read IDX file {path}: {e}. The file is corrupt or truncated; "
                    "reinstall the dataset.")
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_ndim:
    raise UserError(f"{path} is not a uint8 IDX file with {expected_ndim} dimension(s): expected "
                    f"magic bytes 00 00 08 0{expected_ndim}, got {raw[:4].hex(' ') or 'nothing'}.")
  header = 4 + 4 * expected_ndim
  if len(raw) < header:
    raise UserError(f"{path} is truncated: {len(raw)} bytes, shorter than its header.")
  dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_ndim))
  expected = header + int(np.prod(dims))
  if len(raw) != expected:
    raise UserError(f"{path} is truncated or padded: header says shape {dims} "
                    f"({expected} bytes), file has {len(raw)} bytes. Reinstall the dataset.")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_idx_dir(directory):
  """The IDX dataset in ``directory``, or None when its four files are not all there."""
  paths = {key: _find_file(directory, base) for key, base in _IDX_FILES.items()}
  if not all(paths.values()):
    return None
  arrays = {key: read_idx(path, 3 if key.endswith("_x") else 1) for key, path in paths.items()}
  for split in ("train", "test"):
    if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
      raise UserError(f"{paths[split + '_x']} has {len(arrays[split + '_x'])} images but "
                      f"{paths[split + '_y']} has {len(arrays[split + '_y'])} labels.")
  return sources.RawData(arrays["train_x"][..., None], arrays["train_y"].astype(np.int32),
                 arrays["test_x"][..., None], arrays["test_y"].astype(np.int32), 10, directory)


sources.register(sources.Source(
    "fashion_mnist", load_idx_dir, ("fashion-mnist", "fashion_mnist"),
    "install Debian's package: sudo apt-get install dataset-fashion-mnist; or, on a machine "
    "with internet: python -c 'import keras; keras.datasets.fashion_mnist.load_data()' "
    "(caches the IDX .gz files)"))
sources.register(sources.Source(
    "mnist", load_idx_dir, ("mnist",),
    "put the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in --config.run.data_dir"))
