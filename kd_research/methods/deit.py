"""DeiT's distillation through the distillation token (Touvron et al., ICML 2021).

A distilled ViT (models/vit.py, ``*_distilled``) has two heads: the class token's, which
the run's ``logits`` are in training, and the distillation token's, tapped as
``head_dist``. Following facebookresearch/deit ``losses.py`` (DistillationLoss):

  loss = (1 - alpha) base + alpha distillation
  base          CE of the class head against the labels smoothed by ``label_smoothing``
                (timm's LabelSmoothingCrossEntropy, or with mixup/cutmix its smoothed
                mixed targets and SoftTargetCrossEntropy: the same smoothing of the target
                distribution, y (1 - eps) + eps / C)
  type 'hard'   CE of the distillation head against the teacher's argmax (not smoothed)
  type 'soft'   KL(softmax(t / T) || softmax(d / T)) T^2 / C per example: the reference's
                sum-reduced KL times T^2 over ``outputs_kd.numel()`` (B C), averaged over
                the batch
  type 'none'   alpha 0: the base loss only (a distilled ViT trained without a teacher)

The teacher sees the same augmented (and mixed) images as the student: the input
pipeline augments before both (data/augment.py). With several teachers, 'soft' weighs
each teacher's KL and 'hard' takes the argmax of their weighted mean probabilities.
Defaults: DeiT's main.py (--distillation-alpha 0.5, --distillation-tau 1.0, --smoothing
0.1); type 'hard', the distillation of the paper's distilled models (main.py's own
default is 'none').
"""

import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.methods import losses

TYPES = ("hard", "soft", "none")
DIST_HEAD = "head_dist"  # the distillation token's head (models/vit.py)


def soft_distillation(dist_logits, teacher_logits, temperature):
  """Per example KL(softmax(t / T) || softmax(d / T)) T^2 / C (DeiT's 'soft')."""
  t = base.f32(temperature)
  teacher = tf.nn.log_softmax(base.f32(teacher_logits) / t, -1)
  student = tf.nn.log_softmax(base.f32(dist_logits) / t, -1)
  kl = tf.reduce_sum(tf.exp(teacher) * (teacher - student), -1)
  return kl * tf.square(t) / tf.cast(tf.shape(dist_logits)[-1], tf.float32)


def hard_distillation(dist_logits, teacher_logits, weights):
  """Per example CE of the distillation head against the argmax of the teachers' weighted
  mean probabilities (DeiT's 'hard'; one teacher: its argmax)."""
  probs = tf.add_n([w * tf.nn.softmax(base.f32(teacher_logits[k]))
                    for k, w in enumerate(weights)])
  return losses.cross_entropy(dist_logits, tf.argmax(probs, -1, output_type=tf.int32))


@base.register
class DeiT(base.Method):
  """(1 - alpha) * smoothed CE of the class head + alpha * distillation of the
  distillation head (``kind``: hard | soft | none)."""

  name, order = "deit", 5
  terms_names = ("total", "distill", "ce")
  student_taps = (DIST_HEAD,)
  defaults = dict(type="hard", alpha=0.5, temperature=1.0, label_smoothing=0.1)
  reference = ("facebookresearch/deit losses.py (DistillationLoss), main.py "
               "(--distillation-alpha 0.5, --distillation-tau 1.0, --smoothing 0.1)")
  field_docs = dict(
      type="hard (CE on the teacher's argmax), soft (KL at T), none (no teacher term)",
      alpha="weight of the distillation term; 1 - alpha weighs the class head's CE",
      temperature="tau of the soft distillation",
      label_smoothing="epsilon of the class head's CE (the distillation term is not smoothed)")

  def __init__(self, kind, alpha, temperature, label_smoothing, teacher_weights):
    self.kind, self.alpha, self.temperature = kind, alpha, temperature
    self.label_smoothing, self.teacher_weights = label_smoothing, teacher_weights

  @classmethod
  def from_config(cls, ctx):
    if DIST_HEAD not in {layer.name for layer in ctx.student.layers}:
      raise UserError(f"config.distill.method=deit reads the student's distillation-token "
                      f"head ({DIST_HEAD!r}), and model {ctx.student.name} has none: use a "
                      "distilled ViT (deit_tiny_distilled, deit_small_distilled, "
                      "deit_base_distilled, vit_mini_distilled), or a logit method (kd, "
                      "dkd, ...) on the class token's head.")
    s = ctx.section(cls.name)
    return cls(s.type, s.alpha, s.temperature, s.label_smoothing, ctx.teacher_weights)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del active, student_epochs
    s = distill.section(cls.name)
    base.require(s.type in TYPES, f"{where}.deit.type={s.type!r}; valid: {', '.join(TYPES)}.")
    base.require(0.0 <= s.alpha <= 1.0 and s.temperature > 0
                 and 0.0 <= s.label_smoothing < 1.0,
                 f"{where}.deit: alpha must be in [0, 1], temperature > 0 and "
                 f"label_smoothing in [0, 1); got alpha={s.alpha}, "
                 f"temperature={s.temperature}, label_smoothing={s.label_smoothing}.")

  def task_term(self, terms, step):
    del step
    return terms["ce"] if self.kind == "none" else (1.0 - self.alpha) * terms["ce"]

  def terms(self, batch, student, teacher, step):
    del step
    logits, dist = student["logits"], student["features"][DIST_HEAD]
    targets = losses.smoothed_targets(batch["label"], logits.shape[-1], self.label_smoothing)
    ce = base.labelled_cross_entropy(dict(batch, label=targets), logits)
    if self.kind == "none":
      return {"total": ce, "distill": tf.zeros_like(ce), "ce": ce}
    if self.kind == "hard":
      distill = hard_distillation(dist, teacher["logits"], self.teacher_weights)
    else:
      distill = tf.add_n([w * soft_distillation(dist, teacher["logits"][k], self.temperature)
                          for k, w in enumerate(self.teacher_weights)])
    return {"total": (1.0 - self.alpha) * ce + self.alpha * distill, "distill": distill,
            "ce": ce}
