"""The families that port PyTorch definitions start as their references do: BatchNorm
momentum and epsilon, each definition's initialisers (written out below from the reference
code, with PyTorch's own fan arithmetic), symmetric stride-2 padding; the seed article's
models keep Keras' defaults."""

import math

import keras
import numpy as np
import pytest

from kd_research.models import pytorch_layers
from kd_research.models import registry

# {model: (conv init, linear init)} as the reference definitions set them: RepDistiller's
# resnet.py (kaiming_normal_ fan_out), wrn.py / vgg.py / mobilenetv2.py
# (normal_(0, sqrt(2 / (k * k * out_channels))); Linear bias zero, VGG and MobileNetV2
# Linear normal_(0, 0.01)), ShuffleNetv2.py and mdistiller's mobilenetv1.py (no init code:
# PyTorch's defaults), torchvision's resnet.py (kaiming_normal_ fan_out, Linear default).
REFERENCE_INITS = {
    "resnet8x4": ("kaiming", "default"), "resnet20": ("kaiming", "default"),
    "resnet56": ("kaiming", "default"), "wrn_16_2": ("kaiming", "zero_bias"),
    "vgg8": ("kaiming", "normal"), "mobilenetv2_cifar": ("kaiming", "normal"),
    "shufflenetv2": ("default", "default"), "resnet18": ("kaiming", "default"),
    "mobilenetv1": ("default", "default"),
}
SHAPES = {"resnet18": (64, 64, 3), "mobilenetv1": (64, 64, 3)}


def _torch_fans(layer):
  """(fan_in, fan_out) as torch.nn.init computes them from the PyTorch weight
  [out, in / groups, k, k] of the Keras convolution ``layer``."""
  k_h, k_w, inputs, outputs = layer.kernel.shape
  if isinstance(layer, keras.layers.DepthwiseConv2D):  # PyTorch weight [C, 1, k, k]
    return k_h * k_w, inputs * k_h * k_w
  return inputs * k_h * k_w, outputs * k_h * k_w


def _check_conv(layer, init):
  weights = layer.kernel.numpy()
  fan_in, fan_out = _torch_fans(layer)
  if init == "kaiming":  # N(0, 2 / fan_out)
    expected_std, bound = math.sqrt(2.0 / fan_out), None
  else:  # kaiming_uniform_(a=sqrt(5)): U(+-1 / sqrt(fan_in))
    bound = 1.0 / math.sqrt(fan_in)
    expected_std = bound / math.sqrt(3.0)
  if bound is not None:
    assert np.abs(weights).max() <= bound * (1 + 1e-6), layer.name
  if weights.size >= 2000:  # enough draws for the std to be within a few percent
    assert abs(weights.std() / expected_std - 1) < 0.1, (layer.name, weights.std(),
                                                         expected_std)
  if layer.use_bias:
    assert not layer.bias.numpy().any(), layer.name


def _check_linear(layer, init):
  kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
  bound = 1.0 / math.sqrt(kernel.shape[0])
  if init == "normal":
    assert abs(kernel.std() / 0.01 - 1) < 0.1 and not bias.any()
    return
  assert np.abs(kernel).max() <= bound and abs(kernel.std() / (bound / math.sqrt(3)) - 1) < 0.1
  if init == "zero_bias":
    assert not bias.any()
  else:
    assert np.abs(bias).max() <= bound and bias.any()


@pytest.mark.parametrize("name", sorted(REFERENCE_INITS))
def test_families_start_as_their_pytorch_references(name):
  conv_init, linear_init = REFERENCE_INITS[name]
  keras.utils.set_random_seed(0)
  model = registry.build(name, SHAPES.get(name, (32, 32, 3)), 100)
  counts = {"bn": 0, "conv": 0}
  for layer in model._flatten_layers(include_self=False, recursive=True):
    if isinstance(layer, keras.layers.BatchNormalization):
      counts["bn"] += 1
      assert (layer.momentum, layer.epsilon) == (0.9, 1e-5), layer.name
      assert np.all(layer.gamma.numpy() == 1) and not layer.beta.numpy().any()
    elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
      counts["conv"] += 1
      _check_conv(layer, conv_init)
      if layer.strides[0] > 1:
        assert layer.padding == "valid", layer.name  # after an explicit symmetric pad
  _check_linear(model.get_layer("logits"), linear_init)
  assert counts["bn"] > 0 and counts["conv"] > 0


def test_seed_article_models_keep_keras_defaults():
  model = registry.build("resnet_article", (28, 28, 1), 10, width=8)
  norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert norms and all((l.momentum, l.epsilon) == (0.99, 1e-3) for l in norms)


@pytest.mark.parametrize("depthwise", [False, True])
def test_stride2_convolution_pads_symmetrically_like_pytorch(depthwise):
  """out[i, j] = sum over the 3x3 window at (2i - 1, 2j - 1) of the input padded by one
  zero on every side (PyTorch's padding=1), written out in NumPy."""
  keras.utils.set_random_seed(1)
  inputs = keras.Input((8, 8, 2))
  model = keras.Model(inputs, pytorch_layers.conv(inputs, 3, 3, stride=2, depthwise=depthwise))
  x = np.random.default_rng(0).normal(size=(1, 8, 8, 2)).astype(np.float32)
  conv = model.layers[-1]
  kernel = conv.kernel.numpy().astype(np.float64)
  padded = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))
  expected = np.zeros((4, 4, 2 if depthwise else 3))
  for i in range(4):
    for j in range(4):
      window = padded[2 * i:2 * i + 3, 2 * j:2 * j + 3]
      expected[i, j] = (np.einsum("hwc,hwc->c", window, kernel[..., 0]) if depthwise
                        else np.einsum("hwc,hwco->o", window, kernel))
  np.testing.assert_allclose(model(x)[0].numpy(), expected, rtol=1e-5, atol=1e-5)
