"""The objective seam: what a training phase minimises, as per-example loss terms by name.

An objective maps (batch, student outputs, teacher outputs, step) to a dict of
per-example float32 tensors with at least ``total``; the step averages ``total``
over the global batch and logs every term as ``train/loss_<name>``. An objective may
own trainable variables (connectors, memory banks): they are trained with the
student, saved in its checkpoint and left out of the exported model.

Adding a method means adding an Objective subclass here (or in a module of its own)
and naming it in ``runs.py``; the training loop, the checkpointing and the metrics do
not change. Teachers' outputs reach an objective from a *teacher source*: the live
frozen ensemble, or the teacher-output cache carried in the batch.
"""

import tensorflow as tf

from kd_research import losses
from kd_research import schedules


class Objective:
  """Base class: labels-only training with per-example cross-entropy (no teacher)."""

  name = "labels"
  terms_names = ("total", "ce")
  needs_teacher = False

  @property
  def trainable_variables(self):
    """Variables the objective owns and trains with the student (none here)."""
    return []

  def terms(self, batch, student, teacher_logits, step):
    """{term: [B] float32}; ``student`` is {'logits': [B, C]}, ``teacher_logits`` [K, B, C]."""
    del teacher_logits, step
    ce = losses.cross_entropy(student["logits"], batch["label"])
    return {"total": ce, "ce": ce}

  def scalars(self, step):
    """Scalar hyper-parameters at ``step`` to log as train/<name> (none here)."""
    del step
    return {}


class HintonKD(Objective):
  """alpha * T^2 * KL(teachers_T || student_T) + (1 - alpha) * CE (Hinton et al., 2015).

  alpha and T follow schedules of the global step; several teachers are combined by
  ``combine`` (prob_mean, logit_mean, kl_sum) with ``weights`` (see losses.py).
  """

  name = "kd"
  terms_names = ("total", "distill", "ce")
  needs_teacher = True

  def __init__(self, alpha, temperature, combine="prob_mean", weights=None):
    self.alpha, self.temperature = alpha, temperature
    self.combine, self.weights = combine, weights

  def terms(self, batch, student, teacher_logits, step):
    total, distill, ce = losses.distillation_terms(
        student["logits"], teacher_logits, batch["label"], self.alpha(step),
        self.temperature(step), self.combine, self.weights)
    return {"total": total, "distill": distill, "ce": ce}

  def scalars(self, step):
    return {"alpha": float(self.alpha(step)), "temperature": float(self.temperature(step))}


def hinton_from_config(distill, distill_steps, weights=None):
  """HintonKD with the alpha and temperature schedules of ``config.distill`` over a phase."""
  alpha = schedules.from_config(distill.alpha, distill_steps, "config.distill.alpha")
  alpha.check_range(0.0, 1.0)
  temperature = schedules.from_config(distill.temperature, distill_steps,
                                      "config.distill.temperature")
  temperature.check_range(0.0, float("inf"), low_inclusive=False, what_range="T > 0")
  return HintonKD(alpha, temperature, distill.combine, weights)


def live_teachers(ensemble):
  """Teacher source: the frozen ensemble run on the batch's images, [K, B, C] logits."""
  return lambda batch: ensemble.logits(batch["image"])


def cached_teachers(batch):
  """Teacher source: the teacher-output cache carried in the batch ([B, K, C] -> [K, B, C])."""
  return tf.transpose(batch["teacher_logits"], [1, 0, 2])


def term_layout(objectives):
  """The union of the objectives' term names, in first-seen order ('total' first)."""
  names = []
  for objective in objectives:
    names += [n for n in objective.terms_names if n not in names]
  return tuple(names)
