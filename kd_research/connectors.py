"""Trainable connectors that map a student feature to a teacher feature's shape.

Maps ([H, W, C]): resize to the teacher's spatial size when it differs (bilinear), then
a 1x1 convolution to the teacher's channels and BatchNormalization (FitNets' regressor
as RepDistiller's ConvReg does it). Vectors ([D]): a linear layer. Connectors train with
the student and live in its checkpoint, never in the exported model.
"""

import keras
import tensorflow as tf


class Resize(keras.layers.Layer):
  """Bilinear resize of a feature map to a fixed spatial size (no weights)."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = tuple(size)

  def call(self, x):
    return tf.image.resize(x, self.size, method="bilinear")


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
