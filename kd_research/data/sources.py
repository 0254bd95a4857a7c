"""Loads datasets from disk into NumPy arrays: IDX (Fashion-MNIST, MNIST), CIFAR pickles, synthetic.

Nothing here downloads. Each dataset is looked up in order: the explicit data dir,
``$KD_DATA_DIR``, Debian's ``/usr/share/datasets``, and Keras' cache
``~/.keras/datasets``; when nothing is found, one error lists every place looked at
and how to install the data. Corrupt files raise a UserError naming the file.
"""

import dataclasses
import gzip
import os
import pickle

import numpy as np

from kd_research.common.errors import UserError

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic")

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_DIR_NAMES = {
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
    "mnist": ("mnist",),
    "cifar10": ("cifar-10-batches-py",),
    "cifar100": ("cifar-100-python",),
}
_INSTALL_HINTS = {
    "fashion_mnist": ("install Debian's package: sudo apt-get install dataset-fashion-mnist; or, on "
                      "a machine with internet: python -c 'import keras; "
                      "keras.datasets.fashion_mnist.load_data()' (caches the IDX .gz files)"),
    "mnist": "put the four MNIST IDX files (train-images-idx3-ubyte[.gz], ...) in --config.run.data_dir",
    "cifar10": ("download and unpack cifar-10-python.tar.gz (the 'python version') so that "
                "cifar-10-batches-py/ is inside --config.run.data_dir"),
    "cifar100": ("download and unpack cifar-100-python.tar.gz so that cifar-100-python/ is inside "
                 "--config.run.data_dir"),
}


@dataclasses.dataclass
class RawData:
  """Train and test arrays (uint8 images NHWC, int32 labels) plus what they are."""
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  source: str


def candidate_dirs(name, data_dir=""):
  """Directories searched for dataset ``name``, in order."""
  roots = [d for d in (data_dir, os.environ.get("KD_DATA_DIR", "")) if d]
  out = []
  for root in roots:
    out.append(root)
    out.extend(os.path.join(root, sub) for sub in _DIR_NAMES[name])
  for sub in _DIR_NAMES[name]:
    out.append(os.path.join("/usr/share/datasets", sub))
    out.append(os.path.join(os.path.expanduser("~/.keras/datasets"), sub))
  if name.startswith("cifar"):  # Keras caches the unpacked CIFAR dirs directly in datasets/.
    out.append(os.path.expanduser("~/.keras/datasets"))
  return list(dict.fromkeys(out))


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


def _load_idx_dir(directory):
  paths = {key: _find_file(directory, base) for key, base in _IDX_FILES.items()}
  if not all(paths.values()):
    return None
  arrays = {key: read_idx(path, 3 if key.endswith("_x") else 1) for key, path in paths.items()}
  for split in ("train", "test"):
    if len(arrays[f"{split}_x"]) != len(arrays[f"{split}_y"]):
      raise UserError(f"{paths[split + '_x']} has {len(arrays[split + '_x'])} images but "
                      f"{paths[split + '_y']} has {len(arrays[split + '_y'])} labels.")
  return RawData(arrays["train_x"][..., None], arrays["train_y"].astype(np.int32),
                 arrays["test_x"][..., None], arrays["test_y"].astype(np.int32), 10, directory)


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
  return RawData(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                 test_x, test_y, classes, directory)


def synthetic(num_train=2000, num_test=500, shape=(28, 28, 1), num_classes=10, seed=1234):
  """A learnable toy dataset: noisy copies of one random prototype image per class."""
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(0, 255, size=(num_classes,) + tuple(shape))

  def draw(n):
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    noise = rng.normal(0, 60, size=(n,) + tuple(shape))
    return np.clip(prototypes[labels] * 0.6 + noise + 50, 0, 255).astype(np.uint8), labels

  train_x, train_y = draw(num_train)
  test_x, test_y = draw(num_test)
  return RawData(train_x, train_y, test_x, test_y, num_classes, "synthetic")


def load(name, data_dir=""):
  """Loads dataset ``name`` from the first directory that has it; see module docstring."""
  if name not in DATASETS:
    raise UserError(f"Unknown dataset {name!r}; valid: {', '.join(DATASETS)}.")
  if name == "synthetic":
    return synthetic()
  if data_dir and not os.path.isdir(data_dir):
    raise UserError(f"--config.run.data_dir={data_dir!r} is not a directory.")
  looked = candidate_dirs(name, data_dir)
  for directory in looked:
    if not os.path.isdir(directory):
      continue
    if not os.access(directory, os.R_OK | os.X_OK):
      raise UserError(f"Data directory {directory} is not readable (permission denied).")
    found = (_load_cifar_dir(directory, name) if name.startswith("cifar")
             else _load_idx_dir(directory))
    if found is not None:
      check_arrays(found)
      return found
  raise UserError(f"Dataset {name!r} not found. Looked in: {', '.join(looked)}. To get it: "
                  f"{_INSTALL_HINTS[name]}; or set --config.run.data_dir / $KD_DATA_DIR.")


def check_arrays(raw):
  """Validates shapes, dtypes and label ranges of loaded data; raises UserError on mismatch."""
  for split in ("train", "test"):
    x, y = getattr(raw, f"{split}_x"), getattr(raw, f"{split}_y")
    if x.ndim != 4:
      raise UserError(f"{raw.source}: {split} images must be [N, H, W, C], got shape {x.shape}.")
    if len(x) == 0:
      raise UserError(f"{raw.source}: the {split} split is empty.")
    if len(x) != len(y):
      raise UserError(f"{raw.source}: {len(x)} {split} images but {len(y)} labels.")
    if y.min() < 0 or y.max() >= raw.num_classes:
      raise UserError(f"{raw.source}: {split} labels must lie in [0, {raw.num_classes - 1}], "
                      f"found values from {y.min()} to {y.max()}.")
  if raw.train_x.shape[1:] != raw.test_x.shape[1:]:
    raise UserError(f"{raw.source}: train images {raw.train_x.shape[1:]} and test images "
                    f"{raw.test_x.shape[1:]} differ in shape.")
