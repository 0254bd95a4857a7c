"""CRLD, cross-view consistency regularisation for logit distillation (ACM MM 2024): KD
within and across a weak and a strong view of each image, each gated by the teacher's
confidence.

With s_w, s_s the student's logits on the weak (main) and strong views, t_w, t_s the
teacher's, KD(s, t) = T^2 KL(softmax(t / T) || softmax(s / T)), per example:

    within = [max softmax(t_w) >= tau_w] (KD(s_w, t_w) + KD(s_s, t_s)),
    cross  = [max softmax(t_s) >= tau_s] (KD(s_s, t_w) + KD(s_w, t_s)),
    total  = ce_weight (CE(s_w) + CE(s_s)) + wv_weight within + cv_weight cross.

No official repository is stored; the forks ``scx-822/CRLD-main`` and ``haiduo/DeepKD`` carry
the authors' mdistiller distiller: mdistiller/distillers/CRLD.py (``CRLD.forward_train``) and
engine/cfg.py (CFG.CRLD: CE 1, WV 2, CV 0.5, T 4, TAU_W 0.9, TAU_S 0.2), whose values these
defaults are. Its strong view is crop + flip + RandAugment(2, 10) with Cutout
(mdistiller/dataset/cifar100.py ``get_cifar100_train_transform_strong``): here the multi-view
batch's ``strong`` view, ``flip,crop,randaugment`` (data/views.py; MLKD reads the same one).
``view_ops=''`` makes the second view the image itself: CRLD without a strong view.
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import losses


def kd(student_logits, teacher_logits, temperature):
  """T^2 KL(softmax(t / T) || softmax(s / T)) per example (mdistiller's kd_loss, unreduced)."""
  return tf.square(base.f32(temperature)) * losses.kl_divergence(student_logits, teacher_logits,
                                                                 temperature)


def confident(teacher_logits, threshold):
  """1 where the teacher's top softmax probability is >= ``threshold``, else 0."""
  return tf.cast(tf.reduce_max(tf.nn.softmax(base.f32(teacher_logits)), -1) >= threshold,
                 tf.float32)


def crld_terms(s_weak, s_strong, t_weak, t_strong, temperature, tau_weak, tau_strong):
  """Per-example (within-view, cross-view) terms of CRLD, each gated by its mask."""
  within = confident(t_weak, tau_weak) * (kd(s_weak, t_weak, temperature)
                                          + kd(s_strong, t_strong, temperature))
  cross = confident(t_strong, tau_strong) * (kd(s_strong, t_weak, temperature)
                                             + kd(s_weak, t_strong, temperature))
  return within, cross


@base.register
class CRLD(base.ReadsView, base.Method):
  """ce_weight (CE_weak + CE_strong) + wv_weight within + cv_weight cross."""

  name, order = "crld", 2
  terms_names = ("total", "crld", "crld_within", "crld_cross", "ce")
  defaults = dict(view="strong", view_ops="flip,crop,randaugment", temperature=4.0,
                  ce_weight=1.0, wv_weight=2.0, cv_weight=0.5, tau_weak=0.9, tau_strong=0.2)
  reference = ("scx-822/CRLD-main (the authors' distiller, a fork: no official repository is "
               "stored) mdistiller/distillers/CRLD.py, engine/cfg.py (CFG.CRLD)")
  field_docs = dict(
      view="name of the strong view it reads",
      view_ops="the strong view's ops, unless config.augment.views defines the view ('': the "
               "image itself, CRLD without a strong view)",
      temperature="temperature of every KD term",
      ce_weight="weight of CE on the weak and the strong view",
      wv_weight="weight of the within-view terms",
      cv_weight="weight of the cross-view terms",
      tau_weak="teacher confidence on the weak view that lets the within-view terms count",
      tau_strong="teacher confidence on the strong view that lets the cross-view terms count")

  def __init__(self, section, teacher_weights):
    self.s, self.teacher_weights, self.ce_weight = section, teacher_weights, section.ce_weight
    self.views = (section.view,)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del active, student_epochs
    s = distill.section(cls.name)
    bad = {k: s[k] for k in ("ce_weight", "wv_weight", "cv_weight") if s[k] < 0}
    base.require(not bad, f"{where}.crld: weights must be >= 0, got {bad}.")
    base.require(s.temperature > 0 and 0 <= s.tau_weak <= 1 and 0 <= s.tau_strong <= 1,
                 f"{where}.crld: temperature must be > 0 and tau_weak, tau_strong in [0, 1]; "
                 f"got {s.temperature}, {s.tau_weak}, {s.tau_strong}.")
    cls.check_view(s)

  @classmethod
  def from_config(cls, ctx):
    return cls(ctx.section(cls.name), ctx.teacher_weights)

  def terms(self, batch, student, teacher, step):
    del step
    s = self.s
    strong_s = student["views"][s.view]["logits"]
    strong_t = teacher["views"][s.view]["logits"]
    within, cross = 0.0, 0.0
    for k, w in enumerate(self.teacher_weights):
      wv, cv = crld_terms(student["logits"], strong_s, teacher["logits"][k], strong_t[k],
                          s.temperature, s.tau_weak, s.tau_strong)
      within, cross = within + w * wv, cross + w * cv
    crld = s.wv_weight * within + s.cv_weight * cross
    ce = (base.labelled_cross_entropy(batch, student["logits"])
          + base.labelled_cross_entropy(batch, strong_s))
    return {"total": s.ce_weight * ce + crld, "crld": crld, "crld_within": within,
            "crld_cross": cross, "ce": ce}
