"""The order of examples and the per-replica slices: the two orders every split uses.

Indexed order (in-memory arrays and image folders, i.e. random-access examples): each
epoch is a stateless permutation of the split's rows keyed on (seed, epoch), cut into
global batches; every replica takes its slice of each global batch. The examples a global
step sees are the same for any replica or worker count, and a resume at step S skips S
index batches without reading a single example.

Sharded order (TFRecord shards, read sequentially): each input pipeline (one per worker)
owns a fixed share of the shards; each epoch it visits them in a stateless permutation
keyed on (seed, epoch), interleaves ``cycle`` of them record by record and mixes the
records in windows of ``shuffle_buffer`` by stateless permutations, then cuts pipeline
batches. The order is a
deterministic function of (seed, epoch, worker count), the same for any replica count on
one worker; a resume rebuilds the epoch's stream and skips the records already consumed
before they are parsed or decoded (read, not decoded: at most one epoch's bytes).
"""

import dataclasses

import tensorflow as tf

from kd_research.common.errors import UserError


def options(threads=0):
  """tf.data options of every stream: deterministic order, no autotune model thread."""
  opts = tf.data.Options()
  # No autotuning: its model thread sleeps for up to 60 s between optimisations and
  # deleting the iterator waits for it (measured: 16 s after 25 s of iteration; 30-40 s
  # at the end of a benchmark run). Without it the stream still yields some 5,000
  # batches/s of 128 on 2 cores, far above what a training step consumes.
  opts.autotune.enabled = False
  opts.deterministic = True
  if threads:
    opts.threading.private_threadpool_size = threads
  return opts


def per_replica_batch(input_context, global_batch_size):
  replicas = input_context.num_replicas_in_sync
  if global_batch_size % replicas:
    raise UserError(f"Global batch size {global_batch_size} is not divisible by the "
                    f"{replicas} replicas; choose a multiple of {replicas}.")
  return global_batch_size // replicas


def pipeline_share(input_context, global_batch_size):
  """(examples per pipeline batch, first position of this pipeline in the global batch)."""
  per_replica = per_replica_batch(input_context, global_batch_size)
  local = input_context.num_replicas_in_sync // input_context.num_input_pipelines
  return local * per_replica, input_context.input_pipeline_id * local * per_replica


def replica_slices(index_batches, input_context, global_batch_size):
  """Turns a dataset of global index batches into this pipeline's per-replica batches."""
  per_replica = per_replica_batch(input_context, global_batch_size)
  size, first = pipeline_share(input_context, global_batch_size)
  local = size // per_replica

  def split(batch):
    return tf.nest.map_structure(
        lambda t: tf.reshape(t[first:first + size],
                             tf.concat([[local, per_replica], tf.shape(t)[1:]], 0)), batch)

  return index_batches.map(split).unbatch()


def indexed_batches(n, global_batch_size, seed, start_step, repeats=1):
  """Global batches {'index', 'step', 'position'} over rows 0..n-1 from ``start_step`` on.

  ``repeats`` > 1 is repeated augmentation (Hoffer et al. 2020; DeiT's --repeated-aug, timm's
  RepeatAugSampler): a global batch holds m = ceil(B / repeats) images of the epoch's
  permutation, image k at positions k, k + m, k + 2m, ... (< B), each position augmented on
  its own; an epoch keeps n // B steps, so it sees about n / repeats distinct images, as
  timm's sampler selects. Neighbouring positions (mixup / cutmix partners) hold different
  images. Every position is still read by exactly one replica of one worker: the copies
  are ordinary positions of the global batch."""
  spe = n // global_batch_size
  distinct = -(-global_batch_size // repeats)

  def epoch_batches(epoch):
    keys = tf.random.stateless_uniform([n], seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
    order = tf.reshape(tf.cast(tf.argsort(keys)[:spe * distinct], tf.int64), [spe, distinct])
    index = tf.gather(order, tf.range(global_batch_size) % distinct, axis=1)
    step = epoch * spe + tf.range(spe, dtype=tf.int64)
    step = tf.tile(step[:, None], [1, global_batch_size])
    position = tf.tile(tf.range(global_batch_size)[None], [spe, 1])
    return tf.data.Dataset.from_tensor_slices(
        {"index": index, "step": step, "position": position})

  batches = tf.data.Dataset.range(start_step // spe, 2**62).flat_map(epoch_batches)
  return batches.skip(start_step % spe)


def padded_eval_rows(n, global_batch_size):
  """(rows, weights): every row once, padded with weight-0 row 0 to whole global batches.

  The padding gives every replica a non-empty, equal batch (an empty replica batch crashes
  oneDNN convolutions in TF 2.21: "Matrix size-incompatible") and counts stay exact."""
  num_batches = -(-n // global_batch_size)
  padded = num_batches * global_batch_size
  rows = tf.concat([tf.range(n, dtype=tf.int64), tf.zeros([padded - n], tf.int64)], 0)
  weight = tf.cast(tf.range(padded) < n, tf.float32)
  return tf.reshape(rows, [num_batches, global_batch_size]), tf.reshape(
      weight, [num_batches, global_batch_size])


@dataclasses.dataclass(frozen=True)
class Segment:
  """Records [start, stop) of one TFRecord file, at rows [row, row + stop - start) of
  the split's canonical order (files sorted, records in file order)."""
  path: str
  start: int
  stop: int
  row: int

  @property
  def count(self):
    return self.stop - self.start


def pipeline_segments(segments, input_context):
  """This pipeline's fixed share of the segments (every pipeline gets at least one)."""
  pipelines = input_context.num_input_pipelines
  if len(segments) < pipelines:
    raise UserError(f"The data has {len(segments)} shard(s) for {pipelines} workers: every "
                    "worker reads its own shards. Convert it into at least as many shards "
                    f"(./launch.sh convert --shards={pipelines * 8}).")
  return segments[input_context.input_pipeline_id::pipelines]


def sharded_steps_per_epoch(segments, global_batch_size, num_pipelines):
  """Whole global batches per epoch: the pipeline with the fewest records decides."""
  share = global_batch_size // num_pipelines
  return min(sum(s.count for s in segments[p::num_pipelines]) // share
             for p in range(num_pipelines))


def _segment_records(segments):
  """A fn(i) -> dataset of (row, serialized record) of segment ``i``."""
  paths = tf.constant([s.path for s in segments])
  starts = tf.constant([s.start for s in segments], tf.int64)
  counts = tf.constant([s.count for s in segments], tf.int64)
  rows = tf.constant([s.row for s in segments], tf.int64)

  def records(i):
    ds = tf.data.TFRecordDataset(paths[i]).skip(starts[i]).take(counts[i])
    return ds.enumerate().map(lambda k, record: (rows[i] + k, record))

  return records


def window_shuffle(ds, size, key):
  """Shuffles ``ds`` within consecutive windows of ``size`` elements, each window by a
  stateless permutation keyed on (``key``, window number): deterministic and keyed on the
  epoch (tf.data's shuffle takes no tensor seed), memory one window of encoded records."""
  def mix(i, window):
    n = tf.shape(window[0])[0]
    perm = tf.argsort(tf.random.stateless_uniform(
        [n], seed=key * tf.constant([1, 1000003], tf.int64) + tf.stack([0, i + 1])))
    return tuple(tf.gather(t, perm) for t in window)

  return ds.batch(size).enumerate().map(mix).unbatch()


def sharded_examples(segments, seed, spe, pipeline_batch, first_position, start_step,
                     shuffle_buffer, cycle=16):
  """(row, record, step, position) of this pipeline from ``start_step`` on, record order."""
  records = _segment_records(segments)
  per_epoch = spe * pipeline_batch
  start_epoch, skip = start_step // spe, (start_step % spe) * pipeline_batch

  def epoch_examples(epoch):
    key = tf.stack([tf.cast(seed, tf.int64), epoch])
    order = tf.argsort(tf.random.stateless_uniform([len(segments)], seed=key))
    ds = tf.data.Dataset.from_tensor_slices(tf.cast(order, tf.int64)).interleave(
        records, cycle_length=min(cycle, len(segments)), block_length=1,
        num_parallel_calls=min(cycle, len(segments)), deterministic=True)
    if shuffle_buffer > 1:
      ds = window_shuffle(ds, shuffle_buffer, key)
    skipped = tf.where(epoch == start_epoch, tf.constant(skip, tf.int64), tf.constant(0, tf.int64))
    ds = ds.take(per_epoch).enumerate().skip(skipped)
    return ds.map(lambda i, example: (example[0], example[1], epoch * spe + i // pipeline_batch,
                                      tf.cast(first_position + i % pipeline_batch, tf.int32)))

  return tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_examples)


def canonical_records(segments):
  """(row, record) of every segment in canonical order: evaluation and cache passes."""
  records = _segment_records(segments)
  return tf.data.Dataset.range(len(segments)).flat_map(records)
