"""The ImageNet models of the KD benchmark, in torchvision's layout and PyTorch's conventions.

resnet18, resnet34 (basic blocks), resnet50 (bottlenecks, the stride on the 3x3 conv as
torchvision's v1.5) and mobilenetv1 (the MobileNet-V1 of the CRD / mdistiller ImageNet pair:
a 3x3 stem of 32 and 13 depthwise-separable blocks to 1,024 channels), layer for layer, so
that the trainable parameter counts at 1,000 classes equal the published ones
(tests/models/test_imagenet.py) and a torchvision checkpoint maps over weight by weight.

PyTorch's conventions, not Keras' defaults: BatchNorm momentum 0.1 in PyTorch's sense (Keras
``momentum=0.9``), epsilon 1e-5; convolutions Kaiming-normal with fan-out (torchvision's
init); BN scale 1, offset 0; the classifier PyTorch's Linear init (uniform within
1/sqrt(fan_in), weights and bias). Padding is PyTorch's symmetric padding (explicit zero
padding, then a 'valid' convolution or pooling), not Keras' 'same', so every stride-2 layer
sees the same pixels as the reference. Inputs are raw pixels in [0, 255], normalised inside
by the ImageNet mean and std (grey inputs by their mean). Any input size and class count;
taps ``stage1``..``stage4`` (the four stages' outputs) and ``pooled``, and each stage's
pre-activation ``stage<i>_preact`` (the sum before the last ReLU; for MobileNet-V1 the BN
output before it) with ``stage<i>_preact_bn`` the BatchNorm that shapes it.
"""

import math

import keras

from kd_research.models import parts
from kd_research.models import registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # PyTorch's momentum 0.1, eps 1e-5


def kaiming_fan_out():
  """torchvision's conv init, a new initializer per layer: an unseeded Keras initializer
  draws its seed once, when it is created, and gives every layer of the same shape the same
  values; created in the builder, its seed follows keras.utils.set_random_seed."""
  return keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")


def batch_norm(sync_bn, name=None):
  """BatchNorm with PyTorch's momentum and epsilon."""
  return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                         synchronized=sync_bn, name=name)


def conv(x, filters, kernel, stride=1, depthwise=False):
  """PyTorch's Conv2d(kernel, stride, padding=kernel // 2, bias=False), Kaiming fan-out."""
  if kernel > 1:
    x = keras.layers.ZeroPadding2D(kernel // 2)(x)
  if depthwise:
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, use_bias=False,
                                        depthwise_initializer=kaiming_fan_out())(x)
  return keras.layers.Conv2D(filters, kernel, strides=stride, use_bias=False,
                             kernel_initializer=kaiming_fan_out())(x)


def conv_bn(x, filters, kernel, sync_bn, stride=1, relu=True, depthwise=False, stage=None):
  """conv - BN (- ReLU); ``stage``: the BN is ``<stage>_preact_bn`` and, with ``relu``, its
  output is tapped as ``<stage>_preact``."""
  x = batch_norm(sync_bn, parts.preact_bn_name(stage))(conv(x, filters, kernel, stride,
                                                           depthwise))
  return keras.layers.ReLU()(parts.preact_tap(x, stage)) if relu else x


def torch_linear(x, num_classes):
  """The float32 logits with PyTorch's Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(x.shape[-1])
  init = keras.initializers.RandomUniform(-bound, bound)
  return keras.layers.Dense(num_classes, dtype="float32", name="logits",
                            kernel_initializer=init, bias_initializer=init)(x)


def normalised_input(input_shape):
  """(inputs, x): raw [0, 255] pixels normalised by the ImageNet mean and std."""
  inputs = keras.Input(shape=input_shape)
  channels = input_shape[-1]
  mean = IMAGENET_MEAN if channels == 3 else (sum(IMAGENET_MEAN) / 3,) * channels
  std = IMAGENET_STD if channels == 3 else (sum(IMAGENET_STD) / 3,) * channels
  x = keras.layers.Rescaling([1.0 / (255.0 * s) for s in std],
                             [-m / s for m, s in zip(mean, std)])(inputs)
  return inputs, x


def _stem(x, filters, sync_bn):
  """conv 7x7/2 (64) - BN - ReLU - max pool 3x3/2 (padding 1)."""
  x = conv_bn(x, filters, 7, sync_bn, stride=2)
  x = keras.layers.ZeroPadding2D(1)(x)  # After ReLU: zero padding equals PyTorch's -inf.
  return keras.layers.MaxPooling2D(3, strides=2)(x)


def _shortcut(x, filters, stride, sync_bn):
  if stride == 1 and x.shape[-1] == filters:
    return x
  return conv_bn(x, filters, 1, sync_bn, stride=stride, relu=False)


def basic_block(x, filters, stride, sync_bn, stage=None):
  """3x3 - 3x3 + shortcut, ReLU; ``stage``: the sum is tapped as ``<stage>_preact``."""
  y = conv_bn(x, filters, 3, sync_bn, stride=stride)
  y = conv_bn(y, filters, 3, sync_bn, relu=False, stage=stage)
  out = keras.layers.Add()([y, _shortcut(x, filters, stride, sync_bn)])
  return keras.layers.ReLU()(parts.preact_tap(out, stage))


def bottleneck(x, filters, stride, sync_bn, stage=None):
  """1x1 (filters) - 3x3/stride (filters) - 1x1 (4 x filters), projection when needed."""
  y = conv_bn(x, filters, 1, sync_bn)
  y = conv_bn(y, filters, 3, sync_bn, stride=stride)
  y = conv_bn(y, 4 * filters, 1, sync_bn, relu=False, stage=stage)
  shortcut = _shortcut(x, 4 * filters, stride, sync_bn)
  return keras.layers.ReLU()(parts.preact_tap(keras.layers.Add()([y, shortcut]), stage))


def _resnet(name, block, layers, input_shape, num_classes, width, sync_bn):
  """Stem, four stages of ``layers`` blocks (64, 128, 256, 512 x ``width`` / 64 channels)."""
  base = max(1, round(width or 64))
  inputs, x = normalised_input(input_shape)
  x = _stem(x, base, sync_bn)
  for stage, blocks in enumerate(layers):
    for i in range(blocks):
      last = f"stage{stage + 1}" if i == blocks - 1 else None
      x = block(x, base * 2**stage, 2 if stage > 0 and i == 0 else 1, sync_bn, last)
    x = parts.tap(x, f"stage{stage + 1}")
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, torch_linear(x, num_classes), name=name)


def _resnet_builder(name, block, layers):
  def builder(input_shape, num_classes, width=None, sync_bn=False):
    return _resnet(name, block, layers, input_shape, num_classes, width, sync_bn)
  builder.__doc__ = f"torchvision {name}: {layers} blocks per stage ({block.__name__})."
  return builder


# (output channels, stride) of MobileNet-V1's depthwise-separable blocks; the stages end at
# blocks 3, 5, 11 and 13 (128, 256, 512 and 1,024 channels), as the reference's feature list.
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                    (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
MOBILENET_STAGE_ENDS = (3, 5, 11, 13)


def mobilenetv1(input_shape, num_classes, width=None, sync_bn=False):
  """MobileNet-V1 (Howard et al. 2017) as in the CRD/mdistiller ImageNet pair; ``width``
  scales the channels by width / 32 (the stem's 32)."""
  scale = (width or 32) / 32
  inputs, x = normalised_input(input_shape)
  x = conv_bn(x, max(1, round(32 * scale)), 3, sync_bn, stride=2)
  for i, (filters, stride) in enumerate(MOBILENET_BLOCKS, 1):
    x = conv_bn(x, None, 3, sync_bn, stride=stride, depthwise=True)
    stage = (f"stage{MOBILENET_STAGE_ENDS.index(i) + 1}" if i in MOBILENET_STAGE_ENDS
             else None)
    x = conv_bn(x, max(1, round(filters * scale)), 1, sync_bn, stage=stage)
    if stage:
      x = parts.tap(x, stage)
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, torch_linear(x, num_classes), name="mobilenetv1")


# Trainable parameters at 1,000 classes: torchvision's model documentation (ResNet-18
# 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032); MobileNet-V1 counted from the
# mdistiller definition (mdistiller/models/imagenet/mobilenetv1.py): convolutions without
# bias, BN scale and offset, a 1,024 x 1,000 linear layer with bias.
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                    "mobilenetv1": 4_231_976}

for _name, _builder in {
    "resnet18": _resnet_builder("resnet18", basic_block, (2, 2, 2, 2)),
    "resnet34": _resnet_builder("resnet34", basic_block, (3, 4, 6, 3)),
    "resnet50": _resnet_builder("resnet50", bottleneck, (3, 4, 6, 3)),
    "mobilenetv1": mobilenetv1,
}.items():
  registry.register(_name, _builder)
