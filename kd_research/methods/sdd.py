"""SDD, scale decoupled distillation (Wei et al., CVPR 2024): logit distillation at several
scales of the last feature map.

Each network's last map (the one its classifier reads through global average pooling) is
average-pooled to 4 x 4 (PyTorch's adaptive pooling), and from that to 2 x 2 and 1 x 1:
21 regions for scales (1, 2, 4). The network's own classifier (its 'logits' layer, kernel
and bias) scores each region, and a logit loss is taken per region: KD at T (SD-KD) or DKD
(SD-DKD). A region whose teacher prediction is right while the global one is wrong, or
wrong while the global one is right, weighs 2; the rest 1. Per example: the weighted sum
over regions / the number of regions (the reference divides its sum by batch x regions).

Reference: ``shicaiwei123/SDD-CVPR2024`` mdistiller/distillers/KD.py (``sdd_kd_loss``,
``SDD_KD``), SDD_DKD.py (``multi_dkd``), models/cifar/utils.py (``SPP``, M='[1,2,4]', the
README's command), train_origin.py (--warmup 20, read by SD-DKD only). Defaults: SD-KD with
mdistiller's KD weights (CE 0.1, KD 0.9, T 4; engine/cfg.py); SD-DKD (``type=dkd``) with
configs/cifar100/sdd_dkd/res56_res20.yaml's beta 2 wants ``ce_weight=1, weight=1, beta=2``
(mdistiller's DKD: CE 1, alpha 1, beta 8, T 4). The reference's NaN-to-0 guard is not
needed: these KLs are finite.
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import dkd as dkd_lib
from kd_research.methods import maps
from kd_research.models import taps as taps_lib

TYPES = ("kd", "dkd")


def region_features(feature_map, scales):
  """[B, R, C]: the map pooled to 4 x 4 (or the largest scale), then every scale pooled from
  that, regions in the reference's order (1 x 1 first, then 2 x 2, 4 x 4; row-major)."""
  largest = max(scales)
  fine = maps.adaptive_avg_pool(base.f32(feature_map), (largest, largest))
  parts = []
  for scale in scales:
    pooled = maps.adaptive_avg_pool(fine, (scale, scale))
    parts.append(tf.reshape(pooled, [tf.shape(pooled)[0], scale * scale, pooled.shape[-1]]))
  return tf.concat(parts, 1)


def region_weights(teacher_regions, labels):
  """[B, R]: 2 where the teacher's region prediction and its global one (region 0) differ in
  correctness, else 1."""
  right = tf.cast(tf.equal(tf.argmax(teacher_regions, -1, output_type=tf.int32),
                           tf.cast(labels, tf.int32)[:, None]), tf.float32)
  return 1.0 + tf.abs(right - right[:, :1])


def sdd_loss(student_regions, teacher_regions, labels, kind, temperature, alpha=1.0, beta=8.0):
  """Per-example SDD loss from region logits [B, R, K] of the student and the teacher."""
  s, t = base.f32(student_regions), base.f32(teacher_regions)
  b, r, k = tf.shape(s)[0], tf.shape(s)[1], tf.shape(s)[2]
  flat_s, flat_t = tf.reshape(s, [b * r, k]), tf.reshape(t, [b * r, k])
  if kind == "kd":
    per_region = tf.square(base.f32(temperature)) * base.kl_rows(
        tf.nn.softmax(flat_t / temperature), tf.nn.log_softmax(flat_s / temperature))
  else:
    repeated = tf.reshape(tf.tile(tf.cast(labels, tf.int32)[:, None], [1, r]), [-1])
    tckd, nckd = dkd_lib.dkd_terms(flat_s, flat_t, repeated, temperature)
    per_region = alpha * tckd + beta * nckd
  weights = region_weights(t, labels)
  return tf.reduce_sum(tf.reshape(per_region, [b, r]) * weights, -1) / tf.cast(r, tf.float32)


@base.register
class SDD(base.TeacherWeighted):
  """ce_weight * CE + weight * ramp * SDD (ramp: DKD's warm-up, SD-DKD only)."""

  name, order, kind = "sdd", 3, "feature"
  splits_target_class = True  # its weights compare predictions with the target class
  defaults = dict(type="kd", scales=(1, 2, 4), weight=0.9, ce_weight=0.1, temperature=4.0,
                  alpha=1.0, beta=8.0, warmup_epochs=20)
  reference = ("shicaiwei123/SDD-CVPR2024 mdistiller/distillers/KD.py (SDD_KD), SDD_DKD.py, "
               "models/cifar/utils.py (SPP, M [1,2,4]); mdistiller engine/cfg.py (KD: CE 0.1, "
               "KD 0.9, T 4)")
  field_docs = dict(
      type="kd (SD-KD) or dkd (SD-DKD): the loss taken per region",
      scales="pooling scales of the last map (regions: the sum of their squares)",
      weight="weight of the SDD loss (KD's 0.9; SD-DKD: 1)",
      ce_weight="weight of the CE term (KD's 0.1; SD-DKD: 1)",
      temperature="temperature of both softmaxes",
      alpha="SD-DKD: weight of the target-class term",
      beta="SD-DKD: weight of the non-target term (the reference's res56_res20: 2)",
      warmup_epochs="SD-DKD: epochs over which its loss ramps in (SD-KD has none)")

  def __init__(self, section, ce_weight, teacher_weights, student_head, teacher_heads,
               warmup_steps):
    super().__init__(section.weight, ce_weight, teacher_weights)
    self.section, self.warmup_steps = section, warmup_steps
    self.student_head, self.teacher_heads = student_head, tuple(teacher_heads)
    self.student_taps = self.teacher_taps = (taps_lib.POOLED_MAP,)

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    for model, what in [(ctx.student, "student")] + [(t, "teacher") for t in ctx.teachers]:
      taps_lib.resolve(model, taps_lib.POOLED_MAP, f"config.distill.sdd: the {what}")
    return cls(s, s.ce_weight, ctx.teacher_weights, ctx.student.get_layer("logits"),
               [t.get_layer("logits") for t in ctx.teachers],
               s.warmup_epochs * ctx.steps_per_epoch if s.type == "dkd" else 0)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del student_epochs
    s = distill.section(cls.name)
    base.require(s.type in TYPES, f"{where}.sdd.type={s.type!r}; valid: {', '.join(TYPES)}.")
    base.require(len(s.scales) >= 1 and all(int(k) == k and k >= 1 for k in s.scales),
                 f"{where}.sdd.scales={tuple(s.scales)!r}: whole numbers >= 1, e.g. (1, 2, 4).")
    base.require(s.temperature > 0, f"{where}.sdd.temperature must be > 0, got "
                 f"{s.temperature}.")

  def method_loss(self, batch, student, teacher, k, step):
    s = self.section
    scales = tuple(int(x) for x in s.scales)
    student_regions = self.student_head(region_features(
        student["features"][taps_lib.POOLED_MAP], scales))
    teacher_regions = tf.stop_gradient(self.teacher_heads[k](region_features(
        teacher["features"][k][taps_lib.POOLED_MAP], scales)))
    loss = sdd_loss(student_regions, teacher_regions, batch["label"], s.type, s.temperature,
                    s.alpha, s.beta)
    return base.ramp(step, self.warmup_steps) * loss if self.warmup_steps else loss
