"""Decoupled KD (Zhao et al., CVPR 2022): alpha TCKD + beta NCKD, ramped in over warm-up.

TCKD = KL(b_T || b_S) of the binary (target, non-target) probabilities; NCKD = KL of the
distributions over the non-target classes; each times T^2 (mdistiller's scaling), and
KD = TCKD + (1 - p_t^T) NCKD. Defaults: mdistiller configs/cifar100/dkd (alpha 1,
beta 8, T 4, warm-up 20 epochs).
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import ctkd
from kd_research.methods import logit_standardization as ls


def dkd_terms(student_logits, teacher_logits, labels, temperature):
  """Per-example (TCKD, NCKD), each multiplied by T^2."""
  t = base.f32(temperature)
  s, te = base.f32(student_logits) / t, base.f32(teacher_logits) / t
  mask = tf.one_hot(labels, tf.shape(s)[-1])
  p_s, p_t = tf.nn.softmax(s), tf.nn.softmax(te)
  pt_s = tf.reduce_sum(p_s * mask, -1, keepdims=True)
  pt_t = tf.reduce_sum(p_t * mask, -1, keepdims=True)
  b_s = tf.concat([pt_s, 1.0 - pt_s], -1)
  b_t = tf.concat([pt_t, 1.0 - pt_t], -1)
  tckd = base.kl_rows(b_t, tf.math.log(tf.maximum(b_s, 1e-30)))
  # Non-target distributions: the target class removed (a large negative logit).
  nckd = base.kl_rows(tf.nn.softmax(te - 1000.0 * mask), tf.nn.log_softmax(s - 1000.0 * mask))
  return tf.square(t) * tckd, tf.square(t) * nckd


@base.register
class DKD(ctkd.OwnsTemperature, base.TeacherWeighted):
  """ramp * (alpha TCKD + beta NCKD), ramp = min(step / warmup_steps, 1) (mdistiller ramps
  the loss in over its first epochs)."""

  name, order = "dkd", 1
  ctkd_modifies = standardizes_logits = splits_target_class = True
  defaults = dict(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
  reference = "mdistiller configs/cifar100/dkd"
  field_docs = dict(
      alpha="weight of the target-class term (TCKD)",
      beta="weight of the non-target-class term (NCKD)",
      temperature="temperature of both terms",
      warmup_epochs="epochs over which the DKD loss ramps in linearly")

  def __init__(self, alpha, beta, temperature, warmup_steps, ce_weight, teacher_weights,
               standardize=False):
    super().__init__(1.0, ce_weight, teacher_weights)
    self.alpha, self.beta, self.temperature = alpha, beta, temperature
    self.warmup_steps, self.standardize = warmup_steps, standardize

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.alpha, s.beta, ctkd.temperature(ctx, s.temperature),
               s.warmup_epochs * ctx.steps_per_epoch,
               ctx.distill.ce_weight, ctx.teacher_weights, ctx.distill.logit_standardization)

  def method_loss(self, batch, student, teacher, k, step):
    tckd, nckd = dkd_terms(ls.maybe_standardize(student["logits"], self.standardize),
                           ls.maybe_standardize(teacher["logits"][k], self.standardize),
                           batch["label"], ctkd.value(self.temperature, step))
    return base.ramp(step, self.warmup_steps) * (self.alpha * tckd + self.beta * nckd)

  def scalars(self, step):
    return self.temperature_scalars(step)
