"""Relational KD (Park et al., CVPR 2019): distance and angle relations over the batch.

Distance: the pairwise distances divided by their mean over the pairs of distinct
examples, smooth L1 between the networks; angle: smooth L1 between the cosines of every
triplet's angle. Defaults: RepDistiller (weight 1, distance 25, angle 50, pooled features).
"""

import tensorflow as tf

from kd_research.methods import base


def _smooth_l1(x):
  x = tf.abs(x)
  return tf.where(x < 1.0, 0.5 * tf.square(x), x - 0.5)


def _distances(local, glob, offset):
  """Euclidean distances [b, B] of local rows (global rows offset, offset + 1, ...) to every
  global row, 0 for a row and itself."""
  sq = (tf.reduce_sum(tf.square(local), -1)[:, None] + tf.reduce_sum(tf.square(glob), -1)[None]
        - 2.0 * tf.matmul(local, glob, transpose_b=True))
  self_mask = tf.one_hot(offset + tf.range(tf.shape(local)[0]), tf.shape(glob)[0])
  return tf.sqrt(tf.maximum(sq, 1e-12)) * (1.0 - self_mask)


def _angles(local, glob):
  """cos of the angle j-i-k for local i and global j, k: [b, B, B]."""
  diff = tf.math.l2_normalize(glob[None] - local[:, None], -1)
  return tf.matmul(diff, diff, transpose_b=True)


def _mean_distance(glob):
  """Mean Euclidean distance over the pairs of distinct examples of the global batch."""
  d = _distances(glob, glob, 0)
  n = tf.cast(tf.shape(glob)[0], tf.float32)
  return tf.reduce_sum(d) / tf.maximum(n * (n - 1.0), 1.0)


def rkd(student_local, teacher_local, student_global, teacher_global, offset,
        distance_weight=25.0, angle_weight=50.0):
  """RKD per example: the local rows' shares of the distance and angle losses."""
  s_l, t_l = base.flatten(student_local), base.flatten(teacher_local)
  s_g, t_g = base.flatten(student_global), base.flatten(teacher_global)
  batch = tf.cast(tf.shape(s_g)[0], tf.float32)
  d_s = _distances(s_l, s_g, offset) / _mean_distance(s_g)
  d_t = _distances(t_l, t_g, offset) / _mean_distance(t_g)
  distance = tf.reduce_sum(_smooth_l1(d_s - d_t), -1) / batch
  angle = tf.reduce_sum(_smooth_l1(_angles(s_l, s_g) - _angles(t_l, t_g)), [1, 2]) / (
      batch * batch)
  return distance_weight * distance + angle_weight * angle


@base.register
class RKD(base.RelationalMethod):
  """weight * (distance * distance loss + angle * angle loss) + ce_weight * CE."""

  name, order = "rkd", 5
  defaults = dict(weight=1.0, distance=25.0, angle=50.0, student_tap="pooled",
                  teacher_tap="pooled")
  reference = "RepDistiller scripts/run_cifar_distill.sh"
  field_docs = dict(
      weight="weight of the relational loss",
      distance="weight of the distance term",
      angle="weight of the angle term",
      **base.TAP_DOCS)

  def __init__(self, weight, ce_weight, teacher_weights, pairs, distance_weight=25.0,
               angle_weight=50.0):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.distance_weight, self.angle_weight = distance_weight, angle_weight

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights, ctx.tap_pair(s),
               s.distance, s.angle)

  def relation(self, s_local, t_local, s_global, t_global, offset):
    return rkd(s_local, t_local, s_global, t_global, offset, self.distance_weight,
               self.angle_weight)
