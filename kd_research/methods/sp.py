"""Similarity-preserving KD (Tung & Mori, ICCV 2019): the squared Frobenius distance between
the row-normalised Gram matrices of the flattened features over the batch. Defaults:
RepDistiller (weight 3000, the last stage of both networks)."""

import tensorflow as tf

from kd_research.methods import base


def sp(student_local, teacher_local, student_global, teacher_global):
  """Local rows' shares of ||G_T - G_S||_F^2 / B^2."""
  def gram(local, glob):
    return tf.math.l2_normalize(
        tf.matmul(base.flatten(local), base.flatten(glob), transpose_b=True), -1)
  diff = gram(teacher_local, teacher_global) - gram(student_local, student_global)
  batch = tf.cast(tf.shape(student_global)[0], tf.float32)
  return tf.reduce_sum(tf.square(diff), -1) / batch


@base.register
class SP(base.RelationalMethod):
  """weight * SP + ce_weight * CE."""

  name, order = "sp", 7
  defaults = dict(weight=3000.0, student_tap="last_stage", teacher_tap="last_stage")
  reference = "RepDistiller scripts/run_cifar_distill.sh"
  field_docs = dict(
      weight="weight of the similarity-preserving loss",
      **base.TAP_DOCS)

  def relation(self, s_local, t_local, s_global, t_global, offset):
    return sp(s_local, t_local, s_global, t_global)
