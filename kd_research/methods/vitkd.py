"""ViTKD, feature distillation between vision transformers (Yang et al., 2022, "ViTKD:
Practical Guidelines for ViT feature knowledge distillation").

Two terms on the patch tokens (the class and distillation tokens left out):

- mimicking, on the shallow layers: the student's tokens after blocks 1 and 2, each through
  its own linear map to the teacher's width, against the teacher's, alpha * sum of squares;
- generation, on the deepest layer: the student's last-block tokens after the final norm,
  through a linear map, a random share lambda of them replaced by a learned mask token,
  then a 3x3 conv -> ReLU -> 3x3 conv over the patch grid, against the teacher's final
  tokens at the masked positions only, beta / lambda * sum of squares.

Per example (the reference sums over the batch and divides by B: the same mean). The linear
maps exist only when the widths differ (as the reference's ``align2`` / ``align``), with
PyTorch's default init, as the convs; the mask token starts at 0. The masks are stateless
draws of (seed, step, position in the global batch), so that a run does not depend on the
replica count and resumes exactly (the reference draws ``torch.rand`` on the device); the
masked tokens are the lambda share with the largest draws, as its ``argsort`` keeps the
smallest. The final norm is the network's own LayerNorm applied to its last block's tapped
tokens: the tensor the reference reads, and the same gradient into the norm.

Reference: ``yzd-v/cls_KD`` mmcls/models/dis_losses/vitkd.py (``ViTKDLoss``: alpha_vitkd
3e-5, beta_vitkd 3e-6, lambda_vitkd 0.5, the values of
configs/distillers/imagenet/deit-s3_distill_deit-t_img.py), and its
mmcls/models/backbones/vision_transformer.py (low: blocks 0 and 1, ``x[:, 1:]``; high: the
last block after ``norm1``). Both networks must be ViTs of one patch grid (models/vit.py).
"""

import math

import keras
import tensorflow as tf

from kd_research.common import example_draws
from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.models import vit

SALT = 23  # the masks' draws (common/example_draws.py; stochastic depth uses 17)
LOW_BLOCKS = (1, 2)  # the reference's blocks 0 and 1


def _uniform(fan_in):
  """PyTorch's default init of a Linear or Conv2d weight and bias: U(+-1 / sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return keras.initializers.RandomUniform(-bound, bound)


def align_layer(d_in, d_out, name):
  layer = keras.layers.Dense(d_out, kernel_initializer=_uniform(d_in),
                             bias_initializer=_uniform(d_in), dtype="float32", name=name)
  layer.build((None, None, d_in))
  return layer


def generation_conv(channels, name):
  layer = keras.layers.Conv2D(channels, 3, padding="same", dtype="float32", name=name,
                              kernel_initializer=_uniform(9 * channels),
                              bias_initializer=_uniform(9 * channels))
  layer.build((None, None, None, channels))
  return layer


def masked_positions(noise, ratio):
  """[B, N] 1.0 where a token is masked: the int(N (1 - ratio)) smallest draws are kept."""
  n = noise.shape[-1]
  keep = int(n * (1 - ratio))
  rank = tf.argsort(tf.argsort(noise, axis=-1, stable=True), axis=-1, stable=True)
  return tf.cast(rank >= keep, tf.float32)


def mimicking(low_s, low_t, aligns):
  """Per-example sum of squares between the aligned student tokens and the teacher's, over
  the shallow blocks ([B, N, D] lists)."""
  return tf.add_n([tf.reduce_sum(tf.square((align(s) if align else s) - t), [1, 2])
                   for s, t, align in zip(low_s, low_t, aligns)])


def generation(high_s, high_t, mask, mask_token, align, convs, grid):
  """Per-example sum of squares at the masked positions between the generated and the
  teacher's last tokens."""
  x = align(high_s) if align else high_s
  m = mask[..., None]
  x = x * (1.0 - m) + m * mask_token
  width = x.shape[-1]
  x = tf.reshape(x, [-1, grid[0], grid[1], width])
  x = convs[1](tf.nn.relu(convs[0](x)))
  x = tf.reshape(x, [-1, grid[0] * grid[1], width])
  return tf.reduce_sum(tf.square(x * m - high_t * m), [1, 2])


def _patch_tokens(model, features, tap, norm=False):
  """[B, N, D] float32 patch tokens of a block tap (``norm``: through the final LayerNorm)."""
  tokens = base.f32(model.get_layer("norm")(features[tap]) if norm else features[tap])
  return tokens[:, vit.token_layout(model)[2]:]


@base.register
class ViTKD(base.OwnsModules, base.TeacherWeighted):
  """ce_weight * CE + weight * (mimicking + generation), per teacher."""

  name, order, kind = "vitkd", 15, "feature"
  defaults = dict(weight=1.0, alpha=3e-5, beta=3e-6, mask_ratio=0.5)
  reference = ("yzd-v/cls_KD mmcls/models/dis_losses/vitkd.py; "
               "configs/distillers/imagenet/deit-s3_distill_deit-t_img.py")
  field_docs = dict(
      weight="weight of the ViTKD loss (the reference adds it with weight 1)",
      alpha="weight of the shallow blocks' mimicking (alpha_vitkd)",
      beta="weight of the last block's generation (beta_vitkd; divided by mask_ratio)",
      mask_ratio="share of the student's last tokens masked before generation (lambda_vitkd)")

  def __init__(self, section, ce_weight, teacher_weights, models, seed, global_batch_size):
    super().__init__(section.weight, ce_weight, teacher_weights)
    self.s, self.seed, self.global_batch_size = section, seed, global_batch_size
    self.student, self.teachers = models[0], tuple(models[1:])
    depth_s, self.grid, _ = vit.token_layout(self.student)
    depth_t = vit.token_layout(self.teachers[0])[0]
    self.student_taps = tuple(f"block{b}" for b in LOW_BLOCKS) + (f"block{depth_s}",)
    self.teacher_taps = tuple(f"block{b}" for b in LOW_BLOCKS) + (f"block{depth_t}",)
    self.modules, self.owned, self.parts = [], [], []

  @classmethod
  def from_config(cls, ctx):
    models = (ctx.student,) + tuple(ctx.teachers)
    layouts = [vit.token_layout(m) for m in models]
    if any(layout is None for layout in layouts):
      raise UserError("config.distill.method=vitkd distils between vision transformers "
                      "(models/vit.py: deit_*, vit_mini[_distilled]); "
                      f"{', '.join(m.name for m, l in zip(models, layouts) if l is None)} "
                      "is not one. Across architectures, use ofa.")
    grids = {layout[1] for layout in layouts}
    if len(grids) > 1 or min(layout[0] for layout in layouts) < 2:
      raise UserError(f"config.distill.method=vitkd pairs the student's tokens with each "
                      f"teacher's one to one: their patch grids must agree (got "
                      f"{sorted(grids)}) and each network needs 2 or more blocks.")
    ts = ctx.training_set
    return cls(ctx.section(cls.name), ctx.distill.ce_weight, ctx.teacher_weights, models,
               ts.seed if ts else 0, ts.global_batch_size if ts else 1)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del active, student_epochs
    s = distill.section(cls.name)
    base.require(0 < s.mask_ratio < 1 and s.alpha >= 0 and s.beta >= 0,
                 f"{where}.vitkd: mask_ratio must be in (0, 1), alpha and beta >= 0; got "
                 f"{s.mask_ratio}, {s.alpha}, {s.beta}.")

  def build(self, student_shapes, teacher_shapes):
    d_s = student_shapes[self.student_taps[0]][-1]
    for k, shapes in enumerate(teacher_shapes):
      d_t = shapes[self.teacher_taps[0]][-1]
      aligned = d_s != d_t
      part = dict(
          low=[align_layer(d_s, d_t, f"vitkd{k}_align_low{b}") if aligned else None
               for b in LOW_BLOCKS],
          high=align_layer(d_s, d_t, f"vitkd{k}_align_high") if aligned else None,
          convs=[generation_conv(d_t, f"vitkd{k}_generation{i}") for i in (1, 2)],
          token=tf.Variable(tf.zeros([1, 1, d_t]), name=f"vitkd{k}_mask_token"))
      self.parts.append(part)
      self.modules += [l for l in part["low"] + [part["high"]] + part["convs"] if l]
      self.owned.append(part["token"])

  def method_loss(self, batch, student, teacher, k, step):
    s, part = self.s, self.parts[k]
    low_s = [_patch_tokens(self.student, student["features"], t) for t in self.student_taps[:2]]
    low_t = [_patch_tokens(self.teachers[k], teacher["features"][k], t)
             for t in self.teacher_taps[:2]]
    high_s = _patch_tokens(self.student, student["features"], self.student_taps[2], norm=True)
    high_t = _patch_tokens(self.teachers[k], teacher["features"][k], self.teacher_taps[2],
                           norm=True)
    noise = example_draws.per_example(tf.random.stateless_uniform, self.seed, SALT + k,
                                      batch["step"][0], batch["position"],
                                      self.global_batch_size, [self.grid[0] * self.grid[1]])
    mask = masked_positions(noise, s.mask_ratio)
    gen = generation(high_s, tf.stop_gradient(high_t), mask, part["token"], part["high"],
                     part["convs"], self.grid)
    mimic = mimicking(low_s, [tf.stop_gradient(t) for t in low_t], part["low"])
    return s.alpha * mimic + s.beta / s.mask_ratio * gen
