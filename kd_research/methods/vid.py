"""Variational information distillation (Ahn et al., CVPR 2019): a regressor predicts the
teacher's stage maps from the student's as a Gaussian with a learned per-channel
variance; the loss is its negative log-likelihood.

Per stage pair (the last n stages of each; the larger map average-pooled to the smaller's
size): mu = regressor(s) (1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv, no bias, PyTorch's
default init), var = softplus(v) + eps per teacher channel with v initialised so that var
starts at ``init_variance``; loss = mean over the map of 0.5 ((mu - t)^2 / var + log var),
summed over the pairs. Regressors and variances train with the student (one set per
teacher), are checkpointed, never exported. Defaults: mdistiller engine/cfg.py and
distillers/VID.py (weight 1, CE 1, eps 1e-5, initial variance 5; post-ReLU stage outputs).
"""

import math

import keras
import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import maps


def nll(mean, log_scale, target, eps):
  """Per example: mean over the map of 0.5 ((mean - t)^2 / var + log var)."""
  variance = tf.nn.softplus(log_scale) + eps
  diff = base.f32(mean) - base.f32(target)
  return maps.per_example_mean(0.5 * (tf.square(diff) / variance + tf.math.log(variance)))


def regressor(student_shape, teacher_channels, name):
  """1x1 conv - ReLU - 1x1 conv - ReLU - 1x1 conv to the teacher's channels (no bias)."""
  def conv(x):
    return keras.layers.Conv2D(teacher_channels, 1, use_bias=False, kernel_initializer=(
        keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")))(x)
  inputs = keras.Input(tuple(student_shape))
  x = keras.layers.ReLU()(conv(inputs))
  x = keras.layers.ReLU()(conv(x))
  return keras.Model(inputs, conv(x), name=name)


def pooled_shape(student_shape, teacher_shape):
  """The student map's shape after ``maps.match_size`` (pooled when it is the larger)."""
  if student_shape[0] * student_shape[1] > teacher_shape[0] * teacher_shape[1]:
    return tuple(teacher_shape[:2]) + (student_shape[-1],)
  return tuple(student_shape)


@base.register
class VID(base.OwnsModules, base.FeatureMethod):
  """weight * sum over stage pairs of the Gaussian NLL + ce_weight * CE."""

  name, order = "vid", 11
  defaults = dict(weight=1.0, init_variance=5.0, eps=1e-5)
  reference = "mdistiller engine/cfg.py, distillers/VID.py"
  field_docs = dict(
      weight="weight of the variational information loss",
      init_variance="initial variance of each teacher channel",
      eps="smallest variance (added to softplus)")

  def __init__(self, weight, ce_weight, teacher_weights, pairs, init_variance=5.0, eps=1e-5):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.init_variance, self.eps, self.modules, self.owned = init_variance, eps, [], []

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    s = distill.section("vid")
    base.require(s.init_variance > s.eps > 0, f"{where}.vid.init_variance={s.init_variance} "
                 f"must exceed {where}.vid.eps={s.eps}, which must be > 0.")

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights,
               maps.stage_pairs(ctx.student, ctx.teacher, cls.name), s.init_variance, s.eps)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  def build(self, student_shapes, teacher_shapes):
    start = math.log(math.expm1(self.init_variance - self.eps))  # softplus^-1
    self.modules, self.owned = [], []
    for k, shapes in enumerate(teacher_shapes):
      for i, (s, t) in enumerate(self.pairs):
        channels = shapes[t][-1]
        self.modules.append(regressor(pooled_shape(student_shapes[s], shapes[t]), channels,
                                      f"vid{k}_{i}"))
        self.owned.append(tf.Variable(tf.fill([channels], start), name=f"vid{k}_{i}_scale"))

  def method_loss(self, batch, student, teacher, k, step):
    n, losses = len(self.pairs), []
    for i, (s_tap, t_tap) in enumerate(self.pairs):
      s, t = maps.match_size(base.f32(student["features"][s_tap]),
                             base.f32(teacher["features"][k][t_tap]))
      losses.append(nll(self.modules[k * n + i](s, training=True), self.owned[k * n + i], t,
                        self.eps))
    return tf.add_n(losses)
