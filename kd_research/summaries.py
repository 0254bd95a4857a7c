"""TensorBoard summaries, written from the outer (Python) loop by the chief only."""

import math

import numpy as np

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

  def images(self, step, name, images):
    """Writes a batch of images in [0, 1] (shape [N, H, W, C]) as one grid image."""
    if self._writer is None:
      return
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape[-1] == 2 or images.shape[-1] > 4:
      raise ValueError(f"images must have 1, 3 or 4 channels, got {images.shape}")
    with self._writer.as_default(step=int(step)):
      tf.summary.image(name, image_grid(images)[None], max_outputs=1)
    self._writer.flush()

  def hparams(self, params, trial_id):
    """Records the run's hyper-parameters for TensorBoard's HParams dashboard."""
    if self._writer is None:
      return
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
             for k, v in params.items()}
    with self._writer.as_default():
      hp.hparams(clean, trial_id=trial_id)
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


def image_grid(images, columns=None):
  """Tiles [N, H, W, C] images into one [rows*H, cols*W, C] image (blank cells at the end)."""
  n, height, width, channels = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = -(-n // columns)
  pad = rows * columns - n
  images = tf.concat([images, tf.zeros([pad, height, width, channels], images.dtype)], 0)
  grid = tf.reshape(images, [rows, columns, height, width, channels])
  grid = tf.transpose(grid, [0, 2, 1, 3, 4])
  return tf.reshape(grid, [rows * height, columns * width, channels])


def confusion_image(confusion, cell=8):
  """A [C*cell, C*cell, 3] float image of a confusion matrix: rows true, columns predicted.

  Each row is normalised by its count; white is 0, dark blue is 1 (of that row).
  """
  confusion = np.asarray(confusion, np.float64)
  rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1.0)
  low, high = np.array([1.0, 1.0, 1.0]), np.array([0.03, 0.19, 0.42])
  rgb = low + rows[..., None] * (high - low)
  return np.kron(rgb, np.ones((cell, cell, 1))).astype(np.float32)
