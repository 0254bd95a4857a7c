"""Per-example distillation losses (Hinton et al., 2015) and soft-label combining.

Everything here is a pure function of tensors, returns one value per example and
knows nothing about distribution strategies: the training step reduces over the
global batch exactly once. All math runs in float32 whatever the logits' dtype.
Arguments come in one order everywhere: student, teacher, labels.
"""

import tensorflow as tf

from kd_research.common import metrics
from kd_research.common.errors import UserError

COMBINE_MODES = ("prob_mean", "logit_mean", "kl_sum")


def _f32(x):
  return tf.cast(x, tf.float32)


def soften(logits, temperature):
  """Temperature softmax q_i = exp(z_i / T) / sum_j exp(z_j / T), in float32."""
  return tf.nn.softmax(_f32(logits) / _f32(temperature), axis=-1)


def cross_entropy(logits, labels):
  """Per-example CE of logits at T = 1 against integer labels or a label distribution.

  Integer labels of shape [B] use the sparse form; float labels of shape [B, C]
  (for example Mixup targets) use the dense form.
  """
  logits = _f32(logits)
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == logits.shape.rank:
    return tf.nn.softmax_cross_entropy_with_logits(_f32(labels), logits)
  return tf.nn.sparse_softmax_cross_entropy_with_logits(tf.cast(labels, tf.int32), logits)


def smoothed_targets(labels, num_classes, smoothing):
  """The label distribution (1 - eps) y + eps / C of integer or distribution labels (label
  smoothing as timm's LabelSmoothingCrossEntropy and its mixup targets apply it)."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 1:
    labels = tf.one_hot(tf.cast(labels, tf.int32), num_classes)
  return _f32(labels) * (1.0 - smoothing) + smoothing / num_classes


def kl_to_probs(student_logits, teacher_probs, temperature):
  """Per-example KL(p_teacher || softmax(student / T)) for an already softened teacher."""
  teacher_probs = _f32(teacher_probs)
  student_log_probs = tf.nn.log_softmax(_f32(student_logits) / _f32(temperature), axis=-1)
  # xlogy gives 0 * log 0 = 0 for classes the teacher rules out completely.
  return tf.reduce_sum(
      tf.math.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs, axis=-1)


def kl_divergence(student_logits, teacher_logits, temperature):
  """Per-example KL(softmax(teacher / T) || softmax(student / T))."""
  return kl_to_probs(student_logits, soften(teacher_logits, temperature), temperature)


def normalise_weights(weights, num_teachers):
  """Validates per-teacher weights (None means uniform) and returns them summing to 1."""
  if weights is None or len(weights) == 0:
    return [1.0 / num_teachers] * num_teachers
  if len(weights) != num_teachers:
    raise UserError(f"Got {len(weights)} teacher weights for {num_teachers} teachers; "
                    "give one non-negative weight per teacher.")
  if any(w < 0 for w in weights) or sum(weights) <= 0:
    raise UserError(f"Teacher weights must be non-negative with a positive sum, got {list(weights)}.")
  total = float(sum(weights))
  return [float(w) / total for w in weights]


def combined_distill_term(student_logits, teacher_logits, temperature, mode="prob_mean",
                          weights=None):
  """Per-example distillation KL against K teachers, combined by ``mode``.

  Args:
    student_logits: [B, C].
    teacher_logits: [K, B, C] logits of K teachers (K = 1 for a single teacher).
    temperature: scalar T (tensor or float).
    mode: ``prob_mean``: KL to the weighted mean of softmax(z_k / T) (the seed's
      recipe); ``logit_mean``: KL to softmax(mean_k z_k / T); ``kl_sum``: weighted
      sum of one KL term per teacher. All three equal the single-teacher KL when K = 1.
    weights: optional per-teacher weights; normalised to sum to 1.

  Returns:
    [B] float32 KL values (without the T^2 factor).
  """
  if mode not in COMBINE_MODES:
    raise UserError(f"Unknown teacher combine mode {mode!r}; valid: {', '.join(COMBINE_MODES)}.")
  teacher_logits = _f32(teacher_logits)
  num_teachers = teacher_logits.shape[0]
  w = normalise_weights(weights, num_teachers)
  if mode == "prob_mean":
    probs = metrics.ensemble_probs(teacher_logits, w, temperature)
    return kl_to_probs(student_logits, probs, temperature)
  if mode == "logit_mean":
    mean_logits = tf.einsum("k,kbc->bc", tf.constant(w, tf.float32), teacher_logits)
    return kl_divergence(student_logits, mean_logits, temperature)
  per_teacher = tf.stack([kl_divergence(student_logits, teacher_logits[k], temperature)
                          for k in range(num_teachers)])
  return tf.einsum("k,kb->b", tf.constant(w, tf.float32), per_teacher)


def distillation_loss(student_logits, teacher_logits, labels, alpha, temperature):
  """Per-example Hinton loss: alpha * T^2 * KL(t_T || s_T) + (1 - alpha) * CE(labels, s).

  Args:
    student_logits: [B, C] student logits (any float dtype).
    teacher_logits: [B, C] logits of one teacher, or [K, B, C] of K teachers
      (combined with ``prob_mean``; use ``distillation_terms`` for other modes).
    labels: [B] integer labels or [B, C] label distributions.
    alpha: weight of the distillation term, in [0, 1].
    temperature: T > 0.

  Returns:
    [B] float32 per-example losses.
  """
  total, _, _ = distillation_terms(student_logits, teacher_logits, labels, alpha, temperature)
  return total


def distillation_terms(student_logits, teacher_logits, labels, alpha, temperature,
                       mode="prob_mean", weights=None):
  """Returns per-example (total, distill, ce) where distill already includes T^2.

  total = alpha * distill + (1 - alpha) * ce; the parts are for logging.
  """
  teacher_logits = _f32(teacher_logits)
  if teacher_logits.shape.rank == 2:
    teacher_logits = teacher_logits[tf.newaxis]
  temperature = _f32(temperature)
  alpha = _f32(alpha)
  distill = tf.square(temperature) * combined_distill_term(
      student_logits, teacher_logits, temperature, mode, weights)
  ce = cross_entropy(student_logits, labels)
  return alpha * distill + (1.0 - alpha) * ce, distill, ce
