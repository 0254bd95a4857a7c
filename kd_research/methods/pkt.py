"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): KL between the rows of
the two networks' cosine-similarity kernels over the batch. Defaults: RepDistiller
(weight 30000, pooled features)."""

import tensorflow as tf

from kd_research.methods import base


def pkt(student_local, teacher_local, student_global, teacher_global, eps=1e-7):
  """KL between the rows of the teacher's and student's cosine kernels (shifted to [0, 1],
  rows normalised); local rows' shares of the mean over B^2 entries."""
  def kernel(local, glob):
    a = tf.math.l2_normalize(base.flatten(local), -1)
    b = tf.math.l2_normalize(base.flatten(glob), -1)
    k = (tf.matmul(a, b, transpose_b=True) + 1.0) / 2.0
    return k / tf.reduce_sum(k, -1, keepdims=True)
  s, t = kernel(student_local, student_global), kernel(teacher_local, teacher_global)
  batch = tf.cast(tf.shape(student_global)[0], tf.float32)
  return tf.reduce_sum(t * tf.math.log((t + eps) / (s + eps)), -1) / batch


@base.register
class PKT(base.RelationalMethod):
  """weight * PKT + ce_weight * CE."""

  name, order = "pkt", 6
  defaults = dict(weight=30000.0, student_tap="pooled", teacher_tap="pooled")
  reference = "RepDistiller scripts/run_cifar_distill.sh"
  field_docs = dict(
      weight="weight of the probabilistic knowledge-transfer loss",
      **base.TAP_DOCS)

  def relation(self, s_local, t_local, s_global, t_global, offset):
    return pkt(s_local, t_local, s_global, t_global)
