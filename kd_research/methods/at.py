"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): sum over stage pairs of the
squared distance between L2-normalised attention maps mean_c |f|^p.

Every stage of the student is paired with the teacher's last stages (as many as the
student has); a larger map is average-pooled to the smaller's size, as RepDistiller's AT
does. Defaults: RepDistiller scripts/run_cifar_distill.sh (weight 1000, p 2).
"""

import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.models import taps as taps_lib


def attention_map(feature, p=2.0):
  """L2-normalised, flattened mean over channels of |f|^p: [B, H, W, C] -> [B, H*W]."""
  f = base.f32(feature)
  am = tf.reduce_mean(tf.pow(tf.abs(f), p), -1)
  am = tf.reshape(am, [tf.shape(am)[0], -1])
  return tf.math.l2_normalize(am, -1, epsilon=1e-12)


def _pool_matrix(size_in, size_out):
  """[out, in] averaging weights of adaptive average pooling along one axis (as PyTorch's
  adaptive_avg_pool2d: output i averages inputs floor(i*in/out) .. ceil((i+1)*in/out)-1)."""
  rows = []
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
  return tf.constant(rows, tf.float32)


def adaptive_avg_pool(x, size):
  """Adaptive average pooling of [B, H, W, C] maps to ``size`` (differentiable)."""
  ph, pw = _pool_matrix(x.shape[1], size[0]), _pool_matrix(x.shape[2], size[1])
  return tf.einsum("ih,bhwc,jw->bijc", ph, x, pw)


def _match_size(student, teacher):
  """Pools the larger map to the smaller's spatial size."""
  (hs, ws), (ht, wt) = student.shape[1:3], teacher.shape[1:3]
  if hs * ws > ht * wt:
    student = adaptive_avg_pool(student, (ht, wt))
  elif ht * wt > hs * ws:
    teacher = adaptive_avg_pool(teacher, (hs, ws))
  return student, teacher


def attention(student_feature, teacher_feature, p=2.0):
  """Mean over positions of (a_S - a_T)^2 of the attention maps, per example."""
  s, t = _match_size(base.f32(student_feature), base.f32(teacher_feature))
  return tf.reduce_mean(tf.square(attention_map(s, p) - attention_map(t, p)), -1)


def stage_pairs(student, teacher):
  """(student stage, teacher stage) pairs: the last n stages of each, n the smaller count."""
  s_stages, t_stages = taps_lib.stage_names(student), taps_lib.stage_names(teacher)
  n = min(len(s_stages), len(t_stages))
  if not n:
    raise UserError("config.distill.method=at needs feature maps: the student and the "
                    "teacher must both have stage taps (stage1, stage2, ...).")
  pairs = list(zip(s_stages[-n:], t_stages[-n:]))
  for s_tap, t_tap in pairs:
    if len(taps_lib.shape(student, s_tap)) != 3 or len(taps_lib.shape(teacher, t_tap)) != 3:
      raise UserError(f"config.distill.method=at needs feature maps [H, W, C]; the stage taps "
                      f"{s_tap} (student) / {t_tap} (teacher) are vectors (e.g. an MLP).")
  return pairs


@base.register
class AttentionTransfer(base.FeatureMethod):
  """weight * sum over stage pairs of the attention-map loss + ce_weight * CE."""

  name, order = "at", 4
  defaults = dict(weight=1000.0, p=2.0)
  reference = "RepDistiller scripts/run_cifar_distill.sh"

  def __init__(self, weight, ce_weight, teacher_weights, pairs, p=2.0):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.p = p

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    return cls(s.weight, ctx.distill.ce_weight, ctx.teacher_weights,
               stage_pairs(ctx.student, ctx.teacher), s.p)

  @classmethod
  def reads_teacher_maps(cls, section):
    return True

  def method_loss(self, batch, student, teacher, k, step):
    return tf.add_n([attention(student["features"][s], teacher["features"][k][t], self.p)
                     for s, t in self.pairs])
