"""Overhaul of feature distillation (Heo et al., ICCV 2019): the student's pre-ReLU stage
outputs, through a connector (conv + BN), regress the teacher's pre-ReLU outputs with a
partial L2 that ignores where both are "off".

The teacher's target is max(t, m) with m, per channel, the expected value of the
teacher's negative responses, E[x | x < 0] for x ~ N(beta, gamma^2) from the BatchNorm
that shapes the pre-activation (gamma, beta: its scale and offset); -3 |gamma| when
P(x < 0) <= 0.001. The loss is (s - target)^2 where s > target or target > 0, summed
over the map; stages weighted 1, 1/2, 1/4 ... from the last; the teacher's map is
average-pooled to the student's size. The teacher runs in inference mode (the original
code ran it in training mode, which moves its BatchNorm statistics: we keep teachers fixed).
Defaults: mdistiller engine/cfg.py (weight 0.001, CE 1, 1x1 connector) and
distillers/OFD.py (the last stages of both nets, the margins, the connector's init).
"""

import math

import keras
import numpy as np
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.methods import maps
from kd_research.models import taps as taps_lib


def margin(gamma, beta):
  """Per channel E[x | x < 0] for x ~ N(beta, |gamma|^2); -3 |gamma| where P(x < 0) <= 1e-3."""
  out = []
  for g, b in zip(np.abs(np.asarray(gamma, np.float64)), np.asarray(beta, np.float64)):
    g = max(g, 1e-12)
    negative = 0.5 * math.erfc((b / g) / math.sqrt(2.0))  # P(x < 0) = Phi(-b / g)
    if negative > 0.001:
      out.append(b - g * math.exp(-((b / g) ** 2) / 2.0) / math.sqrt(2.0 * math.pi) / negative)
    else:
      out.append(-3.0 * g)
  return np.asarray(out, np.float32)


def teacher_margins(teacher, stages):
  """[margin per channel] of each stage's ``<stage>_preact_bn`` of ``teacher``."""
  out = []
  for stage in stages:
    bn = taps_lib.preact_batch_norm(teacher, stage)
    if bn is None:
      raise UserError(
          f"config.distill.method=ofd reads the margin from the BatchNorm before the ReLU "
          f"of the teacher's {stage}, and teacher {teacher.name} names none "
          f"({stage}_preact_bn). Registry models have it (not shufflenetv2 or mlp); in your "
          "own model name that BatchNormalization layer '<stage>_preact_bn'.")
    channels = bn.moving_mean.shape[-1]
    gamma = bn.gamma.numpy() if bn.scale else np.ones(channels)
    beta = bn.beta.numpy() if bn.center else np.zeros(channels)
    out.append(margin(gamma, beta))
  return out


def partial_l2(source, target, margin_values):
  """Per example: sum over the map of (s - t')^2 where s > t' or t' > 0, t' = max(t, m)."""
  s, t = base.f32(source), tf.maximum(base.f32(target), margin_values)
  mask = tf.cast(tf.logical_or(s > t, t > 0.0), tf.float32)
  return maps.per_example_sum(tf.square(s - t) * mask)


def connector(student_shape, teacher_channels, kernel_size, name):
  """conv (kernel_size, no bias, Kaiming-normal fan-out) + BN at the student's resolution."""
  inputs = keras.Input(tuple(student_shape))
  x = keras.layers.Conv2D(teacher_channels, kernel_size, padding="same", use_bias=False,
                          kernel_initializer=keras.initializers.VarianceScaling(
                              2.0, "fan_out", "untruncated_normal"))(inputs)
  # Synchronised: the statistics of the global batch, whatever the replica count.
  return keras.Model(inputs, keras.layers.BatchNormalization(synchronized=True)(x), name=name)


@base.register
class OFD(base.OwnsModules, base.FeatureMethod):
  """weight * sum_i 2^-(n-1-i) partial_L2(connector_i(s_i), pool(t_i)) + ce_weight * CE."""

  name, order = "ofd", 9
  defaults = dict(weight=0.001, kernel_size=1)
  reference = "mdistiller engine/cfg.py, distillers/OFD.py"
  field_docs = dict(
      weight="weight of the partial L2 feature loss",
      kernel_size="kernel size of the student -> teacher connector conv")

  def __init__(self, weight, ce_weight, teacher_weights, pairs, margins, kernel_size=1):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.margins, self.kernel_size, self.modules = margins, kernel_size, []

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    stages = [b for _, b in maps.stage_pairs(ctx.student, ctx.teacher, cls.name)]
    margins = [teacher_margins(t, stages) for t in ctx.teachers or (ctx.teacher,)]
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights,
               maps.preact_pairs(ctx.student, ctx.teacher, cls.name, student_preact=True),
               margins, s.kernel_size)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  def build(self, student_shapes, teacher_shapes):
    self.modules = [connector(student_shapes[s], shapes[t][-1], self.kernel_size,
                              f"ofd{k}_{i}")
                    for k, shapes in enumerate(teacher_shapes)
                    for i, (s, t) in enumerate(self.pairs)]

  def method_loss(self, batch, student, teacher, k, step):
    n = len(self.pairs)
    losses = []
    for i, (s_tap, t_tap) in enumerate(self.pairs):
      source = self.modules[k * n + i](student["features"][s_tap], training=True)
      target = maps.adaptive_avg_pool(base.f32(teacher["features"][k][t_tap]),
                                      source.shape[1:3])
      losses.append(partial_l2(source, target, self.margins[k][i]) / 2.0 ** (n - 1 - i))
    return tf.add_n(losses)
