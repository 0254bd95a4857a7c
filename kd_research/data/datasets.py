"""Splits and tf.data input pipelines, built per replica through the input context.

Batches are formed from a *global* sequence of example indices that depends only
on the seed and the epoch (stateless shuffling), and every replica takes its own
slice of each global batch. So the examples a global step sees are the same for
1, 2 or 4 replicas, for one or several workers, and after a resume at any step.
"""

import dataclasses

from absl import logging
import numpy as np
import tensorflow as tf

from kd_research.data import sources
from kd_research.common.errors import UserError


@dataclasses.dataclass
class Splits:
  """train / validation / test arrays, class count and image shape of one dataset."""
  train: tuple
  validation: tuple
  test: tuple
  num_classes: int
  input_shape: tuple
  source: str


def load_splits(config):
  """Loads ``config.dataset`` and carves the validation split from the training set."""
  raw = sources.load(config.dataset, config.run.data_dir)
  n = len(raw.train_x)
  if config.validation_size >= n:
    raise UserError(f"config.validation_size={config.validation_size} leaves no training data: "
                    f"{config.dataset} has {n} training examples.")
  order = np.random.default_rng(config.validation_seed).permutation(n)
  val_idx, train_idx = order[:config.validation_size], order[config.validation_size:]
  if config.train_size:
    if config.train_size > len(train_idx):
      raise UserError(f"config.train_size={config.train_size} is larger than the "
                      f"{len(train_idx)} training examples left after the validation split.")
    train_idx = train_idx[:config.train_size]
  test = (raw.test_x, raw.test_y)
  if config.test_size:
    if config.test_size > len(raw.test_x):
      raise UserError(f"config.test_size={config.test_size} is larger than the test split "
                      f"({len(raw.test_x)} examples).")
    test = (raw.test_x[:config.test_size], raw.test_y[:config.test_size])
  if len(train_idx) < config.global_batch_size:
    raise UserError(f"Only {len(train_idx)} training examples, fewer than one global batch "
                    f"(config.global_batch_size={config.global_batch_size}).")
  return Splits(train=(raw.train_x[train_idx], raw.train_y[train_idx]),
                validation=(raw.train_x[val_idx], raw.train_y[val_idx]),
                test=test, num_classes=raw.num_classes,
                input_shape=tuple(raw.train_x.shape[1:]), source=raw.source)


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
  """(training arrays, labelled mask or None) of a run under ``config.labels``.

  Teachers and fully labelled runs: every example, no mask. A distilled student: every
  image with the mask (soft labels everywhere, CE where labelled). A labels-only student:
  the labelled examples alone (the run's step budget is unchanged, so it cycles over them).
  """
  images, targets = train
  if role == "teacher" or not (labels.count or labels.fraction):
    return train, None
  mask = labelled_mask(len(images), labels.count, labels.fraction, labels.seed)
  logging.info("Transfer set: labels for %d of %d training images.", int(mask.sum()),
               len(images))
  if role == "distill":
    return train, mask
  keep = mask > 0
  if keep.sum() < global_batch_size:
    raise UserError(f"config.labels: {int(keep.sum())} labelled examples are fewer than one "
                    f"global batch ({global_batch_size}); label more examples or use a "
                    "smaller config.global_batch_size.")
  return (images[keep], targets[keep]), None


def steps_per_epoch(num_examples, global_batch_size):
  """Full global batches per epoch (the remainder is dropped, reshuffled next epoch)."""
  return num_examples // global_batch_size


def _replica_slices(index_batches, input_context, global_batch_size):
  """Turns a dataset of global index batches into this pipeline's per-replica batches."""
  replicas = input_context.num_replicas_in_sync
  if global_batch_size % replicas:
    raise UserError(f"Global batch size {global_batch_size} is not divisible by the "
                    f"{replicas} replicas; choose a multiple of {replicas}.")
  per_replica = global_batch_size // replicas
  local = replicas // input_context.num_input_pipelines
  first = input_context.input_pipeline_id * local * per_replica

  def split(batch):
    return tf.nest.map_structure(
        lambda t: tf.reshape(t[first:first + local * per_replica],
                             tf.concat([[local, per_replica], tf.shape(t)[1:]], 0)), batch)

  return index_batches.map(split).unbatch()


def _gather(arrays, num_classes=None):
  """A map function gathering images/labels (and extra arrays) for an index batch."""
  tensors = {key: tf.constant(value) for key, value in arrays.items()}

  def fn(batch):
    out = dict(batch)
    for key, value in tensors.items():
      out[key] = tf.gather(value, batch["index"])
    out["image"] = tf.cast(out["image"], tf.float32)
    out["label"] = tf.cast(out["label"], tf.int32)
    return out

  return fn


def train_dataset_fn(images, labels, global_batch_size, seed, start_step=0, extras=None,
                     transform=None, threads=0):
  """Returns ``fn(input_context)`` building the infinite training stream from ``start_step``.

  Elements are per-replica dicts: image (float32, 0..255), label, index (example id
  in the training array), step (global step of the batch), position (in the global
  batch) and any ``extras`` (arrays aligned with ``images``, e.g. cached teacher
  logits). ``transform(batch) -> batch`` (augmentation) runs on each replica batch.
  """
  n = len(images)
  spe = steps_per_epoch(n, global_batch_size)
  arrays = {"image": images, "label": labels, **(extras or {})}

  def fn(input_context):
    def epoch_batches(epoch):
      keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
      order = tf.argsort(keys)[:spe * global_batch_size]
      index = tf.reshape(tf.cast(order, tf.int64), [spe, global_batch_size])
      step = epoch * spe + tf.range(spe, dtype=tf.int64)
      step = tf.tile(step[:, None], [1, global_batch_size])
      position = tf.tile(tf.range(global_batch_size)[None], [spe, 1])
      return tf.data.Dataset.from_tensor_slices(
          {"index": index, "step": step, "position": position})

    batches = tf.data.Dataset.range(start_step // spe, 2**62).flat_map(epoch_batches)
    batches = batches.skip(start_step % spe)
    ds = _replica_slices(batches, input_context, global_batch_size)
    ds = ds.map(_gather(arrays), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if transform is not None:
      ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    options = tf.data.Options()
    # No autotuning: its model thread sleeps for up to 60 s between optimisations and
    # deleting the iterator waits for it (measured: 16 s after 25 s of iteration; 30-40 s
    # at the end of a benchmark run). Without it the stream still yields some 5,000
    # batches/s of 128 on 2 cores, far above what a training step consumes.
    options.autotune.enabled = False
    if threads:
      options.threading.private_threadpool_size = threads
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

  return fn


def eval_dataset_fn(images, labels, global_batch_size, extras=None):
  """Returns ``fn(input_context)`` for one pass over every example exactly once.

  The last batch is padded to a full global batch and carries ``weight`` 0 on the
  padding, so every replica gets a non-empty, equal batch (an empty
  replica batch crashes oneDNN convolutions in TF 2.21: "Matrix size-incompatible") and counts stay exact.
  """
  n = len(images)
  num_batches = -(-n // global_batch_size)
  padded = num_batches * global_batch_size
  index = np.concatenate([np.arange(n), np.zeros(padded - n, np.int64)]).astype(np.int64)
  weight = (np.arange(padded) < n).astype(np.float32)
  arrays = {"image": images, "label": labels, **(extras or {})}

  def fn(input_context):
    batches = tf.data.Dataset.from_tensor_slices({
        "index": index.reshape(num_batches, global_batch_size),
        "weight": weight.reshape(num_batches, global_batch_size)})
    ds = _replica_slices(batches, input_context, global_batch_size)
    return ds.map(_gather(arrays), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

  return fn
