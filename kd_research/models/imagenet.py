"""The ImageNet models of the KD benchmark, in torchvision's layout and PyTorch's conventions.

resnet18, resnet34 (basic blocks), resnet50 (bottlenecks, the stride on the 3x3 conv as
torchvision's v1.5) and mobilenetv1 (the MobileNet-V1 of the CRD / mdistiller ImageNet pair:
a 3x3 stem of 32 and 13 depthwise-separable blocks to 1,024 channels), layer for layer, so
that the trainable parameter counts at 1,000 classes equal the published ones
(tests/models/test_imagenet.py) and a torchvision checkpoint maps over weight by weight.

PyTorch's conventions (pytorch_layers.py), not Keras' defaults: BatchNorm momentum 0.1 in
PyTorch's sense (Keras ``momentum=0.9``), epsilon 1e-5, scale 1, offset 0; symmetric
padding on every stride-2 layer, so it sees the same pixels as the reference; the
ResNets' convolutions Kaiming-normal with fan-out (torchvision's init), MobileNet-V1's
PyTorch's default Conv2d init (mdistiller's definition sets none); the classifier
PyTorch's Linear init (uniform within 1/sqrt(fan_in), weights and bias).

Inputs are raw pixels in [0, 255], normalised inside by the ImageNet mean and std (grey
inputs by their mean). Any input size and class count;
taps ``stage1``..``stage4`` (the four stages' outputs) and ``pooled``, and each stage's
pre-activation ``stage<i>_preact`` (the sum before the last ReLU; for MobileNet-V1 the BN
output before it) with ``stage<i>_preact_bn`` the BatchNorm that shapes it.
"""

import keras

from kd_research.models import parts
from kd_research.models import pytorch_layers
from kd_research.models import registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
  x = pytorch_layers.conv_bn(x, filters, 7, sync_bn, stride=2)
  x = keras.layers.ZeroPadding2D(1)(x)  # After ReLU: zero padding equals PyTorch's -inf.
  return keras.layers.MaxPooling2D(3, strides=2)(x)


def bottleneck(x, filters, stride, sync_bn, stage=None):
  """1x1 (filters) - 3x3/stride (filters) - 1x1 (4 x filters), projection when needed."""
  y = pytorch_layers.conv_bn(x, filters, 1, sync_bn)
  y = pytorch_layers.conv_bn(y, filters, 3, sync_bn, stride=stride)
  y = pytorch_layers.conv_bn(y, 4 * filters, 1, sync_bn, relu=False, stage=stage)
  shortcut = pytorch_layers.shortcut(x, 4 * filters, stride, sync_bn)
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
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes), name=name)


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
  x = pytorch_layers.conv_bn(x, max(1, round(32 * scale)), 3, sync_bn, stride=2,
                             init="default")
  for i, (filters, stride) in enumerate(MOBILENET_BLOCKS, 1):
    x = pytorch_layers.conv_bn(x, None, 3, sync_bn, stride=stride, depthwise=True,
                               init="default")
    stage = (f"stage{MOBILENET_STAGE_ENDS.index(i) + 1}" if i in MOBILENET_STAGE_ENDS
             else None)
    x = pytorch_layers.conv_bn(x, max(1, round(filters * scale)), 1, sync_bn, stage=stage,
                               init="default")
    if stage:
      x = parts.tap(x, stage)
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes), name="mobilenetv1")


# Trainable parameters at 1,000 classes: torchvision's model documentation (ResNet-18
# 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032); MobileNet-V1 counted from the
# mdistiller definition (mdistiller/models/imagenet/mobilenetv1.py): convolutions without
# bias, BN scale and offset, a 1,024 x 1,000 linear layer with bias.
PUBLISHED_PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
                    "mobilenetv1": 4_231_976}

for _name, _builder in {
    "resnet18": _resnet_builder("resnet18", pytorch_layers.basic_block, (2, 2, 2, 2)),
    "resnet34": _resnet_builder("resnet34", pytorch_layers.basic_block, (3, 4, 6, 3)),
    "resnet50": _resnet_builder("resnet50", bottleneck, (3, 4, 6, 3)),
    "mobilenetv1": mobilenetv1,
}.items():
  registry.register(_name, _builder)
