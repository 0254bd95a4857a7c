"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): sum over stage pairs of the
squared distance between L2-normalised attention maps mean_c |f|^p.

Every stage of the student is paired with the teacher's last stages (as many as the
student has); a larger map is average-pooled to the smaller's size, as RepDistiller's AT
does. Defaults: RepDistiller scripts/run_cifar_distill.sh (weight 1000, p 2).
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import maps


def attention_map(feature, p=2.0):
  """L2-normalised, flattened mean over channels of |f|^p: [B, H, W, C] -> [B, H*W]."""
  f = base.f32(feature)
  am = tf.reduce_mean(tf.pow(tf.abs(f), p), -1)
  am = tf.reshape(am, [tf.shape(am)[0], -1])
  return tf.math.l2_normalize(am, -1, epsilon=1e-12)


def attention(student_feature, teacher_feature, p=2.0):
  """Mean over positions of (a_S - a_T)^2 of the attention maps, per example."""
  s, t = maps.match_size(base.f32(student_feature), base.f32(teacher_feature))
  return tf.reduce_mean(tf.square(attention_map(s, p) - attention_map(t, p)), -1)


@base.register
class AttentionTransfer(base.FeatureMethod):
  """weight * sum over stage pairs of the attention-map loss + ce_weight * CE."""

  name, order = "at", 4
  defaults = dict(weight=1000.0, p=2.0)
  reference = "RepDistiller scripts/run_cifar_distill.sh"
  field_docs = dict(
      weight="weight of the attention-transfer loss (beta)",
      p="power of the attention map: sum over channels of |A|^p")

  def __init__(self, weight, ce_weight, teacher_weights, pairs, p=2.0):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.p = p

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights,
               maps.stage_pairs(ctx.student, ctx.teacher, cls.name), s.p)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  def method_loss(self, batch, student, teacher, k, step):
    return tf.add_n([attention(student["features"][s], teacher["features"][k][t], self.p)
                     for s, t in self.pairs])
