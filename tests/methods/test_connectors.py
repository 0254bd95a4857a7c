"""FitNets' connector against a float64 NumPy transcription of the references' ConvReg
(mdistiller distillers/_common.py, RepDistiller models/util.py: conv -> BN -> ReLU with
``use_relu=True``, the conv chosen by the two maps' heights), with the connector's own
weights read back. The NumPy side never calls the package: PyTorch's Conv2d (NCHW, zero
padding on every side), ConvTranspose2d (scatter-add, then crop ``padding``), BatchNorm in
training mode and the hint's F.mse_loss are written out here.
"""

import numpy as np
import pytest

from kd_research.common.errors import UserError
from kd_research.methods import connectors
from kd_research.methods import fitnets
from kd_research.models import registry as model_registry
from conftest import check


def torch_conv2d(x, weight, stride, padding):
  """PyTorch's Conv2d on NCHW ``x`` with weight [out, in, kh, kw] (no bias)."""
  x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
  kh, kw = weight.shape[2:]
  oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], weight.shape[0], oh, ow))
  for i in range(oh):
    for j in range(ow):
      window = x[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
      out[:, :, i, j] = np.einsum("nchw,ochw->no", window, weight)
  return out


def torch_conv_transpose2d(x, weight, stride, padding):
  """PyTorch's ConvTranspose2d on NCHW ``x`` with weight [in, out, kh, kw] (no bias)."""
  n, _, h, w = x.shape
  kh, kw = weight.shape[2:]
  full = np.zeros((n, weight.shape[1], (h - 1) * stride + kh, (w - 1) * stride + kw))
  for i in range(h):
    for j in range(w):
      full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
          "nc,cohw->nohw", x[:, :, i, j], weight)
  return full[:, :, padding:full.shape[2] - padding, padding:full.shape[3] - padding]


def conv_reg(x_nhwc, s_shape, t_shape, weight, gamma, beta, eps, use_relu=True):
  """ConvReg.forward as the references write it, in NCHW, returned as NHWC."""
  x = np.transpose(x_nhwc, (0, 3, 1, 2))
  s_h, s_w, t_h, t_w = s_shape[0], s_shape[1], t_shape[0], t_shape[1]
  if s_h == 2 * t_h:
    y = torch_conv2d(x, weight, stride=2, padding=1)
  elif s_h * 2 == t_h:
    y = torch_conv_transpose2d(x, weight, stride=2, padding=1)
  elif s_h >= t_h:
    assert weight.shape[2:] == (1 + s_h - t_h, 1 + s_w - t_w)
    y = torch_conv2d(x, weight, stride=1, padding=0)
  else:
    raise NotImplementedError
  mean, var = y.mean((0, 2, 3), keepdims=True), y.var((0, 2, 3), keepdims=True)
  y = (y - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]
  y = np.maximum(y, 0.0) if use_relu else y
  return np.transpose(y, (0, 2, 3, 1))


def torch_weight(layer):
  """The connector conv's kernel in PyTorch's layout: Conv2d [out, in, kh, kw] from Keras'
  [kh, kw, in, out]; ConvTranspose2d [in, out, kh, kw] from Keras' [kh, kw, out, in]."""
  return np.transpose(np.asarray(layer.kernel, np.float64), (3, 2, 0, 1))


CASES = {  # (student map, teacher map): the reference's three branches and the equal size.
    "equal_1x1": ((8, 8, 16), (8, 8, 32)),
    "twice_stride2": ((16, 16, 8), (8, 8, 12)),
    "half_transpose": ((4, 4, 8), (8, 8, 6)),
    "larger_valid": ((10, 9, 6), (8, 8, 5)),
}


@pytest.mark.parametrize("case", CASES)
def test_connector_is_convreg_with_its_relu(case):
  s_shape, t_shape = CASES[case]
  rng = np.random.default_rng(0)
  module = connectors.connector(s_shape, t_shape, "hint0")
  conv = [l for l in module.layers if "conv" in type(l).__name__.lower()][0]
  bn = [l for l in module.layers if type(l).__name__ == "BatchNormalization"][0]
  # A trained BN is not at its initial values: give it some.
  bn.gamma.assign(rng.uniform(0.5, 1.5, t_shape[-1]).astype(np.float32))
  bn.beta.assign(rng.normal(0, 0.3, t_shape[-1]).astype(np.float32))
  student = np.maximum(rng.normal(size=(8,) + s_shape), 0.0).astype(np.float32)  # post-ReLU
  teacher = np.maximum(rng.normal(size=(8,) + t_shape), 0.0)
  got = np.asarray(module(student, training=True), np.float64)
  want = conv_reg(student.astype(np.float64), s_shape, t_shape, torch_weight(conv),
                  np.asarray(bn.gamma, np.float64), np.asarray(bn.beta, np.float64), bn.epsilon)
  assert got.shape == (8,) + t_shape
  check(f"convreg_{case}", got, want, rtol=1e-4, atol=1e-5)
  assert bn.epsilon == 1e-5 and bn.momentum == pytest.approx(0.9)  # PyTorch's BN: 1e-5, 0.1
  hint = float(np.mean(np.asarray(fitnets.hint(got.astype(np.float32), teacher))))
  check(f"hint_{case}", hint, np.mean((want - teacher) ** 2), rtol=1e-5)  # F.mse_loss
  without_relu = conv_reg(student.astype(np.float64), s_shape, t_shape, torch_weight(conv),
                          np.asarray(bn.gamma, np.float64), np.asarray(bn.beta, np.float64),
                          bn.epsilon, use_relu=False)
  print(f"{case}: hint with ConvReg's ReLU {hint:.4f}, without it (the earlier connector) "
        f"{np.mean((without_relu - teacher) ** 2):.4f}")


def test_resize_connector_is_a_named_option_and_the_reference_refuses_what_it_cannot_map():
  module = connectors.connector((6, 6, 4), (8, 8, 5), "hint0", kind="resize")
  assert module.output.shape[1:] == (8, 8, 5)
  assert connectors.reference_conv((6, 6, 4), (8, 8, 5)) is None  # Smaller, but not half.
  student = model_registry.build("cnn_article", (24, 24, 1), 10, 4)
  teacher = model_registry.build("wrn_16_2", (32, 32, 1), 10, 8)
  with pytest.raises(UserError, match="connector=resize"):
    connectors.check_compatible(student, "stage1", teacher, "stage1")
  connectors.check_compatible(student, "stage1", teacher, "stage1", kind="resize")
