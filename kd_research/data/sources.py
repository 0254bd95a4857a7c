"""Dataset sources by name: where a dataset's arrays come from, found by registration.

Nothing here downloads. A source in files is looked up in order: the explicit data dir,
``$KD_DATA_DIR``, Debian's ``/usr/share/datasets``, and Keras' cache ``~/.keras/datasets``
(each with the source's own subdirectory names); when nothing is found, one error lists
every place looked at and how to install the data. Corrupt files raise a UserError naming
the file.

A source is a module of this package that calls ``register(Source(...))`` or
``register(SpecSource(...))``; there are seven: idx.py (fashion_mnist, mnist), cifar.py
(cifar10, cifar100), synthetic.py, arrays.py (``npz:``), folder.py, tfrecord.py and
tfds_source.py. ``sources()`` imports the package's modules to find them, so adding a
dataset is one new file.

Streamed sources are named by a spec, ``PREFIX:ARGUMENT`` (``folder:PATH``,
``tfrecord:PATTERN``, ``tfds:NAME[:VERSION]``), and register ``SpecSource(prefix, open)``:
``open(argument, spec)`` (spec: the run's datasets.DataSpec) returns ``Opened`` splits that stream from files.
"""

import dataclasses
import os
from typing import Callable, Optional

import numpy as np

from kd_research.common import plugins
from kd_research.common.errors import UserError

_PACKAGE = "kd_research.data"
_REGISTERED = {}


@dataclasses.dataclass
class RawData:
  """Train and test arrays (uint8 images NHWC, int32 labels) plus what they are."""
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  source: str


@dataclasses.dataclass(frozen=True)
class Source:
  """A registered dataset. ``load(directory)`` returns RawData, or None when the directory
  does not hold it; a generated source (no ``dir_names``) gets ``directory=None``."""
  name: str
  load: Callable[[Optional[str]], Optional[RawData]]
  dir_names: tuple = ()         # subdirectories searched below every root
  install_hint: str = ""        # how to get the data, for the not-found error
  keras_cache_root: bool = False  # Keras unpacks this dataset directly in ~/.keras/datasets


@dataclasses.dataclass
class Opened:
  """A dataset opened from files: train and test splits (data/splits.py) and what they are."""
  train: object
  test: object
  num_classes: int
  classes: tuple
  source: str
  skipped: dict = dataclasses.field(default_factory=dict)  # corrupt files skipped, per split


@dataclasses.dataclass(frozen=True)
class SpecSource:
  """A streamed source selected as --config.dataset=PREFIX:ARGUMENT."""
  prefix: str
  open: Callable[[str, object], Opened]   # (argument, datasets.DataSpec) -> Opened
  usage: str                              # e.g. "folder:PATH", for the error messages


def register(source):
  """Makes ``source`` (a Source or SpecSource) selectable as --config.dataset."""
  key = source.prefix + ":" if isinstance(source, SpecSource) else source.name
  if key in _REGISTERED and _REGISTERED[key] != source:
    raise ValueError(f"two dataset sources are named {key!r}")
  _REGISTERED[key] = source
  return source


def _registered():
  plugins.import_all(_PACKAGE)
  return _REGISTERED


def sources():
  """{name: Source} of every built-in (in-memory) dataset."""
  return {k: v for k, v in sorted(_registered().items()) if isinstance(v, Source)}


def spec_sources():
  """{prefix: SpecSource} of every streamed source."""
  return {v.prefix: v for v in _registered().values() if isinstance(v, SpecSource)}


def names():
  return tuple(sources())


def valid_names():
  """Every accepted --config.dataset form, for error messages."""
  return tuple(sources()) + tuple(s.usage for _, s in sorted(spec_sources().items()))


def spec_of(dataset):
  """(SpecSource, argument) of a spec dataset, None for a built-in name; UserError if neither."""
  if dataset in sources():
    return None
  prefix, colon, argument = dataset.partition(":")
  streamed = spec_sources()
  if colon and prefix in streamed:
    if not argument:
      raise UserError(f"config.dataset={dataset!r} lacks its argument: write "
                      f"{streamed[prefix].usage}.")
    return streamed[prefix], argument
  raise UserError(f"config.dataset={dataset!r} is unknown; valid: {', '.join(valid_names())}.")


def candidate_dirs(name, data_dir=""):
  """Directories searched for dataset ``name``, in order."""
  source = sources()[name]
  roots = [d for d in (data_dir, os.environ.get("KD_DATA_DIR", "")) if d]
  out = []
  for root in roots:
    out.append(root)
    out.extend(os.path.join(root, sub) for sub in source.dir_names)
  for sub in source.dir_names:
    out.append(os.path.join("/usr/share/datasets", sub))
    out.append(os.path.join(os.path.expanduser("~/.keras/datasets"), sub))
  if source.keras_cache_root:
    out.append(os.path.expanduser("~/.keras/datasets"))
  return list(dict.fromkeys(out))


def load(name, data_dir=""):
  """Loads dataset ``name`` from the first directory that has it; see module docstring."""
  registered = sources()
  if name not in registered:
    raise UserError(f"Unknown dataset {name!r}; valid: {', '.join(valid_names())}.")
  source = registered[name]
  if not source.dir_names:
    return source.load(None)
  if data_dir and not os.path.isdir(data_dir):
    raise UserError(f"--config.run.data_dir={data_dir!r} is not a directory.")
  looked = candidate_dirs(name, data_dir)
  for directory in looked:
    if not os.path.isdir(directory):
      continue
    if not os.access(directory, os.R_OK | os.X_OK):
      raise UserError(f"Data directory {directory} is not readable (permission denied).")
    found = source.load(directory)
    if found is not None:
      check_arrays(found)
      return found
  raise UserError(f"Dataset {name!r} not found. Looked in: {', '.join(looked)}. To get it: "
                  f"{source.install_hint}; or set --config.run.data_dir / $KD_DATA_DIR.")


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
