"""WTTM, weighted transformed teacher matching (Zheng & Yang, ICLR 2024).

The teacher's probabilities go through a power transform, p_t^gamma / sum_c p_t,c^gamma (a
temperature on the teacher only: gamma = 1 / T), the student's stay at T = 1, and each
example's KL is weighted by the power sum U = sum_c p_t,c^gamma (large for an uncertain
teacher):

    loss = U * KL(p_t^gamma / U || softmax(student)).

Reference: ``zkxufo/TTM`` distiller_zoo/wttm.py (``WTTM(l)``), whose training script adds it
as ``beta * loss`` to ``gamma * CE`` (``-b`` and ``-r``, CE weight 1). Defaults: the one WTTM
configuration its README states, gamma (``--ttm_l``) 0.2 with weight 4 (``-a 4``, with CRD
weighted 0.8: ``--distill crd --add wttm --ttm_l 0.2 -b 0.8 -a 4``, vgg13 -> vgg8); the
paper's per-pair values differ (its appendix) and are a config field away. WTTM + CRD is
``--config.distill.method=wttm,crd --config.distill.crd.weight=0.8`` (the preset variant
``wttm_crd`` of the method benchmark).
"""

import tensorflow as tf

from kd_research.methods import base


def wttm_loss(student_logits, teacher_logits, gamma):
  """Per-example U * KL(p_t^gamma / U || softmax(s)), U = sum_c p_t,c^gamma (float32).

  p_t^gamma = exp(gamma log_softmax(t)): the log-space form of the reference's
  ``pow(softmax(t), l)``, equal to it in exact arithmetic, with no 0^gamma underflow."""
  log_p_t = tf.nn.log_softmax(base.f32(teacher_logits))
  powered = tf.exp(base.f32(gamma) * log_p_t)
  power_sum = tf.reduce_sum(powered, -1)
  transformed = powered / power_sum[:, None]
  return power_sum * base.kl_rows(transformed, tf.nn.log_softmax(base.f32(student_logits)))


@base.register
class WTTM(base.TeacherWeighted):
  """ce_weight * CE + weight * U * KL(transformed teacher || student)."""

  name, order = "wttm", 2
  defaults = dict(weight=4.0, gamma=0.2)
  reference = ("zkxufo/TTM distiller_zoo/wttm.py; README.md's WTTM command "
               "(--ttm_l 0.2, -a 4)")
  field_docs = dict(
      weight="weight of the WTTM loss (the reference's -a / -b)",
      gamma="exponent of the teacher's power transform (--ttm_l; 1 / temperature)")

  def __init__(self, weight, gamma, ce_weight, teacher_weights):
    super().__init__(weight, ce_weight, teacher_weights)
    self.gamma = gamma

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, s.gamma, ctx.distill.ce_weight, ctx.teacher_weights)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del student_epochs
    if active:
      gamma = distill.section(cls.name).gamma
      base.require(gamma > 0, f"{where}.wttm.gamma={gamma}: the power transform's exponent "
                   "must be > 0 (the reference uses 0.1-0.5; 1 is plain KD at T 1).")

  def method_loss(self, batch, student, teacher, k, step):
    return wttm_loss(student["logits"], teacher["logits"][k], self.gamma)
