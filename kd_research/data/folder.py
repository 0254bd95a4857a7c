"""``folder:PATH``: class-per-subdirectory JPEG/PNG images, streamed from the files.

Layout (ImageNet's ImageFolder layout, as mdistiller and torchdistill read it):
    PATH/train/<class>/*.{jpg,jpeg,png}    required; classes = the sorted subdirectory names
    PATH/test/<class>/*  (or PATH/val/, PATH/validation/)   the test split
The validation split is carved from train by config.validation_size as for every source.
Every file is checked once when the source opens (image_files: head and tail, no decode).
"""

import concurrent.futures
import os

import numpy as np

from kd_research.common.errors import UserError
from kd_research.data import image_files
from kd_research.data import preprocess
from kd_research.data import scan
from kd_research.data import sources
from kd_research.data import splits

EXTENSIONS = (".jpg", ".jpeg", ".png")
TEST_DIRS = ("test", "val", "validation")


def _listing(directory, classes=None):
  """(paths, labels, class names) of a class-per-subdirectory directory."""
  found = sorted(d for d in os.listdir(directory)
                 if os.path.isdir(os.path.join(directory, d)) and not d.startswith("."))
  if not found:
    raise UserError(f"{directory} has no class subdirectories; expected "
                    f"{directory}/<class>/<image>.jpg|.png.")
  classes = classes or found
  unknown = sorted(set(found) - set(classes))
  if unknown:
    raise UserError(f"{directory} has class folders {unknown[:5]} that the training split "
                    f"does not have (training classes: {', '.join(classes[:10])} ...).")
  paths, labels = [], []
  for name in found:
    folder = os.path.join(directory, name)
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(EXTENSIONS))
    if not files:
      raise UserError(f"Class folder {folder} holds no image ({', '.join(EXTENSIONS)}); "
                      "add images or remove the folder.")
    paths.extend(os.path.join(folder, f) for f in files)
    labels.extend([classes.index(name)] * len(files))
  return np.array(paths, dtype=object), np.array(labels, np.int32), tuple(classes)


def _scan(paths, image_scan):
  """Feeds every file to ``image_scan``; returns the mask of usable files."""
  def ends(path):
    try:
      return image_files.read_ends(path)
    except OSError as e:
      return e

  usable = np.ones(len(paths), bool)
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    for i, (path, read) in enumerate(zip(paths, pool.map(ends, paths))):
      if isinstance(read, OSError):
        image_scan.corrupt.append((path, f"unreadable ({read.strerror or read})"))
        usable[i] = False
      else:
        usable[i] = image_scan.add(path, *read)
  return usable


def list_folder(path, data_config):
  """{'train': (paths, labels), 'test': (...)}, classes, channels, sizes and skipped counts
  of the image folder at ``path``, every file checked (see module docstring)."""
  if not os.path.isdir(path):
    raise UserError(f"config.dataset=folder:{path}: {path} is not a directory.")
  train_dir = os.path.join(path, "train")
  if not os.path.isdir(train_dir):
    raise UserError(f"config.dataset=folder:{path}: {train_dir} is missing; expected "
                    f"{path}/train/<class>/<image> and {path}/test/<class>/<image>.")
  test_dir = next((os.path.join(path, d) for d in TEST_DIRS
                   if os.path.isdir(os.path.join(path, d))), None)
  if test_dir is None:
    raise UserError(f"config.dataset=folder:{path}: no test split; expected one of "
                    f"{', '.join(os.path.join(path, d) for d in TEST_DIRS)}.")
  train_paths, train_labels, classes = _listing(train_dir)
  test_paths, test_labels, _ = _listing(test_dir, list(classes))
  image_scan = scan.ImageScan(f"folder:{path}")
  keep_train, keep_test = _scan(train_paths, image_scan), _scan(test_paths, image_scan)
  channels, sizes, _ = image_scan.finish(data_config)
  listed = {"train": (train_paths[keep_train], train_labels[keep_train]),
            "test": (test_paths[keep_test], test_labels[keep_test])}
  skipped = {"train": int((~keep_train).sum()), "test": int((~keep_test).sum())}
  return listed, classes, channels, sizes, skipped


def open_folder(path, spec):
  """The train and test FileSplits of the image folder at ``path``."""
  listed, classes, channels, sizes, skipped = list_folder(path, spec.data)
  view = preprocess.view_from_config(spec.data, spec.image_size, channels, sizes)
  return sources.Opened(splits.FileSplit(*listed["train"], view),
                        splits.FileSplit(*listed["test"], view),
                        len(classes), classes, f"folder:{path}", skipped)


sources.register(sources.SpecSource("folder", open_folder, "folder:PATH"))
