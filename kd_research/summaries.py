"""TensorBoard summaries, written from the outer (Python) loop by the chief only."""

import tensorflow as tf


class Summaries:
  """A thin wrapper over a tf.summary file writer that is a no-op on non-chief workers."""

  def __init__(self, logdir, enabled=True):
    self._writer = tf.summary.create_file_writer(logdir) if enabled else None

  def scalars(self, step, metrics):
    """Writes every ``name: value`` pair of ``metrics`` as a scalar at ``step``."""
    if self._writer is None:
      return
    with self._writer.as_default(step=int(step)):
      for name, value in metrics.items():
        tf.summary.scalar(name, float(value))
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()
