"""FitNets hints (Romero et al., ICLR 2015): MSE between connector(student tap) and the
teacher tap, one trainable connector per teacher (connectors.py).

Optionally a first stage of ``hint_epochs`` trains on the hint loss alone (the paper's
stage 1). Defaults: RepDistiller scripts/run_cifar_distill.sh (weight 100, the middle
stage of both networks; RepDistiller's hint layer 2 of 0-4) and the connector both
references build, ConvReg with its ReLU (``connector="reference"``; ``"resize"`` is the
bilinear-resize + 1x1 alternative, connectors.py).
"""

import functools

import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import connectors


def hint(student_feature, teacher_feature):
  """Mean squared error per example over every feature element (after a connector)."""
  diff = base.f32(student_feature) - base.f32(teacher_feature)
  return tf.reduce_mean(tf.reshape(tf.square(diff), [tf.shape(diff)[0], -1]), -1)


@base.register
class FitNets(base.OwnsModules, base.FeatureMethod):
  """weight * hint + ce_weight * CE; ConvReg connectors (conv-BN-ReLU) for maps, linear
  layers for vectors."""

  name, order = "fitnets", 3
  # Taps: layer names, or 'middle_stage' / 'last_stage' / 'pooled' of the registry's models.
  defaults = dict(weight=100.0, student_tap="middle_stage", teacher_tap="middle_stage",
                  hint_epochs=0, connector="reference")
  reference = "RepDistiller scripts/run_cifar_distill.sh"
  field_docs = dict(
      weight="weight of the hint (regression) loss",
      **base.TAP_DOCS,
      hint_epochs="epochs of the hint stage alone, before distillation (0: none)",
      connector="reference (ConvReg: conv -> BN -> ReLU) or resize (bilinear resize, then "
                "ConvReg's 1x1 conv -> BN -> ReLU)")

  def __init__(self, weight, ce_weight, teacher_weights, pairs,
               connector_fn=connectors.connector, hint_epochs=0):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.connector_fn, self.modules, self.hint_epochs = connector_fn, [], hint_epochs

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    pairs = ctx.tap_pair(s)
    (s_tap, t_tap), = pairs
    connectors.check_compatible(ctx.student, s_tap, ctx.teacher, t_tap, s.connector)
    connector_fn = functools.partial(connectors.connector, kind=s.connector)
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights, pairs,
               connector_fn=connector_fn, hint_epochs=s.hint_epochs)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    s = distill.section("fitnets")
    base.require(s.connector in connectors.KINDS,
                 f"{where}.fitnets.connector={s.connector!r}; valid: "
                 f"{', '.join(connectors.KINDS)}.")
    base.require(s.hint_epochs == 0 or active,
                 f"{where}.fitnets.hint_epochs needs method fitnets.")
    base.require(distill.finetune_epochs + s.hint_epochs < student_epochs,
                 f"{where}: fitnets.hint_epochs + finetune_epochs must leave distillation "
                 f"epochs of config.student.epochs={student_epochs}.")

  def build(self, student_shapes, teacher_shapes):
    (s_tap, t_tap), = self.pairs
    self.modules = [self.connector_fn(student_shapes[s_tap], shapes[t_tap], f"hint{k}")
                    for k, shapes in enumerate(teacher_shapes)]

  def method_loss(self, batch, student, teacher, k, step):
    (s_tap, t_tap), = self.pairs
    projected = self.modules[k](student["features"][s_tap], training=True)
    return hint(projected, teacher["features"][k][t_tap])

  def first_stage(self):
    return (HintStage(self), self.hint_epochs) if self.hint_epochs else None


class HintStage(base.Objective):
  """FitNets' first stage: the hint loss of ``fitnets`` alone (no CE), its connectors shared."""

  name, terms_names, needs_teacher = "hint", ("total", "fitnets"), True

  def __init__(self, fitnets):
    self.fitnets = fitnets
    self.student_taps, self.teacher_taps = fitnets.student_taps, fitnets.teacher_taps

  @property
  def trainable_variables(self):
    return self.fitnets.trainable_variables

  def task_term(self, terms, step):
    del step
    return tf.zeros_like(terms["total"])  # The hint alone: all distillation.

  def terms(self, batch, student, teacher, step):
    hint_loss = tf.add_n([w * self.fitnets.method_loss(batch, student, teacher, k, step)
                          for k, w in enumerate(self.fitnets.teacher_weights)])
    return {"total": self.fitnets.weight * hint_loss, "fitnets": hint_loss}
