"""Feature-map helpers the methods on stages share: pairing the stages of two networks,
PyTorch's adaptive average pooling and nearest resize (so that the losses see the shapes
the reference implementations give them), and matching two maps' sizes.
"""

import keras
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.models import taps as taps_lib
from kd_research.models import vit


def _pool_matrix(size_in, size_out):
  """[out, in] averaging weights of adaptive average pooling along one axis (as PyTorch's
  adaptive_avg_pool2d: output i averages inputs floor(i*in/out) .. ceil((i+1)*in/out)-1;
  also when out > in, where the windows overlap)."""
  rows = []
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
  return tf.constant(rows, tf.float32)


def adaptive_avg_pool(x, size):
  """Adaptive average pooling of [B, H, W, C] maps to ``size`` (differentiable)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  ph, pw = _pool_matrix(x.shape[1], size[0]), _pool_matrix(x.shape[2], size[1])
  return tf.einsum("ih,bhwc,jw->bijc", ph, x, pw)


def match_size(student, teacher):
  """Pools the larger map to the smaller's spatial size (AT, VID, NST as the references)."""
  (hs, ws), (ht, wt) = student.shape[1:3], teacher.shape[1:3]
  if hs * ws > ht * wt:
    student = adaptive_avg_pool(student, (ht, wt))
  elif ht * wt > hs * ws:
    teacher = adaptive_avg_pool(teacher, (hs, ws))
  return student, teacher


def nearest_indices(size_in, size_out):
  """PyTorch's F.interpolate(mode='nearest') source index of each output position:
  floor(i * in / out) (TF's nearest uses half-pixel centres, which differ for uneven ratios)."""
  return [(i * size_in) // size_out for i in range(size_out)]


def nearest_resize(x, size):
  """[B, H, W, C] -> [B, size[0], size[1], C] by PyTorch's nearest rule (gathers: no weights)."""
  if tuple(x.shape[1:3]) == tuple(size):
    return x
  x = tf.gather(x, nearest_indices(x.shape[1], size[0]), axis=1)
  return tf.gather(x, nearest_indices(x.shape[2], size[1]), axis=2)


@keras.saving.register_keras_serializable(package="kd_research")
class NearestResize(keras.layers.Layer):
  """``nearest_resize`` as a layer of a method's functional module (no weights)."""

  def __init__(self, size, **kwargs):
    super().__init__(**kwargs)
    self.size = tuple(size)

  def call(self, x):
    return nearest_resize(x, self.size)

  def compute_output_shape(self, input_shape):
    return (input_shape[0],) + self.size + (input_shape[-1],)

  def get_config(self):
    return {**super().get_config(), "size": self.size}


def stage_pairs(student, teacher, method):
  """(student stage, teacher stage) pairs: the last n stages of each, n the smaller count
  (mdistiller's ``_align_list``); UserError unless both are feature maps."""
  s_stages, t_stages = taps_lib.stage_names(student), taps_lib.stage_names(teacher)
  n = min(len(s_stages), len(t_stages))
  if not n:
    raise UserError(f"config.distill.method={method} needs feature maps: the student and the "
                    "teacher must both have stage taps (stage1, stage2, ...)."
                    + _vit_hint(student, teacher))
  pairs = list(zip(s_stages[-n:], t_stages[-n:]))
  for s_tap, t_tap in pairs:
    if len(taps_lib.shape(student, s_tap)) != 3 or len(taps_lib.shape(teacher, t_tap)) != 3:
      raise UserError(f"config.distill.method={method} needs feature maps [H, W, C]; the stage "
                      f"taps {s_tap} (student) / {t_tap} (teacher) are vectors (e.g. an MLP).")
  return pairs


def _vit_hint(*models):
  """What to use instead when a model of the pair is a ViT (its token maps are no stages)."""
  vits = [m.name for m in models if vit.token_layout(m) is not None]
  if not vits:
    return ""
  return (f" Model {vits[0]} is a vision transformer: its token maps (block<i>_map) are not "
          "CNN stages. For a pair across architectures use config.distill.method=ofa "
          "(OFA-KD: each student stage projected into the logit space), a logit method, "
          "or fitnets with explicit taps (e.g. config.distill.fitnets.student_tap=block3_map).")


def preact_pairs(student, teacher, method, student_preact):
  """``stage_pairs`` with the teacher's pre-activation taps, and the student's too when
  ``student_preact`` (OFD; ReviewKD reads the student's stage outputs)."""
  pairs = stage_pairs(student, teacher, method)
  s_taps = [a for a, _ in pairs]
  if student_preact:
    s_taps = taps_lib.require_preact(student, s_taps, "student", method)
  return list(zip(s_taps, taps_lib.require_preact(teacher, [b for _, b in pairs], "teacher",
                                                  method)))


def per_example_mean(x):
  """Mean over every axis but the first: [B, ...] -> [B]."""
  return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), -1)


def per_example_sum(x):
  """Sum over every axis but the first: [B, ...] -> [B]."""
  return tf.reduce_sum(tf.reshape(x, [tf.shape(x)[0], -1]), -1)
