"""The CIFAR model family of the standard KD benchmark (RepDistiller, mdistiller), in Keras.

Architectures follow the reference PyTorch definitions layer for layer, so that the
trainable parameter counts at 100 classes equal the published ones (tests/models/test_models.py):
resnet8x4, resnet20, resnet32, resnet32x4, resnet56, resnet110 (He et al. 2016, basic
blocks, 1x1 projection shortcut when the shape changes), wrn_16_2 and wrn_40_2
(Zagoruyko & Komodakis 2016, pre-activation blocks), vgg8 and vgg13 (conv-BN-ReLU blocks
with max pooling, global average pooling, one linear layer), mobilenetv2_cifar (Sandler
et al. 2018 at width 0.5 and expansion 6, RepDistiller's ``mobile_half``) and
shufflenetv2 (Ma et al. 2018 at net size 1, CIFAR stem).

PyTorch's conventions, as the references (pytorch_layers.py): BatchNorm momentum 0.1 in
PyTorch's sense (Keras ``momentum=0.9``), epsilon 1e-5, scale 1, offset 0; symmetric
padding on stride-2 layers; each definition's own initialisers: Kaiming-normal fan-out
convolutions for the ResNets, WRNs, VGGs and MobileNetV2 (VGG's conv biases 0), PyTorch's
default Conv2d init for ShuffleNetV2 (its definition sets none); the classifier PyTorch's
Linear init (ResNets, ShuffleNetV2), with a zero bias (WRN), or N(0, 0.01) with a zero bias
(VGG, MobileNetV2).

Input shape and class count come from the data (28x28x1 and 32x32x3 both work); the
final pooling is global average pooling, which equals the references' fixed-size
average pooling on 32x32 inputs. ``width`` scales every channel count by
``width / default`` (``None`` is the published model). Taps: ``stage1``, ``stage2``, ...
after each stage, as mdistiller's ``feats[1:]`` (the stem's f0 is left out, as its feature
methods leave it out: VGG's block 0 is the tap ``stem``; WRN's ``stage3`` is block 3's raw
output, before the final BN + ReLU) and ``pooled`` before the classifier;
``stage<i>_preact``, the tensor whose ReLU is the stage's output (mdistiller's
``preact_feats``), for every family but ShuffleNetV2, with ``stage<i>_preact_bn`` the
BatchNorm that shapes it (OFD's margin): the residual branch's last BN for ResNets, the
BN of the next pre-activation block (or the final BN) for WRN, the block's BN for VGG,
the projection BN of the stage's last block for MobileNetV2 (a linear bottleneck: its
pre-activation is the stage output itself).
"""

import keras

from kd_research.models import parts
from kd_research.models import pytorch_layers
from kd_research.models import registry
from kd_research.models import taps


def _scaled(channels, width, default, even=False):
  """``channels`` scaled by width / default (at least 1; even when ``even``)."""
  if not width or width == default:
    return channels
  value = channels * width / default
  return max(2, 2 * round(value / 2)) if even else max(1, round(value))


def _resnet(name, depth, filters, input_shape, num_classes, width, sync_bn):
  """CIFAR ResNet: stem conv(filters[0]), 3 stages of (depth - 2) / 6 basic blocks."""
  blocks = (depth - 2) // 6
  filters = [_scaled(f, width, filters[0]) for f in filters]
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = pytorch_layers.conv_bn(x, filters[0], 3, sync_bn)
  for stage, stage_filters in enumerate(filters[1:]):
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      last = f"stage{stage + 1}" if block == blocks - 1 else None
      x = pytorch_layers.basic_block(x, stage_filters, stride, sync_bn, last)
    x = parts.tap(x, f"stage{stage + 1}")
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes), name=name)


def _resnet_builder(name, depth, filters):
  def builder(input_shape, num_classes, width=None, sync_bn=False):
    return _resnet(name, depth, filters, input_shape, num_classes, width, sync_bn)
  builder.__doc__ = (f"CIFAR {name}: {(depth - 2) // 6} basic blocks per stage, stem "
                     f"{filters[0]} and stages {filters[1:]} channels at the default width.")
  return builder


def _wrn_block(x, filters, stride, sync_bn, previous=None):
  """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-conv3x3, 1x1 conv shortcut (no BN) when
  the shape changes, taken from the activated input as in the reference. ``previous``: the
  stage whose output enters (first block of a stage): its pre-activation is this block's
  first BN output (as mdistiller's ``block.layer[0].bn1(f)``)."""
  normalised = pytorch_layers.batch_norm(sync_bn, name=parts.preact_bn_name(previous))(x)
  activated = keras.layers.ReLU()(parts.preact_tap(normalised, previous))
  same = stride == 1 and x.shape[-1] == filters
  y = pytorch_layers.conv_bn(activated, filters, 3, sync_bn, stride=stride)
  y = pytorch_layers.conv(y, filters, 3)
  shortcut = x if same else pytorch_layers.conv(activated, filters, 1, stride=stride)
  return keras.layers.Add()([shortcut, y])


def _wrn(name, depth, factor, input_shape, num_classes, width, sync_bn):
  """Wide ResNet-depth-factor: stem 16, stages 16k, 32k, 64k of (depth - 4) / 6 blocks."""
  blocks = (depth - 4) // 6
  channels = [_scaled(c, width, 16) for c in (16, 16 * factor, 32 * factor, 64 * factor)]
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = pytorch_layers.conv(x, channels[0], 3)
  for stage, filters in enumerate(channels[1:]):
    for block in range(blocks):
      previous = f"stage{stage}" if stage > 0 and block == 0 else None
      x = _wrn_block(x, filters, 2 if stage > 0 and block == 0 else 1, sync_bn, previous)
    # The raw output of each block group, as the references' f1, f2, f3 (stage3 before
    # the final BN + ReLU, whose BN output is stage3_preact: mdistiller's f3_pre).
    x = parts.tap(x, f"stage{stage + 1}")
  x = pytorch_layers.batch_norm(sync_bn, name=parts.preact_bn_name("stage3"))(x)
  x = keras.layers.ReLU()(parts.preact_tap(x, "stage3"))
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes, "zero_bias"), name=name)


def _wrn_builder(name, depth, factor):
  def builder(input_shape, num_classes, width=None, sync_bn=False):
    return _wrn(name, depth, factor, input_shape, num_classes, width, sync_bn)
  builder.__doc__ = f"Wide ResNet-{depth}-{factor} (stem width 16 at the default)."
  return builder


def _vgg(name, config, input_shape, num_classes, width, sync_bn):
  """VGG for CIFAR: five blocks of conv3x3(bias)-BN-ReLU, max pooling after the first four
  (the reference skips the fourth on inputs smaller than 64), global average pooling.
  Block 0 is the stem (tap ``stem``: mdistiller's f0, which its feature methods skip),
  blocks 1-4 the stages ``stage1``..``stage4`` (f1..f4)."""
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  for index, block in enumerate(config):
    stage = f"stage{index}" if index else "stem"
    for position, filters in enumerate(block):
      last = stage if position == len(block) - 1 and index else None
      x = pytorch_layers.conv_bn(x, _scaled(filters, width, 64), 3, sync_bn, stage=last,
                                 use_bias=True)
    x = parts.tap(x, stage)
    if index < 3:
      x = keras.layers.MaxPooling2D()(x)
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes, "normal"), name=name)


_VGG = {"vgg8": ((64,), (128,), (256,), (512,), (512,)),
        "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))}


def _vgg_builder(name):
  def builder(input_shape, num_classes, width=None, sync_bn=False):
    return _vgg(name, _VGG[name], input_shape, num_classes, width, sync_bn)
  builder.__doc__ = f"{name} for CIFAR (blocks {_VGG[name]} at the default width 64)."
  return builder


def _inverted_residual(x, filters, stride, expansion, sync_bn, stage=None):
  """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN; identity add when shapes
  match. ``stage`` (a stage's last block): the projection BN is ``<stage>_preact_bn`` and
  the output (linear: no ReLU follows) is tapped as ``<stage>_preact`` too."""
  y = pytorch_layers.conv_bn(x, x.shape[-1] * expansion, 1, sync_bn)
  y = pytorch_layers.conv_bn(y, None, 3, sync_bn, stride=stride, depthwise=True)
  y = pytorch_layers.batch_norm(sync_bn, name=parts.preact_bn_name(stage))(
      pytorch_layers.conv(y, filters, 1))
  out = keras.layers.Add()([x, y]) if stride == 1 and x.shape[-1] == filters else y
  return parts.preact_tap(out, stage)


def mobilenetv2_cifar(input_shape, num_classes, width=None, sync_bn=False):
  """MobileNetV2 for CIFAR at width 0.5, expansion 6 (RepDistiller's ``mobile_half``).

  ``width`` is the stem's channel count (16 at the default width 0.5); the last 1x1
  convolution keeps 1280 channels below width multiplier 1, as in the reference.
  """
  multiplier = (width or 16) / 32
  setting = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
  taps_after = {1: "stage1", 2: "stage2", 4: "stage3", 6: "stage4"}
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = pytorch_layers.conv_bn(x, max(1, int(32 * multiplier)), 3, sync_bn, stride=2)
  for index, (expansion, channels, repeats, stride) in enumerate(setting):
    for repeat in range(repeats):
      last = taps_after.get(index) if repeat == repeats - 1 else None
      x = _inverted_residual(x, max(1, int(channels * multiplier)), stride if repeat == 0 else 1,
                             expansion, sync_bn, last)
    if index in taps_after:
      x = parts.tap(x, taps_after[index])
  last = int(1280 * multiplier) if multiplier > 1.0 else 1280
  x = pytorch_layers.conv_bn(x, last, 1, sync_bn)
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes, "normal"),
                     name="mobilenetv2_cifar")


def _conv_bn(x, filters, kernel, sync_bn, stride=1, relu=True, depthwise=False):
  """conv - BN (- ReLU) with PyTorch's default Conv2d init (the reference sets none)."""
  return pytorch_layers.conv_bn(x, filters, kernel, sync_bn, stride=stride, relu=relu,
                                depthwise=depthwise, init="default")


def _shuffle_basic(x, sync_bn):
  """Split the channels in half; the second half goes 1x1-BN-ReLU, dw3x3-BN, 1x1-BN-ReLU;
  concatenate and shuffle."""
  half = x.shape[-1] // 2
  kept, branch = parts.ChannelSplit(half)(x)
  branch = _conv_bn(branch, half, 1, sync_bn)
  branch = _conv_bn(branch, half, 3, sync_bn, relu=False, depthwise=True)
  branch = _conv_bn(branch, half, 1, sync_bn)
  return parts.ChannelShuffle(2)(keras.layers.Concatenate()([kept, branch]))


def _shuffle_down(x, filters, sync_bn):
  """Stride-2 block: both branches downsample (dw3x3 s2) and end in filters / 2 channels."""
  mid = filters // 2
  left = _conv_bn(x, x.shape[-1], 3, sync_bn, stride=2, relu=False, depthwise=True)
  left = _conv_bn(left, mid, 1, sync_bn)
  right = _conv_bn(x, mid, 1, sync_bn)
  right = _conv_bn(right, mid, 3, sync_bn, stride=2, relu=False, depthwise=True)
  right = _conv_bn(right, mid, 1, sync_bn)
  return parts.ChannelShuffle(2)(keras.layers.Concatenate()([left, right]))


def shufflenetv2(input_shape, num_classes, width=None, sync_bn=False):
  """ShuffleNetV2 (net size 1) for CIFAR: 1x1 stem of 24 channels, stages of 116, 232 and
  464 channels (1 downsampling + 3, 7, 3 basic blocks), 1x1 conv to 1024, GAP, linear.
  ``width`` is the first stage's channel count (116 at the default)."""
  stages = [_scaled(c, width, 116, even=True) for c in (116, 232, 464)]
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = _conv_bn(x, _scaled(24, width, 116), 1, sync_bn)
  for index, (filters, blocks) in enumerate(zip(stages, (3, 7, 3))):
    x = _shuffle_down(x, filters, sync_bn)
    for _ in range(blocks):
      x = _shuffle_basic(x, sync_bn)
    x = parts.tap(x, f"stage{index + 1}")
  x = _conv_bn(x, _scaled(1024, width, 116), 1, sync_bn)
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, pytorch_layers.linear(x, num_classes), name="shufflenetv2")


def _outdated_taps(model):
  """Why a saved WRN or VGG cannot serve feature taps (saved with the tap layout before
  reference parity: VGG's block 0 was stage1, WRN's stage3 followed the final BN + ReLU),
  or None."""
  order = [layer.name for layer in model.layers]  # Topological: the order of the graph.
  old_vgg = model.name in _VGG and "stage5" in order
  old_wrn = (model.name.startswith("wrn_") and "stage3" in order and "stage3_preact_bn" in order
             and order.index("stage3") > order.index("stage3_preact_bn"))
  if not (old_vgg or old_wrn):
    return None
  return (f"Model {model.name} was saved with the feature taps of kd_research before they "
          "followed mdistiller: " + ("VGG's block 0 was stage1 (now the stem; the stages are "
          "blocks 1-4)" if old_vgg else "WRN's stage3 came after the final BN + ReLU (now "
          "block 3's raw output)") + ". Its weights are fine, but feature methods would read "
          "other tensors: retrain it, or distil from it with logit methods only.")


taps.register_layout_check(_outdated_taps)

# The family, one line per model.
for _name, _builder in {
    "resnet8x4": _resnet_builder("resnet8x4", 8, (32, 64, 128, 256)),
    "resnet20": _resnet_builder("resnet20", 20, (16, 16, 32, 64)),
    "resnet32": _resnet_builder("resnet32", 32, (16, 16, 32, 64)),
    "resnet32x4": _resnet_builder("resnet32x4", 32, (32, 64, 128, 256)),
    "resnet56": _resnet_builder("resnet56", 56, (16, 16, 32, 64)),
    "resnet110": _resnet_builder("resnet110", 110, (16, 16, 32, 64)),
    "wrn_16_2": _wrn_builder("wrn_16_2", 16, 2),
    "wrn_40_2": _wrn_builder("wrn_40_2", 40, 2),
    "vgg8": _vgg_builder("vgg8"),
    "vgg13": _vgg_builder("vgg13"),
    "mobilenetv2_cifar": mobilenetv2_cifar,
    "shufflenetv2": shufflenetv2,
}.items():
  registry.register(_name, _builder)

# Trainable parameters at 100 classes as the KD literature tabulates them (in millions,
# rounded to 0.01M; e.g. the model tables of the CRD, ReviewKD and DKD follow-ups);
# tests/models/test_models.py checks our counts against them.
PUBLISHED_PARAMS_M = {
    "resnet8x4": 1.23, "resnet20": 0.28, "resnet32": 0.47, "resnet32x4": 7.43,
    "resnet56": 0.86, "resnet110": 1.74, "wrn_16_2": 0.70, "wrn_40_2": 2.26, "vgg8": 3.96,
    "vgg13": 9.46, "mobilenetv2_cifar": 0.81, "shufflenetv2": 1.36,
}
