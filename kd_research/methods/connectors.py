"""Trainable connectors that map a student feature to a teacher feature's shape.

Maps ([H, W, C]): mdistiller's and RepDistiller's ``ConvReg`` (distillers/_common.py,
``use_relu=True`` as both FitNets distillers call it): conv -> BatchNorm -> ReLU, where the
conv follows the two maps' heights: a 3x3 stride-2 conv (padding 1) when the student's map
is twice the teacher's, a 4x4 stride-2 transposed conv (padding 1) when it is half, and a
(1 + Hs - Ht) x (1 + Ws - Wt) valid conv otherwise (1x1 for equal sizes); a student map
smaller than the teacher's, other than half, is refused as the reference refuses it.
``kind="resize"`` keeps the earlier path as a named option: bilinear resize to the
teacher's size, then a 1x1 conv (-> BN -> ReLU), for any pair of sizes.

Departures from ConvReg (neither changes what the connector computes in training mode):
the conv has no bias (a BatchNorm follows: the bias is removed by the batch mean, its
true gradient is 0, and Adam would turn its rounding noise into drift), and the
BatchNorm is synchronised across replicas so that results do not depend on their count.
Initialisation is PyTorch's default Conv2d/ConvTranspose2d init, as the reference's.

Vectors ([D]): a linear layer. Connectors train with the student and live in its
checkpoint, never in the exported model.
"""

import keras
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.models import pytorch_layers
from kd_research.models import taps as taps_lib

KINDS = ("reference", "resize")


@keras.saving.register_keras_serializable(package="kd_research")
class Resize(keras.layers.Layer):
  """Bilinear resize of a feature map to a fixed spatial size (no weights)."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = tuple(size)

  def call(self, x):
    return tf.image.resize(x, self.size, method="bilinear")

  def get_config(self):
    return {**super().get_config(), "size": self.size}


def check_compatible(student, student_tap, teacher, teacher_tap, kind="reference"):
  """UserError unless the two taps are both maps [H, W, C] or both vectors [D], and (for
  the reference connector) the student's map size is one ConvReg can map."""
  s_shape, t_shape = taps_lib.shape(student, student_tap), taps_lib.shape(teacher, teacher_tap)
  if sorted((len(s_shape), len(t_shape))) not in ([1, 1], [3, 3]) or len(s_shape) != len(t_shape):
    raise UserError(
        f"A connector cannot map the student's tap {student_tap!r} {s_shape} of {student.name} "
        f"to the teacher's tap {teacher_tap!r} {t_shape} of {teacher.name}: both must be "
        "feature maps [H, W, C] or both vectors [D]. Pick taps of the same kind, e.g. "
        "--config.distill.fitnets.student_tap=pooled --config.distill.fitnets.teacher_tap=pooled.")
  if len(s_shape) == 3 and kind == "reference" and reference_conv(s_shape, t_shape) is None:
    raise UserError(
        f"The reference connector (ConvReg) cannot map the student's tap {student_tap!r} "
        f"{s_shape} to the teacher's tap {teacher_tap!r} {t_shape}: it maps a student map "
        "twice the teacher's size, half of it, or at least as large in both directions. "
        "Pick other taps, or --config.distill.fitnets.connector=resize (bilinear resize, "
        "then a 1x1 conv).")


def reference_conv(student_shape, teacher_shape):
  """ConvReg's conv for these [H, W, C] shapes as (kind, kernel, stride), or None when the
  reference refuses the pair: ('conv', 3, 2), ('transpose', 4, 2) or ('conv', (kh, kw), 1)."""
  (sh, sw), (th, tw) = student_shape[:2], teacher_shape[:2]
  if sh == 2 * th:
    return "conv", 3, 2
  if sh * 2 == th:
    return "transpose", 4, 2
  if sh >= th and sw >= tw:
    return "conv", (1 + sh - th, 1 + sw - tw), 1
  return None


def _map_connector(inputs, student_shape, teacher_shape, kind):
  """conv (ConvReg's, or resize + 1x1) -> synchronised BN -> ReLU on ``inputs``."""
  channels = teacher_shape[-1]
  init = pytorch_layers.conv_initializer("default")
  if kind == "resize":
    x = inputs if student_shape[:2] == teacher_shape[:2] else Resize(teacher_shape[:2])(inputs)
    x = keras.layers.Conv2D(channels, 1, use_bias=False, kernel_initializer=init)(x)
  else:
    conv_kind, kernel, stride = reference_conv(student_shape, teacher_shape)
    if conv_kind == "transpose":  # PyTorch's padding=1 crops one row/column on each side,
      # as 'same' does for kernel 4, stride 2 (output 2H).
      x = keras.layers.Conv2DTranspose(channels, kernel, strides=stride, padding="same",
                                       use_bias=False, kernel_initializer=init)(inputs)
    elif stride == 2:  # padding=1 on every side (Keras' 'same' would pad bottom/right only).
      x = keras.layers.ZeroPadding2D(1)(inputs)
      x = keras.layers.Conv2D(channels, kernel, strides=2, use_bias=False,
                              kernel_initializer=init)(x)
    else:
      x = keras.layers.Conv2D(channels, kernel, use_bias=False, kernel_initializer=init)(inputs)
  # Synchronised: statistics over the global batch, so results do not depend on the
  # replica count (the student's own BatchNorm follows config.student.sync_bn).
  x = pytorch_layers.batch_norm(True)(x)
  return keras.layers.ReLU()(x)


def connector(student_shape, teacher_shape, name, kind="reference"):
  """A built Keras model from ``student_shape`` to ``teacher_shape`` (batch dims excluded)."""
  student_shape, teacher_shape = tuple(student_shape), tuple(teacher_shape)
  if kind not in KINDS:
    raise ValueError(f"connector kind {kind!r}; valid: {', '.join(KINDS)}")
  inputs = keras.Input(student_shape)
  if len(student_shape) == 3 and len(teacher_shape) == 3:
    if kind == "reference" and reference_conv(student_shape, teacher_shape) is None:
      raise ValueError(f"connector {name}: ConvReg cannot map {student_shape} to "
                       f"{teacher_shape}; use kind='resize'.")
    x = _map_connector(inputs, student_shape, teacher_shape, kind)
  elif len(student_shape) == 1 and len(teacher_shape) == 1:
    x = keras.layers.Dense(teacher_shape[-1])(inputs)
  else:
    raise ValueError(f"connector {name}: student feature {student_shape} and teacher feature "
                     f"{teacher_shape} must both be maps [H, W, C] or both vectors [D]; tap "
                     "layers of the same kind.")
  return keras.Model(inputs, x, name=name)
