"""TensorBoard summaries, written from the outer (Python) loop by the chief only.

Event files go straight into the run directory, so TensorBoard names each run after
its stage: ``--logdir=runs/quickstart`` lists teacher, student_baseline, student_kd
(and student_kd_<variant>/seed_K in pipelines with variants and seeds).
"""

import math
import os

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
    """Records the run's hyper-parameters for TensorBoard's HParams dashboard.

    ``params`` comes from ``run_hparams``. Every run declares the same columns
    (HPARAM_COLUMNS, then the METRICS): TensorBoard takes the column list from one
    run's declaration, so a teacher's run must declare the distillation columns too.
    """
    if self._writer is None:
      return
    from tensorboard.plugins.hparams import api as hp  # pylint: disable=g-import-not-at-top
    clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
             for k, v in params.items()}
    with self._writer.as_default():
      hp.hparams_config(hparams=[hp.HParam(name) for name, _ in HPARAM_COLUMNS],
                        metrics=[hp.Metric(tag, display_name=name) for tag, name in METRICS])
      hp.hparams(clean, trial_id=trial_id)
    self._writer.flush()

  def close(self):
    if self._writer is not None:
      self._writer.close()


# The metrics the HParams table shows as columns: (scalar tag, column name).
METRICS = (("eval/accuracy", "validation accuracy"), ("test/accuracy", "test accuracy"),
           ("distill/test_agreement", "test agreement with teacher"),
           ("distill/agreement", "validation agreement with teacher"),
           ("train/loss_total", "train loss"), ("train/examples_per_second", "examples/s"))
# The HParams columns, in order: (column, flattened run-identity key). They are the fields
# that tell the runs of a pipeline or sweep apart; the whole config stays in config.json.
# TensorBoard (2.21) sorts hparam columns by name and checks the first five, so the
# names carry their rank ("01 method", ...): the distinguishing ones lead on every version.
_COLUMNS = (
    ("method", None), ("model", "model.model"), ("width", "model.width"), ("seed", "model.seed"),
    ("alpha", "distill.alpha.start"), ("T", "distill.temperature.start"),
    ("epochs", "model.epochs"), ("role", "role"),
    ("alpha_end", "distill.alpha.end"), ("alpha_schedule", "distill.alpha.kind"),
    ("T_end", "distill.temperature.end"),
    ("T_schedule", "distill.temperature.kind"), ("teachers", "teachers"),
    ("combine", "distill.combine"), ("finetune_epochs", "distill.finetune_epochs"),
    ("dataset", "dataset"), ("train_size", "train_size"), ("optimizer", "optimizer.name"),
    ("learning_rate", "optimizer.learning_rate.start"), ("batch", "global_batch_size"),
    ("precision", "mixed_precision"), ("augment", "augment.ops"))
HPARAM_COLUMNS = tuple((f"{rank:02d} {name}", key) for rank, (name, key) in
                       enumerate(_COLUMNS, start=1))


def run_hparams(flat_identity):
  """{column: value} of HPARAM_COLUMNS for one run (distillation columns only when distilling).

  ``method`` is config.distill.method for distillation runs and 'labels' otherwise;
  ``teachers`` is the number of teachers. Schedules (alpha, T, learning rate) are nested
  entries of the identity: their start value, end value and kind are separate columns.
  """
  params = {}
  for column, key in HPARAM_COLUMNS:
    if key is None:  # method
      params[column] = (flat_identity.get("distill.method", "kd")
                        if flat_identity.get("role") == "distill" else "labels")
    elif key in flat_identity:
      value = flat_identity[key]
      params[column] = len(value) if key == "teachers" else value
  return params


def trial_id(path):
  """'student_kd/seed_0 (runs/quickstart)' for run directory ``path``: the stage first, so
  the truncated HParams column still tells runs apart; the parent keeps it unique."""
  parent, name = os.path.split(path)
  if name.startswith("seed_"):
    parent, stage = os.path.split(parent)
    name = f"{stage}/{name}"
  return f"{name} ({parent})" if parent else name


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
