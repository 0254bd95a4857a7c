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
  (float32, or float16 at half the disk) and read as float32."""

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
    return rows.astype(np.float32)

  def gather(self, index):
    """[B, ...] float32 rows at ``index`` ([B] int64 tensor), in the graph."""
    rows = tf.numpy_function(self._read, [index], tf.float32, stateful=False)
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


def write_rows(paths, batches, dtype="float32"):
  """Writes ``batches`` ({key: [n_i, ...]} per batch) as ``dtype`` to ``paths[key]``, each
  file atomically (temporary name, then renamed); returns {key: RowFile}."""
  files = {key: open(path + ".tmp", "wb") for key, path in paths.items()}
  count, tails = 0, {}
  try:
    for batch in batches:
      for key, value in batch.items():
        value = np.ascontiguousarray(value, dtype)
        files[key].write(value.tobytes())
        tails[key] = value.shape[1:]
      count += len(next(iter(batch.values())))
  finally:
    for f in files.values():
      f.close()
  for key, path in paths.items():
    os.replace(path + ".tmp", path)
  return {key: RowFile(path, (count,) + tuple(tails.get(key, ())), dtype)
          for key, path in paths.items()}
