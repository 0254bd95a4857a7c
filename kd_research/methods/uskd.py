"""USKD, universal self-knowledge distillation (Yang et al., ICCV 2023, "From Knowledge
Distillation to Self-Knowledge Distillation"): no teacher. The student makes its own soft
targets:

- target: -p_t log p^S(t), with p_t = p^S(t)^2 + 1 - mean over the global batch of p^S(t)^2
  (a constant: no gradient);
- non-target: cross-entropy against Zipf's law over the non-target classes, 1 / rank,
  ranked by ``w / (1 - w_t) + log p^S / (1 - log p^S_t)``: w the probabilities of a weak
  linear head on the pooled features of the stage before the last, normalised over the
  non-target classes;
- weak supervision: mu times the weak head's cross-entropy against 0.9 one-hot + 0.1 / C.

total = CE + alpha target + beta non-target + weak. The rank mixes the weak head's
probabilities with the student's *log*-probabilities, as the reference's code does (it
reuses ``s_i`` after ``s_i = log_softmax(logit_s)``); we follow the code. For label
distributions (mixup, cutmix) the target classes are the two largest entries, with their
values in place of 1, as the reference's.

Reference: ``yzd-v/cls_KD`` mmcls/models/dis_losses/uskd.py (``USKDLoss``) and
mmcls/distillation/distillers/classification_distiller.py (``sd`` mode: the student's
head loss plus the USKD loss; ``fea_mid`` = the neck's pooling of the second-to-last
backbone stage). Defaults: configs/distillers/cifar100/res18_sd_cifar.py (alpha 0.1,
beta 0.1, mu 0.1; the ImageNet config res18_sd_img.py uses alpha 1, beta 0.1, mu 0.005).
The weak head is a Linear layer with PyTorch's default init, trained with the student,
checkpointed, and left out of the exported model. A labels-only run selects it with
``config.student.objective=uskd`` (or teacher's); its fields are config.distill.uskd's.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from kd_research.methods import base
from kd_research.models import taps as taps_lib

WEAK_SMOOTHING = 0.9  # the weak head's target: 0.9 one-hot + 0.1 / C


def target_classes(labels):
  """([B, k] target classes, [B, k] their values): k = 1 for integer labels (value 1), k = 2
  for label distributions (their two largest entries, as the reference's sort)."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2:
    values, classes = tf.math.top_k(base.f32(labels), 2)
    return classes, values
  classes = tf.cast(labels, tf.int32)[:, None]
  return classes, tf.ones_like(classes, tf.float32)


def pooled(features):
  """[B, D]: a feature map averaged over its spatial axes, or tokens over the sequence."""
  features = base.f32(features)
  if features.shape.rank > 2:
    return tf.reduce_mean(features, axis=list(range(1, features.shape.rank - 1)))
  return features


def uskd_terms(student_logits, weak_logits, labels, target_mean):
  """Per-example (target, non-target, weak cross-entropy) of USKD; ``target_mean(x)``: the
  mean over the global batch of x [B, k] (per column)."""
  s, w = base.f32(student_logits), base.f32(weak_logits)
  num_classes = s.shape[-1]
  classes, values = target_classes(labels)
  mask = tf.reduce_sum(tf.one_hot(classes, num_classes), 1)  # [B, C]: 1 on target classes
  log_s = tf.nn.log_softmax(s)
  s_t = tf.gather(tf.nn.softmax(s), classes, batch_dims=1)
  p_t = tf.square(s_t)
  p_t = tf.stop_gradient(tf.where(values == 0.0, 0.0, p_t + values - target_mean(p_t)))
  target = -tf.reduce_sum(p_t * tf.gather(log_s, classes, batch_dims=1), -1)
  dense = (labels if tf.convert_to_tensor(labels).shape.rank == 2
           else tf.one_hot(classes[:, 0], num_classes))
  weak_target = base.f32(dense) * WEAK_SMOOTHING + (1.0 - WEAK_SMOOTHING) / num_classes
  log_w = tf.nn.log_softmax(w)
  weak = -tf.reduce_sum(weak_target * log_w, -1)
  w_p = tf.nn.softmax(w)
  w_t = tf.reduce_sum(tf.gather(w_p, classes, batch_dims=1), -1, keepdims=True)
  log_s_t = tf.reduce_sum(tf.gather(log_s, classes, batch_dims=1), -1, keepdims=True)
  rank_score = w_p / (1.0 - w_t + 1e-6) + log_s / (1.0 - log_s_t + 1e-6)
  zipf = zipf_targets(rank_score, mask)
  non_target_log_s = tf.nn.log_softmax(s - 1e9 * mask)
  non_target = -tf.reduce_sum(zipf * (1.0 - mask) * non_target_log_s, -1)
  return target, non_target, weak


def zipf_targets(rank_score, mask):
  """1 / (1 + each class's position in descending ``rank_score``), the target classes
  (``mask``) removed and the rest normalised to sum 1 (a constant: no gradient)."""
  order = tf.argsort(rank_score, axis=-1, direction="DESCENDING", stable=True)
  position = tf.argsort(order, axis=-1, stable=True)
  zipf = (1.0 - mask) / tf.cast(position + 1, tf.float32)
  return tf.stop_gradient(zipf / tf.reduce_sum(zipf, -1, keepdims=True))


def global_column_mean(x):
  """Mean over the global batch of each column of x [B, k] (an all-gather across replicas)."""
  return tf.reduce_mean(base.gather_global(x)[0], 0, keepdims=True)


@base.register_teacher_free
class USKD(base.OwnsModules, base.Objective):
  """CE + alpha target + beta non-target + mu weak-head CE, with no teacher."""

  name = "uskd"
  selectable = True
  terms_names = ("total", "ce", "uskd_target", "uskd_non_target", "uskd_weak")
  defaults = dict(alpha=0.1, beta=0.1, mu=0.1, student_tap="penultimate_stage")
  reference = ("yzd-v/cls_KD mmcls/models/dis_losses/uskd.py; "
               "configs/distillers/cifar100/res18_sd_cifar.py (alpha 0.1, beta 0.1, mu 0.1)")
  field_docs = dict(
      alpha="weight of the target-class term",
      beta="weight of the non-target (Zipf) term",
      mu="weight of the weak head's cross-entropy",
      student_tap="the weak head's input, pooled: a layer name, or penultimate_stage / "
                  "middle_stage / last_stage / pooled")

  @classmethod
  def applies(cls, entry):
    return entry.get("objective", "") == cls.name

  @classmethod
  def for_entry(cls, entry, sections, model):
    s = sections[cls.name]
    return cls(s.alpha, s.beta, s.mu, taps_lib.resolve(model, s.student_tap, "config.distill."
                                                        "uskd.student_tap"),
               int(model.output_shape[-1]))

  def __init__(self, alpha, beta, mu, tap, num_classes):
    self.alpha, self.beta, self.mu, self.num_classes = alpha, beta, mu, num_classes
    self.student_taps = (tap,)

  def build(self, student_shapes, teacher_shapes):
    del teacher_shapes
    channels = int(np.prod(student_shapes[self.student_taps[0]][-1:]))
    bound = 1.0 / math.sqrt(channels)  # nn.Linear's default init, weight and bias
    self.head = keras.layers.Dense(
        self.num_classes, dtype="float32", name="uskd_weak_head",
        kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
        bias_initializer=keras.initializers.RandomUniform(-bound, bound))
    self.head.build((None, channels))
    self.modules = (self.head,)

  def terms(self, batch, student, teacher, step):
    del teacher, step
    logits = student["logits"]
    weak_logits = self.head(pooled(student["features"][self.student_taps[0]]))
    target, non_target, weak = uskd_terms(logits, weak_logits, batch["label"],
                                          global_column_mean)
    ce = base.labelled_cross_entropy(batch, logits)
    total = ce + self.alpha * target + self.beta * non_target + self.mu * weak
    return {"total": total, "ce": ce, "uskd_target": target, "uskd_non_target": non_target,
            "uskd_weak": weak}
