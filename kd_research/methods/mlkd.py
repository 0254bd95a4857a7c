"""Multi-level logit distillation (MLKD; Jin et al., CVPR 2023) on a weak and a strong view.

Teacher and student both see the main (weak) view, config.augment.ops, and a strong one
(data/views.py): the view ``view`` of config.augment.views if it defines it, else
``view_ops`` (default flip, crop, randaugment: the reference's RandomCrop + flip +
RandAugment(2) + Cutout). With p = softmax(z / T) over the global batch, for every
temperature T of ``temperatures``:

  instance  T^2 KL(p_t || p_s) per example, on both views
  batch     ||P_t P_t^T - P_s P_s^T||_F^2 / B   (the B x B Gram matrices), weak view
  class     ||P_t^T P_t - P_s^T P_s||_F^2 / C   (the C x C class correlations), weak view

  loss = ce_weight (CE_weak + CE_strong) + weight * sum_T (w_i (m instance_weak
         + instance_strong) + w_b m batch_weak + w_c m_c class_weak)

The levels' weights w_i, w_b, w_c (``instance_weight``, ``batch_weight``, ``class_weight``)
are 1 in the reference. Its batch level grows with the batch B and its class level with
(B / C)^2 (the entries of P^T P are sums over the batch): at CIFAR-100's batch 64 and 100
classes the class level is ~0.4 per temperature for a confident teacher, at batch 128 and
10 classes ~160, where it swamps the rest. batch_weight = 64 / B and class_weight =
(64 C / (100 B))^2 give the reference's balance of levels at another B and C.

Confidence masks come from the teacher's weak-view softmax at T = 1: examples whose top
probability is at most the batch median, classes whose summed probability is at most the
median over classes (np.percentile's linear median). ``mask='reference'`` does what the
reference code (github Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/distillers/
KD_ours.py; the same in the logit-standardization repository's MLKD.py) computes: it
multiplies each already batch-averaged term by the mask and averages, so m is the *share*
of masked examples (classes), 1/2 for distinct confidences, a constant factor; the
published weights mean that. ``mask='select'`` keeps the masked examples' rows (classes)
only, the per-example reading; ``'none'`` drops the masks. Two things of the reference are
not copied: its strong-view instance term at T = 2 and 6 reads the weak logits (a slip:
here every T reads the strong view), and its strong-view batch/class terms, computed but
never added to the loss, are not computed. ``config.distill.logit_standardization``
standardises the instance level's logits (as the logit-standardization repository).
Defaults: CE weight 0.1 and weight 0.9 (mdistiller's CFG.KD.LOSS for the KD_ours runs),
T in {2, 3, 4, 5, 6}. Batch and class levels span the global batch (all-gathered across
replicas), so the loss does not depend on the replica count.
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import logit_standardization as ls
from kd_research.methods import losses

MASKS = ("reference", "select", "none")



def median(values):
  """np.percentile(values, 50) (linear interpolation) of a 1-D tensor."""
  ordered = tf.sort(values)
  n = tf.shape(ordered)[0]
  return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])


def confidence_masks(teacher_weak_global, offset, local_size, mode):
  """(per-example weights [b] of the local rows, per-class weights [C]) from the teacher's
  weak-view logits over the global batch."""
  probs = tf.nn.softmax(base.f32(teacher_weak_global))
  confidence = tf.reduce_max(probs, -1)
  example = tf.cast(confidence <= median(confidence), tf.float32)
  class_sums = tf.reduce_sum(probs, 0)
  per_class = tf.cast(class_sums <= median(class_sums), tf.float32)
  if mode == "none":
    return tf.ones([local_size]), tf.ones_like(per_class)
  if mode == "reference":
    return (tf.fill([local_size], tf.reduce_mean(example)),
            tf.fill(tf.shape(per_class), tf.reduce_mean(per_class)))
  return example[offset:offset + local_size], per_class


def instance_level(student, teacher, temperature):
  """T^2 KL(softmax(teacher / T) || softmax(student / T)) per example."""
  return tf.square(temperature) * losses.kl_divergence(student, teacher, temperature)


def batch_level(student_local, teacher_local, student_global, teacher_global, temperature):
  """Each local row's share of ||G_t - G_s||_F^2 / B: sum_j (G_t - G_s)_ij^2 (its mean over
  the B rows is the loss)."""
  def gram_rows(local, glob):
    return tf.matmul(losses.soften(local, temperature), losses.soften(glob, temperature),
                     transpose_b=True)
  diff = gram_rows(teacher_local, teacher_global) - gram_rows(student_local, student_global)
  return tf.reduce_sum(tf.square(diff), -1)


def class_level(student_global, teacher_global, temperature, class_weights):
  """sum_c w_c sum_d (M_t - M_s)_cd^2 / C, M = P^T P over the global batch (a scalar)."""
  def correlation(logits):
    p = losses.soften(logits, temperature)
    return tf.matmul(p, p, transpose_a=True)
  diff = correlation(teacher_global) - correlation(student_global)
  per_class = tf.reduce_sum(tf.square(diff), -1)
  return tf.reduce_sum(class_weights * per_class) / tf.cast(tf.size(per_class), tf.float32)


def mlkd_levels(student_weak, student_strong, teacher_weak, teacher_strong, temperatures,
                mask="reference", standardize=False):
  """{'instance', 'batch', 'class'}: per-example [b] sums over the temperatures, for the
  local rows of the global batch (logits [b, C] of this replica)."""
  s_global, offset = base.gather_global(student_weak)
  t_global, _ = base.gather_global(teacher_weak)
  local = tf.shape(student_weak)[0]
  example_weights, class_weights = confidence_masks(t_global, offset, local, mask)
  inst_pairs = [(student_weak, teacher_weak), (student_strong, teacher_strong)]
  if standardize:
    inst_pairs = [(ls.standardize(s), ls.standardize(t)) for s, t in inst_pairs]
  (s_w, t_w), (s_s, t_s) = inst_pairs
  levels = {"instance": 0.0, "batch": 0.0, "class": 0.0}
  for t in temperatures:
    t = tf.constant(float(t))
    levels["instance"] += (example_weights * instance_level(s_w, t_w, t)
                           + instance_level(s_s, t_s, t))
    levels["batch"] += example_weights * batch_level(
        student_weak, teacher_weak, s_global, t_global, t)
    levels["class"] += tf.fill([local], class_level(s_global, t_global, t, class_weights))
  return levels


@base.register
class MLKD(base.ReadsView, base.Method):
  """ce_weight (CE_weak + CE_strong) + weight * (instance + batch + class levels)."""

  name, order = "mlkd", 2
  standardizes_logits = True
  terms_names = ("total", "mlkd", "mlkd_instance", "mlkd_batch", "mlkd_class", "ce")
  defaults = dict(view="strong", view_ops="flip,crop,randaugment",
                  temperatures=(2.0, 3.0, 4.0, 5.0, 6.0), weight=0.9, ce_weight=0.1,
                  mask="reference", instance_weight=1.0, batch_weight=1.0, class_weight=1.0)
  reference = ("github Jin-Ying/Multi-Level-Logit-Distillation KD_ours.py, mdistiller "
               "engine/cfg.py (CFG.KD.LOSS)")
  field_docs = dict(
      view="name of the strong view it reads",
      view_ops="the strong view's ops, unless config.augment.views defines the view",
      temperatures="the temperatures each level is computed at",
      weight="weight of the multi-level terms",
      ce_weight="weight of CE on the weak and the strong view",
      mask="reference (the masked share scales each term) or select (masked rows only)",
      instance_weight="weight of the instance level (KL per example)",
      batch_weight="weight of the batch level (B x B Gram matrices)",
      class_weight="weight of the class level (C x C class correlations)")

  def __init__(self, view, temperatures, weight, ce_weight, teacher_weights, mask="reference",
               standardize=False, level_weights=(1.0, 1.0, 1.0)):
    self.view, self.temperatures = view, tuple(float(t) for t in temperatures)
    self.weight, self.ce_weight, self.teacher_weights = weight, ce_weight, teacher_weights
    self.mask, self.standardize = mask, standardize
    self.level_weights = dict(zip(("instance", "batch", "class"), level_weights))
    self.views = (view,)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del active, student_epochs
    s = distill.section("mlkd")
    base.require(len(s.temperatures) > 0 and all(t > 0 for t in s.temperatures),
                 f"{where}.mlkd.temperatures={tuple(s.temperatures)} must be one or more "
                 "temperatures > 0.")
    weights = dict(weight=s.weight, ce_weight=s.ce_weight, instance_weight=s.instance_weight,
                   batch_weight=s.batch_weight, class_weight=s.class_weight)
    bad = {k: v for k, v in weights.items() if v < 0}
    base.require(not bad, f"{where}.mlkd: weights must be >= 0, got {bad}.")
    base.require(s.mask in MASKS, f"{where}.mlkd.mask={s.mask!r}; valid: {', '.join(MASKS)}.")
    cls.check_view(s)

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.view, s.temperatures, s.weight, s.ce_weight, ctx.teacher_weights, s.mask,
               ctx.distill.logit_standardization,
               (s.instance_weight, s.batch_weight, s.class_weight))

  def terms(self, batch, student, teacher, step):
    del step
    strong_s = student["views"][self.view]["logits"]
    strong_t = teacher["views"][self.view]["logits"]
    levels = {"instance": 0.0, "batch": 0.0, "class": 0.0}
    for k, w in enumerate(self.teacher_weights):
      per_teacher = mlkd_levels(student["logits"], strong_s, teacher["logits"][k],
                                strong_t[k], self.temperatures, self.mask, self.standardize)
      for name, value in per_teacher.items():
        levels[name] += w * value
    mlkd = tf.add_n([self.level_weights[name] * value for name, value in levels.items()])
    ce = (base.labelled_cross_entropy(batch, student["logits"])
          + base.labelled_cross_entropy(batch, strong_s))
    return {"total": self.ce_weight * ce + self.weight * mlkd, "mlkd": mlkd,
            "mlkd_instance": levels["instance"], "mlkd_batch": levels["batch"],
            "mlkd_class": levels["class"], "ce": ce}
