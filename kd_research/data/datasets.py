"""A dataset's train / validation / test splits, its transfer set, and the array streams.

``load_splits`` opens the dataset of a ``DataSpec`` (``data_spec(config)``, parsed once:
config.dataset, a built-in name loaded into memory or a spec such as ``folder:PATH`` that
streams from files, see sources.py) and carves the validation split from the training set. Each split is a data/splits.py object with one
face for the training and evaluation streams, whatever holds the examples.
"""

import dataclasses

from absl import logging
import numpy as np

from kd_research.common.errors import UserError
from kd_research.data import sources
from kd_research.data import splits as splits_lib


@dataclasses.dataclass
class Splits:
  """train / validation / test splits (data/splits.py), class count and image shape."""
  train: object
  validation: object
  test: object
  num_classes: int
  input_shape: tuple
  source: str
  classes: tuple = ()     # class names of a file source (recorded in the run directory)
  skipped: dict = dataclasses.field(default_factory=dict)  # corrupt images skipped, per split


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """What a run reads as data, parsed once from its config (``data_spec``): the dataset
  (``source`` and ``argument`` for a spec such as folder:PATH, None and '' for a
  built-in), how file sources are read (``data``, config.data; ``image_size``) and the
  split sizes."""
  dataset: str
  source: object
  argument: str
  data: object
  image_size: int
  data_dir: str
  validation_size: int
  validation_seed: int
  train_size: int
  test_size: int
  global_batch_size: int


def data_spec(config):
  """The config's ``DataSpec``; UserError for an unknown dataset name or spec."""
  spec = sources.spec_of(config.dataset)
  source, argument = spec if spec is not None else (None, "")
  return DataSpec(config.dataset, source, argument, config.data, config.image_size,
                  config.run.data_dir, config.validation_size, config.validation_seed,
                  config.train_size, config.test_size, config.global_batch_size)


def open_source(data):
  """The dataset of ``data`` (a DataSpec) opened: sources.Opened with its train and test
  splits."""
  if data.source is None:
    raw = sources.load(data.dataset, data.data_dir)
    return sources.Opened(splits_lib.ArraySplit(raw.train_x, raw.train_y),
                          splits_lib.ArraySplit(raw.test_x, raw.test_y), raw.num_classes, (),
                          raw.source)
  return data.source.open(data.argument, data)


def load_splits(data):
  """Opens the dataset of ``data`` (a DataSpec) and carves the validation split from the
  training set."""
  opened = open_source(data)
  n = opened.train.num_examples
  if data.validation_size >= n:
    raise UserError(f"config.validation_size={data.validation_size} leaves no training data: "
                    f"{data.dataset} has {n} training examples.")
  validation, train = opened.train.carve(data.validation_size, data.validation_seed)
  if data.train_size:
    if data.train_size > train.num_examples:
      raise UserError(f"config.train_size={data.train_size} is larger than the "
                      f"{train.num_examples} training examples left after the validation "
                      "split.")
    train = train.head(data.train_size)
  test = opened.test
  if data.test_size:
    if data.test_size > test.num_examples:
      raise UserError(f"config.test_size={data.test_size} is larger than the test split "
                      f"({test.num_examples} examples).")
    test = test.head(data.test_size)
  if train.num_examples < data.global_batch_size:
    raise UserError(f"Only {train.num_examples} training examples, fewer than one global "
                    f"batch (config.global_batch_size={data.global_batch_size}).")
  return Splits(train=train, validation=validation, test=test, num_classes=opened.num_classes,
                input_shape=tuple(train.example_shape), source=opened.source,
                classes=tuple(opened.classes), skipped=dict(opened.skipped))


def in_memory(split, limit=0):
  """An ArraySplit of ``split``'s eval view as uint8 pixels, like the built-ins' (its first
  ``limit`` examples when > 0): for the tools that need arrays (export's checks of the
  uint8 serving signature). In-memory splits are returned as they are."""
  if isinstance(split, splits_lib.ArraySplit):
    return split.head(min(limit, split.num_examples)) if limit else split
  n = min(limit, split.num_examples) if limit else split.num_examples
  images, count = [], 0
  for batch in split.image_batches(256):
    images.append(batch.numpy())
    count += len(images[-1])
    if count >= n:
      break
  pixels = np.clip(np.round(np.concatenate(images)[:n]), 0, 255).astype(np.uint8)
  return splits_lib.ArraySplit(pixels, np.asarray(split.labels)[:n])


def labelled_mask(num_examples, count=0, fraction=0.0, seed=0):
  """The transfer set's labels: 1.0 for the ``count`` (or ``fraction``) labelled examples, a
  fixed random choice by ``seed``, 0.0 for the rest; all 1.0 when both are 0."""
  if count and fraction:
    raise UserError("Give config.labels.count or config.labels.fraction, not both.")
  if fraction and not 0 < fraction <= 1:
    raise UserError(f"config.labels.fraction must be in (0, 1], got {fraction}.")
  n = count or int(round(fraction * num_examples)) or num_examples
  if not 0 < n <= num_examples:
    raise UserError(f"config.labels.count={count} must be in [1, {num_examples}] (the training "
                    "examples).")
  mask = np.zeros(num_examples, np.float32)
  mask[np.random.default_rng(seed).permutation(num_examples)[:n]] = 1.0
  return mask


def transfer_set(labels, role, train, global_batch_size):
  """(training split, labelled mask or None) of a run under ``config.labels``.

  Teachers and fully labelled runs: every example, no mask. A distilled student: every
  image with the mask (soft labels everywhere, CE where labelled). A labels-only student:
  the labelled examples alone (the run's step budget is unchanged, so it cycles over them).
  """
  if role == "teacher" or not (labels.count or labels.fraction):
    return train, None
  mask = labelled_mask(train.num_examples, labels.count, labels.fraction, labels.seed)
  logging.info("Transfer set: labels for %d of %d training images.", int(mask.sum()),
               train.num_examples)
  if role == "distill":
    return train, mask
  keep = mask > 0
  if keep.sum() < global_batch_size:
    raise UserError(f"config.labels: {int(keep.sum())} labelled examples are fewer than one "
                    f"global batch ({global_batch_size}); label more examples or use a "
                    "smaller config.global_batch_size.")
  return train.rows(np.flatnonzero(keep)), None


def train_dataset_fn(images, labels, global_batch_size, seed, start_step=0, extras=None,
                     transform=None, threads=0, repeats=1):
  """The training stream of in-memory arrays (splits.ArraySplit.train_fn)."""
  return splits_lib.ArraySplit(images, labels).train_fn(global_batch_size, seed, start_step,
                                                        extras, transform, threads, repeats)


def eval_dataset_fn(images, labels, global_batch_size, extras=None):
  """One padded pass over in-memory arrays (splits.ArraySplit.eval_fn)."""
  return splits_lib.ArraySplit(images, labels).eval_fn(global_batch_size, extras)
