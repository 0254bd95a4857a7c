"""OFD, ReviewKD, VID, NST and CC against float64 NumPy written from the papers (and the
reference code's reductions), with their trainable modules' own weights read back.

The NumPy side never calls the package: adaptive pooling, PyTorch's nearest resize,
BatchNorm in training mode and the convolutions are written out here.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import cc as cc_lib
from kd_research.methods import nst as nst_lib
from kd_research.methods import ofd as ofd_lib
from kd_research.methods import reviewkd as reviewkd_lib
from kd_research.methods import vid as vid_lib
from conftest import check


def np_pool(x, size):
  """PyTorch's adaptive_avg_pool2d on [B, H, W, C], written as loops."""
  b, h, w, c = x.shape
  out = np.zeros((b, size[0], size[1], c))
  for i in range(size[0]):
    h0, h1 = (i * h) // size[0], math.ceil((i + 1) * h / size[0])
    for j in range(size[1]):
      w0, w1 = (j * w) // size[1], math.ceil((j + 1) * w / size[1])
      out[:, i, j] = x[:, h0:h1, w0:w1].mean((1, 2))
  return out


def np_nearest(x, size):
  """F.interpolate(mode='nearest'): source index floor(i * in / out)."""
  rows = [(i * x.shape[1]) // size[0] for i in range(size[0])]
  cols = [(j * x.shape[2]) // size[1] for j in range(size[1])]
  return x[:, rows][:, :, cols]


def np_bn_train(x, layer):
  """BatchNorm in training mode: batch statistics (biased variance), the layer's gamma/beta."""
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  gamma, beta = (np.asarray(v, np.float64) for v in (layer.gamma, layer.beta))
  return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def np_conv(x, kernel, bias=None):
  """'same' convolution with odd kernels, stride 1, as loops over the kernel offsets."""
  k = kernel.shape[0]
  pad = k // 2
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for di in range(k):
    for dj in range(k):
      out += padded[:, di:di + x.shape[1], dj:dj + x.shape[2]] @ kernel[di, dj]
  return out if bias is None else out + bias


def _layers(model, kind):
  return [l for l in model.layers if type(l).__name__ == kind]


def _rng_maps(seed, shapes):
  rng = np.random.default_rng(seed)
  return [rng.normal(0, 1, s).astype(np.float32) for s in shapes]


def test_ofd_margin_is_the_mean_of_the_negative_part_and_the_loss_matches_numpy():
  gamma, beta = np.array([1.0, 0.5, 2.0, 0.1]), np.array([0.0, 1.0, -1.0, 1.0])
  got = ofd_lib.margin(gamma, beta)
  # Independent: E[x | x < 0] by sampling x ~ N(beta, gamma^2); the last channel has
  # P(x < 0) = Phi(-10) <= 1e-3, so its margin is -3 gamma.
  x = np.random.default_rng(0).normal(beta[:3], gamma[:3], (2_000_000, 3))
  sampled = np.array([x[:, c][x[:, c] < 0].mean() for c in range(3)])
  np.testing.assert_allclose(got[:3], sampled, rtol=5e-3)
  assert got[3] == pytest.approx(-0.3)
  s, t = _rng_maps(1, [(6, 4, 4, 4), (6, 4, 4, 4)])
  m = got.astype(np.float64)
  s64, t64 = s.astype(np.float64), t.astype(np.float64)
  # mdistiller's three-term form (distillers/OFD.py feat_loss), summed per example.
  want = ((s64 - m) ** 2 * ((s64 > m) & (t64 <= m))
          + (s64 - t64) ** 2 * ((s64 > t64) & (t64 > m) & (t64 <= 0))
          + (s64 - t64) ** 2 * (t64 > 0)).sum((1, 2, 3))
  check("ofd", ofd_lib.partial_l2(s, t, got), want)


def test_ofd_method_loss_with_connectors_and_stage_weights():
  s1, s2, t1, t2 = _rng_maps(2, [(4, 8, 8, 3), (4, 4, 4, 5), (4, 7, 7, 6), (4, 3, 3, 2)])
  margins = [[np.full(6, -0.5, np.float32), np.full(2, -0.2, np.float32)]]
  method = ofd_lib.OFD(1.0, 0.0, [1.0], [("s1", "t1"), ("s2", "t2")], margins)
  method.build({"s1": s1.shape[1:], "s2": s2.shape[1:]}, [{"t1": t1.shape[1:], "t2": t2.shape[1:]}])
  got = method.method_loss({}, {"features": {"s1": s1, "s2": s2}},
                           {"features": [{"t1": t1, "t2": t2}]}, 0, 0)
  want = 0.0
  for i, (s, t, m) in enumerate([(s1, t1, margins[0][0]), (s2, t2, margins[0][1])]):
    module = method.modules[i]
    conv = _layers(module, "Conv2D")[0].kernel.numpy().astype(np.float64)
    y = np_bn_train(np_conv(s.astype(np.float64), conv), _layers(module, "BatchNormalization")[0])
    target = np.maximum(np_pool(t.astype(np.float64), y.shape[1:3]), m)
    mask = (y > target) | (target > 0)
    want = want + ((y - target) ** 2 * mask).sum((1, 2, 3)) / 2.0 ** (1 - i)
  check("ofd", got, want, rtol=2e-4)


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
  convs, bns = _layers(module, "Conv2D"), _layers(module, "BatchNormalization")
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
  pooled_s, s2, s1 = _rng_maps(3, [(5, 6), (5, 4, 4, 4), (5, 8, 8, 3)])
  pooled_t, t2, t1 = _rng_maps(4, [(5, 7), (5, 3, 3, 5), (5, 6, 6, 2)])
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


def test_vid_matches_numpy_and_starts_at_its_initial_variance():
  s, t = _rng_maps(5, [(6, 8, 8, 3), (6, 4, 4, 5)])
  method = vid_lib.VID(1.0, 0.0, [1.0], [("s", "t")], init_variance=5.0, eps=1e-5)
  method.build({"s": s.shape[1:]}, [{"t": t.shape[1:]}])
  scale = method.owned[0]
  np.testing.assert_allclose(np.log1p(np.exp(scale.numpy().astype(np.float64))) + 1e-5, 5.0,
                             rtol=1e-6)
  scale.assign(np.linspace(-1.0, 2.0, 5).astype(np.float32))
  got = method.method_loss({}, {"features": {"s": s}}, {"features": [{"t": t}]}, 0, 0)
  x = np_pool(s.astype(np.float64), (4, 4))
  for i, conv in enumerate(_layers(method.modules[0], "Conv2D")):
    x = x @ conv.kernel.numpy().astype(np.float64)[0, 0]
    x = np.maximum(x, 0.0) if i < 2 else x
  var = np.log1p(np.exp(scale.numpy().astype(np.float64))) + 1e-5
  want = (0.5 * ((x - t.astype(np.float64)) ** 2 / var + np.log(var))).mean((1, 2, 3))
  check("vid", got, want)


def test_nst_matches_numpy_and_is_zero_for_identical_channels():
  s, t = _rng_maps(6, [(4, 8, 8, 3), (4, 4, 4, 5)])
  s = np.abs(s)

  def np_nst(fs, ft):
    fs = np_pool(fs.astype(np.float64), ft.shape[1:3]) if fs.shape[1] > ft.shape[1] else fs
    out = []
    for a, b in zip(fs.reshape(len(fs), -1, fs.shape[-1]), ft.reshape(len(ft), -1, ft.shape[-1])):
      a, b = a / np.linalg.norm(a, axis=0), b / np.linalg.norm(b, axis=0)
      k = lambda u, v: np.mean([(u[:, i] @ v[:, j]) ** 2 for i in range(u.shape[1])
                                for j in range(v.shape[1])])
      out.append(k(b, b) + k(a, a) - 2 * k(a, b))
    return np.array(out)
  check("nst", nst_lib.nst(s, t), np_nst(s, t.astype(np.float64)))
  np.testing.assert_allclose(nst_lib.nst(t, t * 3.0).numpy(), 0.0, atol=1e-6)


def test_cc_matches_numpy_and_splits_over_replicas():
  fs, ft = _rng_maps(7, [(10, 6), (10, 9)])

  def np_cc(s, t, gamma=0.4):
    def corr(f):
      f = f.astype(np.float64) / np.linalg.norm(f, axis=1, keepdims=True)
      # The Gaussian RBF exp(-gamma ||fi - fj||^2) by its order-2 Taylor series.
      sim = f @ f.T
      return np.exp(-2 * gamma) * (1 + 2 * gamma * sim + (2 * gamma * sim) ** 2 / 2)
    return ((corr(t) - corr(s)) ** 2).sum() / len(s) ** 2
  whole = cc_lib.cc(fs, ft, fs, ft).numpy()
  check("cc", whole.mean(), np_cc(fs, ft))
  halves = [cc_lib.cc(fs[i:i + 5], ft[i:i + 5], fs, ft).numpy() for i in (0, 5)]
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-5, atol=1e-8)
  # High order: the series approaches the exact kernel on unit vectors.
  exact = np.exp(-0.4 * np.square(np.linalg.norm(
      fs[:, None] / np.linalg.norm(fs, axis=1)[:, None, None]
      - fs[None] / np.linalg.norm(fs, axis=1)[None, :, None], axis=-1)))
  np.testing.assert_allclose(cc_lib.correlation(fs, fs, 0.4, 12).numpy(), exact, atol=1e-6)


def test_cc_gradient_is_finite_for_an_all_zero_feature_row():
  """A dead pooled feature (all zeros after ReLU) gives similarity 0; tf.pow's gradient of
  s^0 there is 0 * inf = NaN, which diverged a benchmark run at its first steps."""
  fs, ft = _rng_maps(8, [(6, 5), (6, 7)])
  fs[2] = 0.0
  s = tf.Variable(fs)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(cc_lib.cc(s, ft, s, ft))
  grad = tape.gradient(loss, s).numpy()
  assert np.all(np.isfinite(grad)) and np.isfinite(loss.numpy())
