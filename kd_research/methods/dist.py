"""DIST (Huang et al., NeurIPS 2022): Pearson correlation between the softmaxes.

beta * inter-class relation (per example, across classes) + gamma * intra-class relation
(per class, across the global batch). Defaults: the reference implementation,
hunto/DIST_KD: weight 2 (``kd_loss_weight: 2`` in configs/strategies/distill/dist_cifar.yaml
and resnet_dist.yaml, CE weight ``ori_loss_weight: 1``), beta = gamma = 1 and tau = 1 (the
``dist`` method of classification/lib/models/losses/kd_loss.py builds
``DIST(beta=1, gamma=1, tau=1)``; ``dist_t4`` would be tau 4).
"""

import tensorflow as tf

from kd_research.methods import base


def _pearson_rows(a, b, eps=1e-8):
  """Pearson correlation of matching rows of a and b ([N, D] -> [N])."""
  a = a - tf.reduce_mean(a, -1, keepdims=True)
  b = b - tf.reduce_mean(b, -1, keepdims=True)
  return tf.reduce_sum(a * b, -1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + eps)


def dist_inter(student_logits, teacher_logits, temperature):
  """tau^2 (1 - Pearson(softmax(s / tau), softmax(t / tau))) per example (inter-class)."""
  t = base.f32(temperature)
  return tf.square(t) * (1.0 - _pearson_rows(tf.nn.softmax(base.f32(student_logits) / t),
                                             tf.nn.softmax(base.f32(teacher_logits) / t)))


def dist_intra(student_global, teacher_global, temperature, local_size):
  """tau^2 (1 - mean over classes of Pearson over the batch): a batch loss, given to each of
  the ``local_size`` local examples (their average is the batch loss)."""
  t = base.f32(temperature)
  y_s = tf.nn.softmax(base.f32(student_global) / t)
  y_t = tf.nn.softmax(base.f32(teacher_global) / t)
  value = tf.square(t) * (1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(y_s),
                                                               tf.transpose(y_t))))
  return tf.fill([local_size], value)


@base.register
class DIST(base.TeacherWeighted):
  """beta * inter-class + gamma * intra-class relation loss."""

  name, order = "dist", 2
  defaults = dict(weight=2.0, beta=1.0, gamma=1.0, temperature=1.0)
  reference = ("hunto/DIST_KD configs/strategies/distill/dist_cifar.yaml, resnet_dist.yaml "
               "(kd_loss_weight 2); lib/models/losses/kd_loss.py (dist: tau 1)")
  field_docs = dict(
      weight="weight of the DIST loss",
      beta="weight of the inter-class (per-example) relation",
      gamma="weight of the intra-class (per-class) relation",
      temperature="tau: temperature of both softmaxes")

  def __init__(self, weight, beta, gamma, tau, ce_weight, teacher_weights):
    super().__init__(weight, ce_weight, teacher_weights)
    self.beta, self.gamma, self.tau = beta, gamma, tau

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, s.beta, s.gamma, s.temperature, ctx.distill.ce_weight,
               ctx.teacher_weights)

  def method_loss(self, batch, student, teacher, k, step):
    s, t = student["logits"], teacher["logits"][k]
    s_global, _ = base.gather_global(s)
    t_global, _ = base.gather_global(t)
    return (self.beta * dist_inter(s, t, self.tau)
            + self.gamma * dist_intra(s_global, t_global, self.tau, tf.shape(s)[0]))
