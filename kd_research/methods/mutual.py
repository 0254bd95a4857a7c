"""Deep mutual learning's objective (DML; Zhang et al., CVPR 2018) for a cohort of N
students (models/cohort.py): no fixed teacher, each member k learns from the labels and
from the others' current predictions,

    L_k = CE(y, p_k) + 1/(N-1) * sum_{l != k} KL(p_l || p_k),    p = softmax(logits),

with every p_l a constant in L_k (stop-gradient), so the gradient of the total sum_k L_k
with respect to member k's weights is exactly the gradient of L_k. The paper updates the
members one after the other within a step (member 2 sees member 1's updated predictions);
here they update together from the same forward pass, the form most implementations use
with N > 2 and the one that keeps the step a single all-reduce. Temperature 1, as in the
paper. Logged terms: ``member<k>_ce`` and ``member<k>_kl`` (train/loss_<term>).
"""

import tensorflow as tf

from kd_research.methods import base
from kd_research.models import cohort


@base.register_teacher_free
class MutualLearning(base.Objective):
  """The DML objective of a cohort of ``size`` members (their logits read as taps): the
  objective of every labels-only run of a cohort model (models/cohort.py)."""

  name = "dml"

  @classmethod
  def applies(cls, entry):
    return bool(entry.get("cohort"))

  @classmethod
  def for_entry(cls, entry, sections, model):
    del sections, model
    return cls(entry.cohort)

  def __init__(self, size):
    self.size = int(size)
    self.student_taps = tuple(cohort.member_tap(k) for k in range(self.size))

  @property
  def terms_names(self):
    return ("total",) + tuple(f"member{k}_{part}" for k in range(self.size)
                              for part in ("ce", "kl"))

  def terms(self, batch, student, teacher, step):
    del teacher, step
    logits = [base.f32(student["features"][tap]) for tap in self.student_taps]
    probs = [tf.stop_gradient(tf.nn.softmax(z)) for z in logits]
    out, total = {}, 0.0
    for k, z in enumerate(logits):
      log_p = tf.nn.log_softmax(z)
      kl = tf.add_n([base.kl_rows(probs[l], log_p) for l in range(self.size) if l != k])
      out[f"member{k}_ce"] = base.labelled_cross_entropy(batch, z)
      out[f"member{k}_kl"] = kl / (self.size - 1)
      total += out[f"member{k}_ce"] + out[f"member{k}_kl"]
    out["total"] = total
    return out
