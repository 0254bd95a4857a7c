"""Float64 NumPy helpers the methods' tests share, written from the papers and PyTorch's
definitions: they never call the package (adaptive pooling, nearest resize, BatchNorm in
training mode and the convolutions are written out here)."""

import math

import numpy as np


def softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def kl(p, q):
  return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(q)), 0.0), -1)


def case(seed, b=12, c=7, d=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, 3, (b, c)).astype(np.float32), rng.normal(0, 3, (b, c)).astype(np.float32),
          rng.integers(0, c, b).astype(np.int32), rng.normal(0, 1, (b, 4, 4, d)).astype(np.float32),
          rng.normal(0, 1, (b, 4, 4, d + 2)).astype(np.float32))


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


def layers_of(model, kind):
  """The layers of ``model`` whose class is named ``kind``, in order."""
  return [l for l in model.layers if type(l).__name__ == kind]


def rng_maps(seed, shapes):
  """float32 normal arrays of the given shapes from one seeded generator."""
  rng = np.random.default_rng(seed)
  return [rng.normal(0, 1, s).astype(np.float32) for s in shapes]


def assert_splits_over_replicas(fn, s, t, rtol=1e-5, atol=1e-7):
  """A relational loss ``fn(s_local, t_local, s_global, t_global, offset)`` computed as two
  "replicas" (each its rows against the global batch) equals the whole batch's rows."""
  half = len(s) // 2
  whole = fn(s, t, s, t, 0).numpy()
  halves = [fn(s[i:i + half], t[i:i + half], s, t, i).numpy() for i in (0, half)]
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=rtol, atol=atol)
  return whole
