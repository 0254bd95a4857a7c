"""Per-example float32 rows kept in a file and read on demand: O(batch) memory.

A streamed split's teacher-output cache ([N, K, C] logits for ImageNet is 5 GB) cannot
live in a graph constant. ``RowFile`` stores an [N, ...] float32 array raw and row-major,
so row r of the split is the byte range [r * row_bytes, (r + 1) * row_bytes): rows follow
the split's row order, which is the data's segment order, so every worker reads only the
byte ranges of its own examples. ``gather(index)`` reads a batch's rows with ``os.pread``
inside the input pipeline (no memory map: mapped pages would count in the resident
memory as the epoch touches them).
"""

import os

import numpy as np
import tensorflow as tf


class RowFile:
  """Rows of a raw [N, ...] array in ``path`` (see module docstring), stored as ``dtype``
  (float32, float16 at half the disk, or int32) and read as float32 (int32 for ints)."""

  def __init__(self, path, shape, dtype="float32"):
    self.path, self.shape = path, tuple(int(d) for d in shape)
    self.dtype = np.dtype(dtype)
    self.row_bytes = self.dtype.itemsize * int(np.prod(self.shape[1:]))
    self._fd = None

  def __len__(self):
    return self.shape[0]

  def expected_bytes(self):
    return self.shape[0] * self.row_bytes

  def _read(self, index):
    if self._fd is None:
      self._fd = os.open(self.path, os.O_RDONLY)
    parts = [os.pread(self._fd, self.row_bytes, int(i) * self.row_bytes) for i in index]
    rows = np.frombuffer(b"".join(parts), self.dtype).reshape((len(index),) + self.shape[1:])
    return rows.astype(self._read_dtype)

  @property
  def _read_dtype(self):
    return np.int32 if self.dtype.kind in "iu" else np.float32

  def gather(self, index):
    """[B, ...] float32 (or int32) rows at ``index`` ([B] int64 tensor), in the graph."""
    rows = tf.numpy_function(self._read, [index], tf.as_dtype(self._read_dtype),
                             stateful=False)
    # The batch dimension as static as the index's: the step then traces with the same
    # shapes as with a live teacher (kernels chosen by shape give the same numbers).
    rows.set_shape(tf.TensorShape(index.shape).concatenate(self.shape[1:]))
    return rows

  def chunks(self, rows=4096):
    """The array in chunks of ``rows`` (for the cache's finite-values check)."""
    with open(self.path, "rb") as f:
      while True:
        data = f.read(rows * self.row_bytes)
        if not data:
          return
        yield np.frombuffer(data, self.dtype).reshape((-1,) + self.shape[1:])

  def __getstate__(self):  # The descriptor is per process.
    return dict(self.__dict__, _fd=None)


class ViewRows:
  """Rows per training *view*: row ``step * global_batch + position``, the view of the
  example at ``position`` of the global batch of ``step`` (a deterministic function of the
  seeds, see data/streams.py and data/augment.py), whatever the replica count."""

  def __init__(self, rows, global_batch_size):
    self.rows, self.global_batch_size = rows, int(global_batch_size)
    self.shape = rows.shape

  def gather_batch(self, batch):
    view = batch["step"] * self.global_batch_size + tf.cast(batch["position"], tf.int64)
    return self.rows.gather(view)


class TopKViewRows(ViewRows):
  """Per-view teacher logits kept as their top k (values, indices) and the log-sum-exp of
  the rest (FKD's compression, Shen & Xing 2022, with the tail's mass kept): the logits
  come back as the k values at their classes and, at every other class, the one value r
  with (C - k) exp(r) = exp(tail), so the softmax at T = 1 has the teacher's top-k
  probabilities and total tail mass exactly (the tail spread evenly)."""

  def __init__(self, values, indices, tail, num_classes, global_batch_size):
    super().__init__(values, global_batch_size)
    self.indices, self.tail, self.num_classes = indices, tail, int(num_classes)
    self.shape = values.shape[:2] + (self.num_classes,)

  def gather_batch(self, batch):
    view = batch["step"] * self.global_batch_size + tf.cast(batch["position"], tf.int64)
    return reconstruct(self.rows.gather(view), self.indices.gather(view),
                       self.tail.gather(view), self.num_classes)


def top_k(logits, k):
  """(values [.., k], indices [.., k], tail log-sum-exp [.., 1]) of logits [.., C]."""
  values, indices = tf.math.top_k(logits, k)
  rest = tf.reduce_sum(tf.one_hot(indices, tf.shape(logits)[-1], on_value=-np.inf,
                                  off_value=0.0), -2) + logits
  return values, indices, tf.reduce_logsumexp(rest, -1, keepdims=True)


def reconstruct(values, indices, tail, num_classes):
  """Logits [.., C] from ``top_k``'s three parts (see TopKViewRows)."""
  k = values.shape[-1]
  rest = tail - np.log(num_classes - k)
  chosen = tf.one_hot(indices, num_classes, dtype=values.dtype)  # [.., k, C]
  return rest + tf.reduce_sum(chosen * (values[..., None] - rest[..., None]), -2)


def write_rows(paths, batches, dtype="float32"):
  """Writes ``batches`` ({key: [n_i, ...]} per batch) to ``paths[key]`` as ``dtype`` (one
  for all, or {key: dtype}), each file atomically (temporary name, then renamed); returns
  {key: RowFile}."""
  dtypes = dtype if isinstance(dtype, dict) else {key: dtype for key in paths}
  files = {key: open(path + ".tmp", "wb") for key, path in paths.items()}
  count, tails = 0, {}
  try:
    for batch in batches:
      for key, value in batch.items():
        value = np.ascontiguousarray(value, dtypes[key])
        files[key].write(value.tobytes())
        tails[key] = value.shape[1:]
      count += len(next(iter(batch.values())))
  finally:
    for f in files.values():
      f.close()
  for key, path in paths.items():
    os.replace(path + ".tmp", path)
  return {key: RowFile(path, (count,) + tuple(tails.get(key, ())), dtypes[key])
          for key, path in paths.items()}
