"""Frozen teachers: loading, checking against the data, and running them as one ensemble."""

import os

import keras
import tensorflow as tf

from kd_research import pretrained  # noqa: F401  (registers the custom layers for loading)
from kd_research.errors import UserError


class TeacherEnsemble:
  """K frozen Keras teachers; ``logits(x)`` returns their stacked [K, B, C] float32 logits.

  The tuple of teachers is fixed at construction, before any step is traced, so
  a traced step can never silently keep an older teacher list (TF_NOTES).
  """

  def __init__(self, teacher_models, names):
    self.models = tuple(teacher_models)
    self.names = tuple(names)
    for model in self.models:
      model.trainable = False

  def __len__(self):
    return len(self.models)

  def logits(self, images):
    """Inference-mode logits of every teacher, outside any gradient tape's reach."""
    return tf.stop_gradient(tf.stack(
        [tf.cast(m(images, training=False), tf.float32) for m in self.models]))


def load_teacher(path, input_shape, num_classes, name="teacher"):
  """Loads a teacher saved as ``.keras`` and checks its input shape and class count."""
  if not path:
    raise UserError(f"{name}: no path given; set --config.teacher.path=RUN/model.keras or run "
                    "the 'pipeline' command, which trains the teacher first.")
  if not os.path.exists(path):
    raise UserError(f"{name}: teacher file {path} does not exist.")
  if not path.endswith(".keras"):
    raise UserError(f"{name}: {path} is not a .keras file (saved by this project's runs as "
                    "RUN/model.keras).")
  try:
    model = keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises many types on a corrupt or foreign file.
    raise UserError(f"{name}: cannot load teacher {path}: {type(e).__name__}: {e}")
  got_shape = tuple(model.input_shape[1:])
  if got_shape != tuple(input_shape):
    raise UserError(f"{name}: teacher {path} takes inputs of shape {got_shape}, but the data "
                    f"has images of shape {tuple(input_shape)}.")
  got_classes = model.output_shape[-1]
  if got_classes != num_classes:
    raise UserError(f"{name}: teacher {path} predicts {got_classes} classes, but the data has "
                    f"{num_classes}.")
  return model


def load(paths, input_shape, num_classes):
  """Loads every teacher in ``paths`` into one frozen ``TeacherEnsemble``."""
  if not paths:
    raise UserError("A distillation run needs at least one teacher (config.teacher.path).")
  loaded = [load_teacher(p, input_shape, num_classes, name=f"teacher {i}")
            for i, p in enumerate(paths)]
  return TeacherEnsemble(loaded, [os.path.dirname(p) or p for p in paths])
