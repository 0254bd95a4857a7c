"""Knowledge review (Chen et al., CVPR 2021): the student's stages, fused from deep to
shallow by attention-based fusion (ABF) modules, regress the teacher's stages through the
hierarchical context loss (HCL).

Levels, deepest first: the pooled feature (as a 1x1 map), then the last n stages of each
network (n the smaller stage count). Student levels are its stage outputs (after ReLU, as
mdistiller's STU_PREACT false); teacher levels its pre-activations and its pooled
feature. ABF: a 1x1 conv + BN to ``mid`` channels; below the deepest level, fused with the
level above it (its output resized to this level, PyTorch's nearest) by two sigmoid
attention maps from a 1x1 conv over both; resized to the teacher level's size when it
differs; a 3x3 conv + BN to the teacher's channels. HCL per level: the MSE, plus the MSE
of both maps average-pooled to 4x4, 2x2 and 1x1 (sizes smaller than the map) weighted 1/2,
1/4, 1/8, over the sum of the weights. The loss is ramped in over ``warmup_epochs``.
ABFs train with the student, are checkpointed, never exported; one set per teacher.
Defaults: mdistiller configs/cifar100/reviewkd.yaml (weight 5 for resnet32x4 -> resnet8x4;
engine/cfg.py: CE 1, warm-up 20 epochs, mid channels min(512, student pooled channels)).
"""

import keras
import tensorflow as tf

from kd_research.methods import base
from kd_research.methods import maps
from kd_research.models import pytorch_layers


def hcl(student_map, teacher_map):
  """Per example: the hierarchical context loss of one level."""
  s, t = base.f32(student_map), base.f32(teacher_map)
  loss, weight, total = maps.per_example_mean(tf.square(s - t)), 1.0, 1.0
  for size in (4, 2, 1):
    if size >= s.shape[1]:
      continue
    weight /= 2.0
    pooled = maps.adaptive_avg_pool(s, (size, size)) - maps.adaptive_avg_pool(t, (size, size))
    loss += weight * maps.per_example_mean(tf.square(pooled))
    total += weight
  return loss / total


def _lecun_uniform():
  """PyTorch's kaiming_uniform_(a=1): U(+-sqrt(3 / fan_in)), as the reference's ABF convs."""
  return keras.initializers.VarianceScaling(1.0, "fan_in", "uniform")


def abf(student_shape, residual_shape, out_shape, mid, name):
  """One fusion module: inputs the student level (and the level above's fused map, unless
  ``residual_shape`` is None); outputs (the level's prediction, its fused map)."""
  x_in = keras.Input(tuple(student_shape))
  inputs = x_in
  x = keras.layers.Conv2D(mid, 1, use_bias=False, kernel_initializer=_lecun_uniform())(x_in)
  x = keras.layers.BatchNormalization(synchronized=True)(x)
  if residual_shape is not None:
    r_in = keras.Input(tuple(residual_shape))
    inputs = [x_in, r_in]
    residual = maps.NearestResize(student_shape[:2])(r_in)
    # PyTorch's default init for the attention conv: U(+-1 / sqrt(fan_in)), fan_in = 2 mid.
    attention = keras.layers.Conv2D(
        2, 1, activation="sigmoid",
        kernel_initializer=pytorch_layers.conv_initializer("default"),
        bias_initializer=pytorch_layers.default_bias_initializer(2 * mid))(
            keras.layers.Concatenate()([x, residual]))
    x = x * attention[..., 0:1] + residual * attention[..., 1:2]
  x = maps.NearestResize(out_shape[:2])(x)
  y = keras.layers.Conv2D(out_shape[-1], 3, padding="same", use_bias=False,
                          kernel_initializer=_lecun_uniform())(x)
  y = keras.layers.BatchNormalization(synchronized=True)(y)
  return keras.Model(inputs, [y, x], name=name)


def as_map(x):
  """A vector feature [B, D] as a 1x1 map [B, 1, 1, D]; maps unchanged."""
  return x[:, None, None, :] if len(x.shape) == 2 else x


@base.register
class ReviewKD(base.OwnsModules, base.FeatureMethod):
  """ramp * weight * sum over levels of HCL(ABF outputs, teacher levels) + ce_weight * CE."""

  name, order = "reviewkd", 10
  defaults = dict(weight=5.0, warmup_epochs=20, max_mid_channels=512)
  reference = "mdistiller configs/cifar100/reviewkd.yaml, engine/cfg.py"
  field_docs = dict(
      weight="weight of the hierarchical context loss",
      warmup_epochs="epochs over which the loss ramps in linearly",
      max_mid_channels="largest channel count of the fusion modules")

  def __init__(self, weight, ce_weight, teacher_weights, pairs, warmup_steps, max_mid=512):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.warmup_steps, self.max_mid, self.modules = warmup_steps, max_mid, []

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    s = distill.section("reviewkd")
    base.require(s.warmup_epochs >= 0 and s.max_mid_channels >= 1,
                 f"{where}.reviewkd: warmup_epochs={s.warmup_epochs} must be >= 0 and "
                 f"max_mid_channels={s.max_mid_channels} >= 1.")

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    # Deepest level first: pooled, then the stages from the last.
    pairs = [("pooled", "pooled")] + maps.preact_pairs(ctx.student, ctx.teacher, cls.name,
                                                       student_preact=False)[::-1]
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights, pairs,
               s.warmup_epochs * ctx.steps_per_epoch, s.max_mid_channels)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  def build(self, student_shapes, teacher_shapes):
    def as_map_shape(shape):
      return (1, 1) + tuple(shape) if len(shape) == 1 else tuple(shape)
    mid = min(self.max_mid, as_map_shape(student_shapes["pooled"])[-1])
    self.modules = []
    for k, shapes in enumerate(teacher_shapes):
      residual = None
      for level, (s_tap, t_tap) in enumerate(self.pairs):
        out_shape = as_map_shape(shapes[t_tap])
        module = abf(as_map_shape(student_shapes[s_tap]), residual, out_shape, mid,
                     f"abf{k}_{level}")
        residual = out_shape[:2] + (mid,)
        self.modules.append(module)

  def method_loss(self, batch, student, teacher, k, step):
    n, residual, loss = len(self.pairs), None, 0.0
    for level, (s_tap, t_tap) in enumerate(self.pairs):
      x = as_map(base.f32(student["features"][s_tap]))
      inputs = x if residual is None else [x, residual]
      prediction, residual = self.modules[k * n + level](inputs, training=True)
      loss += hcl(prediction, as_map(teacher["features"][k][t_tap]))
    return base.ramp(step, self.warmup_steps) * loss
