"""Hinton KD (Hinton et al., 2015): alpha * T^2 * KL(teachers_T || student_T) + (1 - alpha) CE.

alpha and T are schedules of the global step (``config.distill.alpha``, ``.temperature``:
the top of config.distill, not a section of their own); several teachers are combined by
``config.distill.combine`` (prob_mean, logit_mean, kl_sum; losses.py).
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import ctkd
from kd_research.methods import logit_standardization as ls
from kd_research.methods import losses


@base.register
class HintonKD(ctkd.OwnsTemperature, base.Method):
  """The KD objective; ``standardize``: logit standardization of both networks' logits;
  ``temperature`` a schedule or CTKD's learnable temperature (ctkd.py)."""

  name, order = "kd", 0
  ctkd_modifies = standardizes_logits = True
  terms_names = ("total", "distill", "ce")
  reference = "Hinton et al. 2015; alpha and T at the top of config.distill"

  def __init__(self, alpha, temperature, combine="prob_mean", weights=None, standardize=False):
    self.alpha, self.temperature = alpha, temperature
    self.combine, self.weights, self.standardize = combine, weights, standardize

  @classmethod
  def from_config(cls, ctx):
    distill = ctx.distill  # A DistillSpec: its schedules were parsed and checked once.
    return cls(distill.alpha.over(ctx.distill_steps),
               ctkd.temperature(ctx, distill.temperature.over(ctx.distill_steps)),
               distill.combine, ctx.teacher_weights, distill.logit_standardization)

  def terms(self, batch, student, teacher, step):
    logits, teacher_logits = student["logits"], teacher["logits"]
    if self.standardize:
      logits, teacher_logits = ls.standardize(logits), ls.standardize(teacher_logits)
    alpha, t = self.alpha(step), self.temperature(step)
    distill = tf.square(t) * losses.combined_distill_term(logits, teacher_logits, t,
                                                           self.combine, self.weights)
    ce = base.labelled_cross_entropy(batch, student["logits"])
    return {"total": alpha * distill + (1.0 - alpha) * ce, "distill": distill, "ce": ce}

  def task_term(self, terms, step):
    return (1.0 - self.alpha(step)) * terms["ce"]

  def scalars(self, step):
    if self._learnable():
      return {"alpha": float(self.alpha(step)), **self.temperature_scalars(step)}
    return {"alpha": float(self.alpha(step)), "temperature": float(self.temperature(step))}
