"""Correlation congruence (Peng et al., ICCV 2019): the correlation matrices of the
examples of the global batch, under a Gaussian RBF kernel expanded to order P, should
agree between the networks.

On the L2-normalised features f (pooled by default), exp(-gamma ||f_i - f_j||^2) =
exp(-2 gamma) exp(2 gamma f_i . f_j) ~ exp(-2 gamma) sum_{p <= P} (2 gamma f_i . f_j)^p / p!;
the loss is ||C_T - C_S||_F^2 / B^2 (the paper's eq. 7), every example of the global batch
(all-gathered across replicas). The two matrices are B x B whatever the feature sizes, so
no embedding is needed (the paper and RepDistiller add linear embeddings; RepDistiller's
``Correlation`` is another loss, a product of consecutive examples' differences, which we
do not follow). Defaults: gamma 0.4 and P 2 (torchdistill's and the paper's); weight 100
(no reference weight for this form: the loss is of order 1e-3 on the benchmark's pairs,
so 100 makes it a tenth of the CE term; the benchmark chooses 100 or 1000 on validation).
"""

import math

import tensorflow as tf

from kd_research.methods import base


def correlation(local, glob, gamma, order):
  """[b, B] kernel values of the local rows against every global row."""
  a = tf.math.l2_normalize(base.flatten(local), -1, epsilon=1e-12)
  b = tf.math.l2_normalize(base.flatten(glob), -1, epsilon=1e-12)
  similarity = tf.matmul(a, b, transpose_b=True)
  # Powers by repeated products, not tf.pow: pow's gradient at s^0 is 0 * s^-1, NaN where a
  # row is all zeros (a dead pooled feature early in training) and s = 0.
  power, series = tf.ones_like(similarity), tf.zeros_like(similarity)
  for p in range(order + 1):
    series += (2.0 * gamma) ** p / math.factorial(p) * power
    power *= similarity
  return math.exp(-2.0 * gamma) * series


def cc(student_local, teacher_local, student_global, teacher_global, gamma=0.4, order=2):
  """Local rows' shares of ||C_T - C_S||_F^2 / B^2 (times B: the step averages rows)."""
  diff = (correlation(teacher_local, teacher_global, gamma, order)
          - correlation(student_local, student_global, gamma, order))
  batch = tf.cast(tf.shape(student_global)[0], tf.float32)
  return tf.reduce_sum(tf.square(diff), -1) / batch


@base.register
class CC(base.RelationalMethod):
  """weight * CC + ce_weight * CE."""

  name, order = "cc", 13
  defaults = dict(weight=100.0, gamma=0.4, taylor_order=2, student_tap="pooled",
                  teacher_tap="pooled")
  reference = "Peng et al. 2019 eq. 7; torchdistill CCKDLoss (gamma 0.4, P 2)"
  field_docs = dict(
      weight="weight of the correlation-congruence loss",
      gamma="gamma of the Gaussian RBF kernel between embeddings",
      taylor_order="P: order of the kernel's Taylor expansion",
      **base.TAP_DOCS)

  def __init__(self, weight, ce_weight, teacher_weights, pairs, gamma=0.4, taylor_order=2):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.gamma, self.taylor_order = gamma, taylor_order

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    s = distill.section("cc")
    base.require(int(s.taylor_order) == s.taylor_order and s.taylor_order >= 0,
                 f"{where}.cc.taylor_order={s.taylor_order} must be a whole number >= 0.")
    base.require(s.gamma > 0, f"{where}.cc.gamma={s.gamma} must be > 0.")

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights, ctx.tap_pair(s),
               s.gamma, int(s.taylor_order))

  def relation(self, s_local, t_local, s_global, t_global, offset):
    return cc(s_local, t_local, s_global, t_global, self.gamma, self.taylor_order)
