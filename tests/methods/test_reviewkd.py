"""ReviewKD's attention-based fusion and hierarchical context loss against float64 NumPy."""

import numpy as np
import tensorflow as tf

from kd_research.methods import reviewkd as reviewkd_lib
from conftest import check
from method_references import layers_of, np_bn_train, np_conv, np_nearest, np_pool, rng_maps


def np_hcl(fs, ft):
  loss, cnt, tot = ((fs - ft) ** 2).mean((1, 2, 3)), 1.0, 1.0
  for size in (4, 2, 1):
    if size >= fs.shape[1]:
      continue
    cnt /= 2.0
    loss = loss + ((np_pool(fs, (size, size)) - np_pool(ft, (size, size))) ** 2).mean((1, 2, 3)) * cnt
    tot += cnt
  return loss / tot


def np_abf(module, x, residual, out_size):
  convs, bns = layers_of(module, "Conv2D"), layers_of(module, "BatchNormalization")
  x = np_bn_train(np_conv(x, convs[0].kernel.numpy().astype(np.float64)), bns[0])
  if residual is not None:
    r = np_nearest(residual, x.shape[1:3])
    att = convs[1]
    z = np_conv(np.concatenate([x, r], -1), att.kernel.numpy().astype(np.float64),
                att.bias.numpy().astype(np.float64))
    z = 1.0 / (1.0 + np.exp(-z))
    x = x * z[..., 0:1] + r * z[..., 1:2]
  x = np_nearest(x, out_size)
  y = np_bn_train(np_conv(x, convs[-1].kernel.numpy().astype(np.float64)), bns[1])
  return y, x


def test_reviewkd_fusion_and_hierarchical_context_loss_match_numpy():
  """Three levels (pooled, 4x4, 8x8 student; 1x1, 3x3, 6x6 teacher: the outputs are resized)."""
  pooled_s, s2, s1 = rng_maps(3, [(5, 6), (5, 4, 4, 4), (5, 8, 8, 3)])
  pooled_t, t2, t1 = rng_maps(4, [(5, 7), (5, 3, 3, 5), (5, 6, 6, 2)])
  pairs = [("pooled", "pooled"), ("s2", "t2"), ("s1", "t1")]
  method = reviewkd_lib.ReviewKD(1.0, 0.0, [1.0], pairs, warmup_steps=10)
  method.build({"pooled": (6,), "s2": (4, 4, 4), "s1": (8, 8, 3)},
               [{"pooled": (7,), "t2": (3, 3, 5), "t1": (6, 6, 2)}])
  features = {"pooled": pooled_s, "s2": s2, "s1": s1}
  teacher = {"features": [{"pooled": pooled_t, "t2": t2, "t1": t1}]}
  got = method.method_loss({}, {"features": features}, teacher, 0, tf.constant(5))
  want, residual = 0.0, None
  for module, (s_tap, t_tap) in zip(method.modules, pairs):
    x = features[s_tap].astype(np.float64)
    x = x[:, None, None, :] if x.ndim == 2 else x
    t = teacher["features"][0][t_tap].astype(np.float64)
    t = t[:, None, None, :] if t.ndim == 2 else t
    y, residual = np_abf(module, x, residual, t.shape[1:3])
    want = want + np_hcl(y, t)
  check("reviewkd", got, 0.5 * want, rtol=2e-4)  # Step 5 of a 10-step warm-up.


def test_the_attention_conv_starts_as_pytorchs_default_conv():
  """ABF's attention conv (nn.Conv2d(mid * 2, 2, 1) in the reference, left at PyTorch's
  default init): weight and bias U(+-1 / sqrt(2 mid)); the bias's bound is the weight's
  fan-in, not the bias's own length (2), which gave U(+-0.71)."""
  mid = 64
  module = reviewkd_lib.abf((4, 4, 8), (2, 2, mid), (4, 4, 16), mid, "abf")
  attention = layers_of(module, "Conv2D")[1]
  bound = 1.0 / np.sqrt(2 * mid)
  draws = [attention.bias_initializer(shape=(4096,)).numpy(),
           attention.kernel_initializer(shape=(1, 1, 2 * mid, 32)).numpy()]
  for values in draws:
    assert np.abs(values).max() <= bound and np.abs(values).max() > 0.95 * bound
    assert abs(values.std() - bound / np.sqrt(3)) < 0.05 * bound  # Uniform: std bound / sqrt 3.
