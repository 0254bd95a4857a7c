"""Neuron selectivity transfer (Huang & Wang, 2017, "Like What You Like"): the squared MMD,
with the polynomial kernel k(a, b) = (a . b)^2, between the student's and the teacher's
channels, each channel a sample: its activations over the spatial positions,
L2-normalised.

Per stage pair (the last n stages of each, the larger map average-pooled to the smaller's
size) and per example: mean k(t, t') + mean k(s, s') - 2 mean k(s, t) over the channel
pairs; summed over the pairs. Defaults: mdistiller engine/cfg.py and distillers/NST.py
(weight 50, CE 1, post-ReLU stage outputs).
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import maps


def _channels(feature):
  """[B, H, W, C] -> [B, H*W, C], each channel's spatial vector L2-normalised."""
  f = tf.reshape(feature, [tf.shape(feature)[0], -1, feature.shape[-1]])
  return tf.math.l2_normalize(f, axis=1, epsilon=1e-12)


def _kernel_mean(a, b):
  """Per example: mean over channel pairs of (a_c . b_d)^2."""
  return tf.reduce_mean(tf.square(tf.einsum("bpc,bpd->bcd", a, b)), [1, 2])


def nst(student_feature, teacher_feature):
  """Per example: the squared MMD between the two networks' normalised channels."""
  s, t = maps.match_size(base.f32(student_feature), base.f32(teacher_feature))
  s, t = _channels(s), _channels(t)
  return _kernel_mean(t, t) + _kernel_mean(s, s) - 2.0 * _kernel_mean(s, t)


@base.register
class NST(base.FeatureMethod):
  """weight * sum over stage pairs of NST + ce_weight * CE."""

  name, order = "nst", 12
  defaults = dict(weight=50.0)
  reference = "mdistiller engine/cfg.py, distillers/NST.py"
  field_docs = dict(
      weight="weight of the NST (polynomial-kernel MMD) loss")

  @classmethod
  def from_config(cls, ctx):
    return cls(ctx.section(cls.name).weight, ctx.distill.ce_weight, ctx.teacher_weights,
               maps.stage_pairs(ctx.student, ctx.teacher, cls.name))

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  def method_loss(self, batch, student, teacher, k, step):
    return tf.add_n([nst(student["features"][s], teacher["features"][k][t])
                     for s, t in self.pairs])
