"""Trainable connectors that map a student feature to a teacher feature's shape.

Maps ([H, W, C]): resize to the teacher's spatial size when it differs (bilinear), then
a 1x1 convolution to the teacher's channels and BatchNormalization (FitNets' regressor
as RepDistiller's ConvReg does it). Vectors ([D]): a linear layer. Connectors train with
the student and live in its checkpoint, never in the exported model.
"""

import keras
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.models import taps as taps_lib


class Resize(keras.layers.Layer):
  """Bilinear resize of a feature map to a fixed spatial size (no weights)."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = tuple(size)

  def call(self, x):
    return tf.image.resize(x, self.size, method="bilinear")


def check_compatible(student, student_tap, teacher, teacher_tap):
  """UserError unless the two taps are both maps [H, W, C] or both vectors [D]."""
  s_shape, t_shape = taps_lib.shape(student, student_tap), taps_lib.shape(teacher, teacher_tap)
  if sorted((len(s_shape), len(t_shape))) not in ([1, 1], [3, 3]) or len(s_shape) != len(t_shape):
    raise UserError(
        f"A connector cannot map the student's tap {student_tap!r} {s_shape} of {student.name} "
        f"to the teacher's tap {teacher_tap!r} {t_shape} of {teacher.name}: both must be "
        "feature maps [H, W, C] or both vectors [D]. Pick taps of the same kind, e.g. "
        "--config.distill.fitnets.student_tap=pooled --config.distill.fitnets.teacher_tap=pooled.")


def connector(student_shape, teacher_shape, name):
  """A built Keras model from ``student_shape`` to ``teacher_shape`` (batch dims excluded)."""
  student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
  inputs = keras.Input(student_shape)
  if len(student_shape) == 3 and len(teacher_shape) == 3:
    x = inputs
    if student_shape[:2] != teacher_shape[:2]:
      x = Resize(teacher_shape[:2])(x)
    x = keras.layers.Conv2D(teacher_shape[-1], 1, use_bias=False)(x)
    # Synchronised: statistics over the global batch, so results do not depend on the
    # replica count (the student's own BatchNorm follows config.student.sync_bn).
    x = keras.layers.BatchNormalization(synchronized=True)(x)
  elif len(student_shape) == 1 and len(teacher_shape) == 1:
    x = keras.layers.Dense(teacher_shape[-1])(inputs)
  else:
    raise ValueError(f"connector {name}: student feature {student_shape} and teacher feature "
                     f"{teacher_shape} must both be maps [H, W, C] or both vectors [D]; tap "
                     "layers of the same kind.")
  return keras.Model(inputs, x, name=name)
