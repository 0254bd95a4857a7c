"""NKD, normalized knowledge distillation (Yang et al., ICCV 2023, "From Knowledge
Distillation to Self-Knowledge Distillation").

Two terms per example, with t the target class (the label; the arg-max of a mixed or
smoothed label distribution, as the reference takes it):

    target:     -p_t^T(t) log p^S(t)                            at temperature 1;
    non-target: -gamma T^2 sum_{c != t} q^T_c log q^S_c,

q the softmax at temperature T of the logits with the target class removed (the
non-target distributions, each normalised to sum 1). Both are cross-entropies, as in the
reference (not KLs: the values differ from a KL by the teacher's entropy; the gradients
do not).

Reference: ``yzd-v/cls_KD`` mmcls/models/dis_losses/nkd.py (``NKDLoss``: temp 1, gamma 1.5,
the values of configs/distillers/imagenet/res34_distill_res18_img.py), added to the
student's CE with weight 1 (mmcls/distillation/distillers/classification_distiller.py).
That repository's older copy, mmcls/distillation/losses/nkd.py, builds its mask with
``scatter_(1, label, 1)`` on ones, which keeps the target class in the "non-target"
distribution; we follow the newer file and the paper, which remove it.
"""

import tensorflow as tf

from kd_research.methods import base


def target_classes(labels):
  """[B] int32 target classes: the labels, or the arg-max of label distributions [B, C]."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2:
    return tf.argmax(labels, -1, output_type=tf.int32)
  return tf.cast(labels, tf.int32)


def non_target_log_softmax(logits, target_mask, temperature):
  """log_softmax(logits / T) over the classes outside ``target_mask`` ([B, C]; the target
  entries come out as large negative numbers, which a 0 weight cancels)."""
  return tf.nn.log_softmax(logits / temperature - 1e9 * target_mask)


def nkd_terms(student_logits, teacher_logits, labels, temperature, gamma):
  """Per-example (target term, non-target term) of NKD, in float32."""
  s, te = base.f32(student_logits), base.f32(teacher_logits)
  t = base.f32(temperature)
  mask = tf.one_hot(target_classes(labels), tf.shape(s)[-1])
  p_target = tf.stop_gradient(tf.reduce_sum(tf.nn.softmax(te) * mask, -1))
  log_s_target = tf.reduce_sum(tf.nn.log_softmax(s) * mask, -1)
  q_teacher = tf.nn.softmax(te / t - 1e9 * mask)
  non_target = -tf.reduce_sum(q_teacher * (1.0 - mask) * non_target_log_softmax(s, mask, t), -1)
  return -p_target * log_s_target, gamma * tf.square(t) * non_target


@base.register
class NKD(base.TeacherWeighted):
  """ce_weight * CE + weight * (target term + non-target term)."""

  name, order = "nkd", 2
  defaults = dict(weight=1.0, temperature=1.0, gamma=1.5)
  reference = ("yzd-v/cls_KD mmcls/models/dis_losses/nkd.py; "
               "configs/distillers/imagenet/res34_distill_res18_img.py (temp 1, gamma 1.5)")
  field_docs = dict(
      weight="weight of the NKD loss (the reference adds it with weight 1)",
      temperature="temperature of the non-target distributions",
      gamma="weight of the non-target term")

  def __init__(self, weight, temperature, gamma, ce_weight, teacher_weights):
    super().__init__(weight, ce_weight, teacher_weights)
    self.temperature, self.gamma = temperature, gamma

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, s.temperature, s.gamma, ctx.distill.ce_weight, ctx.teacher_weights)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del student_epochs
    if active:
      t = distill.section(cls.name).temperature
      base.require(t > 0, f"{where}.nkd.temperature={t} must be > 0.")

  def method_loss(self, batch, student, teacher, k, step):
    target, non_target = nkd_terms(student["logits"], teacher["logits"][k], batch["label"],
                                   self.temperature, self.gamma)
    return target + non_target
