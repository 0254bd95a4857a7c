"""One split of a dataset as a stream: in-memory arrays, image files, or TFRecord segments.

Every split has the same face: ``num_examples``, ``labels`` (int32, in row order),
``example_shape``, ``carve(count, seed)`` (a seeded validation split), ``head(n)``,
``train_fn(...)`` / ``eval_fn(...)`` (per-replica tf.data streams, see streams.py) and
``image_batches(size)`` (the eval view in row order, for the teacher-output passes).
Stream elements are dicts: image (float32 0..255), label, index (the example's row in this
split: what cached teacher outputs and the labelled mask are aligned with), step and
position (training) or weight (evaluation, 0 on padding), plus ``extras`` gathered by row.
"""

import dataclasses
import functools
import hashlib
from typing import Callable

import numpy as np
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.data import preprocess
from kd_research.data import cache_rows
from kd_research.data import streams


def _rows(value):
  """gather(batch) of an extra: rows at the batch's examples ('index') of an in-memory
  array (a graph constant) or a cache_rows.RowFile (read per batch: O(batch) memory), or
  rows at its views (step, position) of a cache_rows.ViewRows."""
  if isinstance(value, cache_rows.ViewRows):
    return value.gather_batch
  if isinstance(value, cache_rows.RowFile):
    return lambda batch: value.gather(batch["index"])
  constant = tf.constant(value)
  return lambda batch: tf.gather(constant, batch["index"])


def _gather_extras(extras):
  """A batch map adding each extra's rows (see ``_rows``)."""
  gathers = {key: _rows(value) for key, value in (extras or {}).items()}

  def fn(batch):
    out = dict(batch)
    for key, gather in gathers.items():
      out[key] = gather(batch)
    return out

  return fn


def plain(fn):
  """``fn`` for ``Dataset.map`` without autograph's source conversion: the image and
  augmentation functions have no Python branch on a tensor (their choices are tf.cond and
  tf.switch_case), and converting them cost seconds at the start of every run."""
  return tf.autograph.experimental.do_not_convert(fn)


def _finish(ds, extras, transform, threads):
  """Extras, augmentation, options and prefetch: the common tail of every train stream."""
  if extras:
    ds = ds.map(_gather_extras(extras), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if transform is not None:
    ds = ds.map(plain(transform), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.with_options(streams.options(threads)).prefetch(tf.data.AUTOTUNE)


def _train_view(view, seed):
  """image_fn(encoded, example) of the training view, keyed on (step, position)."""
  return lambda encoded, e: preprocess.train_image(encoded, view, seed, e["step"],
                                                   e["position"])


def _eval_view(view):
  """image_fn(encoded, example) of the evaluation view."""
  return lambda encoded, e: preprocess.eval_image(encoded, view)


def _image_of(example):
  return example["image"]


def _weighted(example):
  """An evaluation example of weight 1, with the fields the padding has."""
  return {"index": example["index"], "label": example["label"], "image": example["image"],
          "weight": tf.constant(1.0)}


class RandomAccess:
  """What random-access splits share: rows by index, a seeded carve, the indexed order's
  epoch length. Subclasses give ``num_examples`` and ``rows(index)``."""

  def carve(self, count, seed):
    order = np.random.default_rng(seed).permutation(self.num_examples)
    return self.rows(order[:count]), self.rows(order[count:])

  def head(self, n):
    return self.rows(np.arange(n))

  def steps_per_epoch(self, global_batch_size, num_pipelines=1):
    del num_pipelines  # Every pipeline takes its slice of the same global batches.
    return self.num_examples // global_batch_size


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit(RandomAccess):
  """Decoded images in memory (the built-in datasets): today's exact streams."""
  images: np.ndarray
  labels: np.ndarray

  @property
  def num_examples(self):
    return len(self.images)

  @property
  def example_shape(self):
    return tuple(self.images.shape[1:])

  def rows(self, index):
    return ArraySplit(self.images[index], self.labels[index])

  def digest(self, h):
    h.update(np.ascontiguousarray(self.images).data)
    h.update(repr((self.images.shape, str(self.images.dtype))).encode())

  def _gather(self, extras):
    return _gather_extras({"image": self.images, "label": self.labels, **(extras or {})})

  @staticmethod
  def _cast(batch):
    return dict(batch, image=tf.cast(batch["image"], tf.float32),
                label=tf.cast(batch["label"], tf.int32))

  def train_fn(self, global_batch_size, seed, start_step=0, extras=None, transform=None,
               threads=0, repeats=1):
    def fn(input_context):
      batches = streams.indexed_batches(self.num_examples, global_batch_size, seed, start_step,
                                        repeats)
      ds = streams.replica_slices(batches, input_context, global_batch_size)
      ds = ds.map(self._gather(extras), num_parallel_calls=tf.data.AUTOTUNE,
                  deterministic=True).map(self._cast)
      return _finish(ds, None, transform, threads)
    return fn

  def eval_fn(self, global_batch_size, extras=None):
    def fn(input_context):
      rows, weight = streams.padded_eval_rows(self.num_examples, global_batch_size)
      batches = tf.data.Dataset.from_tensor_slices({"index": rows, "weight": weight})
      ds = streams.replica_slices(batches, input_context, global_batch_size)
      return ds.map(self._gather(extras), num_parallel_calls=tf.data.AUTOTUNE).map(
          self._cast).prefetch(2)
    return fn

  def image_batches(self, batch_size):
    for start in range(0, self.num_examples, batch_size):
      yield tf.cast(self.images[start:start + batch_size], tf.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class FileSplit(RandomAccess):
  """One image file per example (an image folder): random access, the indexed order."""
  paths: np.ndarray     # str
  labels: np.ndarray    # int32
  view: preprocess.View

  @property
  def num_examples(self):
    return len(self.paths)

  @property
  def example_shape(self):
    return self.view.shape

  def rows(self, index):
    return FileSplit(self.paths[index], self.labels[index], self.view)

  def digest(self, h):
    h.update("\n".join(self.paths.tolist()).encode())
    h.update(self.labels.astype(np.int32).tobytes())
    h.update(repr(self.view).encode())

  def _load(self, image_fn):
    paths, labels = tf.constant(self.paths.astype(str)), tf.constant(self.labels, tf.int32)

    def fn(example):
      encoded = tf.io.read_file(tf.gather(paths, example["index"]))
      return dict(example, image=image_fn(encoded, example),
                  label=tf.gather(labels, example["index"]))
    return fn

  def train_fn(self, global_batch_size, seed, start_step=0, extras=None, transform=None,
               threads=0, repeats=1):

    def fn(input_context):
      per_replica = streams.per_replica_batch(input_context, global_batch_size)
      batches = streams.indexed_batches(self.num_examples, global_batch_size, seed, start_step,
                                        repeats)
      ds = streams.replica_slices(batches, input_context, global_batch_size).unbatch()
      load = self._load(_train_view(self.view, seed))
      ds = ds.map(plain(load), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return _finish(ds.batch(per_replica, drop_remainder=True), extras, transform, threads)
    return fn

  def eval_fn(self, global_batch_size, extras=None):
    def fn(input_context):
      rows, weight = streams.padded_eval_rows(self.num_examples, global_batch_size)
      batches = tf.data.Dataset.from_tensor_slices({"index": rows, "weight": weight})
      per_replica = streams.per_replica_batch(input_context, global_batch_size)
      ds = streams.replica_slices(batches, input_context, global_batch_size).unbatch()
      ds = ds.map(plain(self._load(_eval_view(self.view))),
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      ds = ds.batch(per_replica, drop_remainder=True)
      return ds.map(_gather_extras(extras)).with_options(streams.options()).prefetch(2)
    return fn

  def image_batches(self, batch_size):
    load = self._load(_eval_view(self.view))
    ds = tf.data.Dataset.range(self.num_examples).map(lambda i: load({"index": i}),
                                                       num_parallel_calls=tf.data.AUTOTUNE,
                                                       deterministic=True)
    for batch in ds.batch(batch_size).with_options(streams.options()).prefetch(2):
      yield batch["image"]


@dataclasses.dataclass(frozen=True)
class ShardSplit:
  """Segments of TFRecord shards, read sequentially: the sharded order.

  ``parse(serialized) -> (encoded image, label)`` reads the source's feature keys."""
  segments: tuple
  parse: Callable
  view: preprocess.View
  shuffle_buffer: int = 10000
  label_source: str = ""

  @property
  def num_examples(self):
    return sum(s.count for s in self.segments)

  @property
  def example_shape(self):
    return self.view.shape

  @functools.cached_property
  def labels(self):
    """Every label in row order (one pass that parses labels only, no image decode)."""
    ds = streams.canonical_records(self.segments).map(
        lambda row, record: self.parse(record)[1], num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    parts = [b.numpy() for b in ds.batch(65536).with_options(streams.options())]
    return np.concatenate(parts).astype(np.int32) if parts else np.zeros([0], np.int32)

  def rows(self, index):
    raise UserError("A labels-only student on a subset (config.labels) needs random access "
                    "to the examples; TFRecord/TFDS shards are read in order. Use a folder: "
                    "source or an in-memory dataset for it.")

  def carve(self, count, seed):
    """The first ``count`` records of the segments in a seeded order (whole segments, the
    last one cut), and the rest: reading the carved split costs ``count`` records."""
    order = np.random.default_rng(seed).permutation(len(self.segments))
    carved, rest, need = [], [], count
    for i in order:
      s = self.segments[i]
      take = min(need, s.count)
      if take:
        carved.append(streams.Segment(s.path, s.start, s.start + take, 0))
      if take < s.count:
        rest.append(streams.Segment(s.path, s.start + take, s.stop, 0))
      need -= take
    return self._renumbered(carved), self._renumbered(rest)

  def head(self, n):
    kept, need = [], n
    for s in self.segments:
      if need <= 0:
        break
      kept.append(streams.Segment(s.path, s.start, s.start + min(need, s.count), 0))
      need -= kept[-1].count
    return self._renumbered(kept)

  def _renumbered(self, segments):
    """The segments sorted (canonical order) with their rows renumbered from 0."""
    segments = sorted(segments, key=lambda s: (s.path, s.start))
    rows = np.cumsum([0] + [s.count for s in segments])[:-1]
    return dataclasses.replace(self, segments=tuple(
        dataclasses.replace(s, row=int(r)) for s, r in zip(segments, rows)))

  def steps_per_epoch(self, global_batch_size, num_pipelines=1):
    return streams.sharded_steps_per_epoch(self.segments, global_batch_size, num_pipelines)

  def digest(self, h):
    h.update(repr([(s.path, s.start, s.stop) for s in self.segments]).encode())
    h.update(repr(self.view).encode())

  def _decode(self, image_fn):
    def fn(row, record, *position):
      encoded, label = self.parse(record)
      example = {"index": row, "label": label}
      if position:
        example.update(step=position[0], position=position[1])
      example["image"] = image_fn(encoded, example)
      return example
    return fn

  def train_fn(self, global_batch_size, seed, start_step=0, extras=None, transform=None,
               threads=0, repeats=1):
    if repeats > 1:
      raise UserError(f"config.augment.repeats={repeats} (repeated augmentation) needs a "
                      "source read by row (in-memory arrays or an image folder); record "
                      "shards are streamed once per epoch in their shuffled order. Use "
                      "config.augment.repeats=1, or convert the shards' source to a folder.")

    def fn(input_context):
      per_replica = streams.per_replica_batch(input_context, global_batch_size)
      pipeline_batch, first = streams.pipeline_share(input_context, global_batch_size)
      spe = self.steps_per_epoch(global_batch_size, input_context.num_input_pipelines)
      if spe < 1:
        raise UserError(f"Each of the {input_context.num_input_pipelines} workers has fewer "
                        f"training records than its share of one global batch "
                        f"({pipeline_batch}).")
      ds = streams.sharded_examples(
          streams.pipeline_segments(self.segments, input_context), seed, spe, pipeline_batch,
          first, start_step, self.shuffle_buffer)
      decode = self._decode(_train_view(self.view, seed))
      ds = ds.map(plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return _finish(ds.batch(per_replica, drop_remainder=True), extras, transform, threads)
    return fn

  def _eval_examples(self):
    return streams.canonical_records(self.segments).map(
        plain(self._decode(_eval_view(self.view))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  def eval_fn(self, global_batch_size, extras=None):
    n, shape = self.num_examples, self.view.shape

    def fn(input_context):
      padded = -(-n // global_batch_size) * global_batch_size
      real = self._eval_examples().map(_weighted)
      pad = tf.data.Dataset.range(padded - n).map(lambda i: {
          "index": tf.constant(0, tf.int64), "label": tf.constant(0, tf.int32),
          "image": tf.zeros(shape, tf.float32), "weight": tf.constant(0.0)})
      batches = real.concatenate(pad).batch(global_batch_size)
      ds = streams.replica_slices(batches, input_context, global_batch_size)
      return ds.map(_gather_extras(extras)).with_options(streams.options()).prefetch(2)
    return fn

  def image_batches(self, batch_size):
    ds = self._eval_examples().map(_image_of).batch(batch_size)
    yield from ds.with_options(streams.options()).prefetch(2)


def digest_of(split):
  """A hex digest of what a split holds (for the teacher-output cache's fingerprint)."""
  h = hashlib.sha256()
  split.digest(h)
  return h.hexdigest()
