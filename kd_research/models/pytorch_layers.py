"""PyTorch's layer conventions, for the families that port PyTorch definitions: the CIFAR
family (RepDistiller's and mdistiller's models) and the ImageNet family (torchvision's and
mdistiller's). With them a model trains like its reference from the first step (Keras'
BatchNorm momentum 0.99 leaves the moving statistics at half their initial values after
70 steps, so a short run scores near chance in inference mode) and a reference checkpoint
maps over weight by weight with the same outputs.

- BatchNorm: PyTorch's momentum 0.1 (Keras ``momentum=0.9``), epsilon 1e-5, scale 1,
  offset 0.
- Convolutions: a stride-2 layer pads kernel // 2 zeros on every side, as PyTorch's
  ``padding=k // 2`` (Keras' 'same' pads such a layer at the bottom and right only, so it
  would see other pixels); stride 1 uses 'same', the same symmetric padding for odd
  kernels. Biases (VGG's) start at 0, as the reference sets them. Two initialisers:
  ``"kaiming"`` N(0, 2 / (k * k * out_channels)): ``kaiming_normal_(mode="fan_out")`` of
  torchvision's and RepDistiller's ResNets, and the ``normal_(0, sqrt(2 / n))`` with
  n = k * k * out_channels of the WRN, VGG and MobileNetV2 definitions;
  ``"default"`` PyTorch's own Conv2d init, ``kaiming_uniform_(a=sqrt(5))`` =
  U(+-1 / sqrt(fan_in)) (ShuffleNetV2, MobileNet-V1: their definitions set none).
  PyTorch counts a depthwise convolution's fans from its weight [C, 1, k, k] (fan_in k * k,
  fan_out C * k * k); Keras' depthwise kernel is [k, k, C, 1] (fan_in C * k * k, fan_out
  k * k), so the two modes swap for it.
- The classifier, in float32 (as ``parts.logits``): ``"default"`` PyTorch's Linear init,
  U(+-1 / sqrt(fan_in)) for weights and bias; ``"zero_bias"`` the same weights and a zero
  bias (WRN); ``"normal"`` N(0, 0.01) weights and a zero bias (VGG, MobileNetV2).

Every initializer is created per layer: an unseeded Keras initializer draws its seed once,
when it is created, so one shared instance would give every layer of a shape the same
values; created in the builder, the seed follows ``keras.utils.set_random_seed``.
"""

import math

import keras

from kd_research.models import parts

BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5  # PyTorch's momentum 0.1, eps 1e-5
CONV_INITS = ("kaiming", "default")
LINEAR_INITS = ("default", "zero_bias", "normal")


def batch_norm(sync_bn, name=None):
  """BatchNorm with PyTorch's momentum and epsilon, synchronised when ``sync_bn``."""
  return keras.layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                         synchronized=sync_bn, name=name)


def timm_trunc_normal():
  """A new initializer equal to timm's ``trunc_normal_(w, std=0.02)``: its bounds a=-2, b=2
  are absolute, 100 standard deviations out, so it draws N(0, 0.02) (Keras'
  TruncatedNormal would cut at 2 standard deviations, a narrower distribution)."""
  return keras.initializers.RandomNormal(0.0, 0.02)


def conv_initializer(init, depthwise=False):
  """A new Keras initializer equal to PyTorch's ``init`` (CONV_INITS) for a convolution."""
  if init not in CONV_INITS:
    raise ValueError(f"conv init {init!r}: one of {CONV_INITS}")
  if init == "kaiming":  # n = k * k * out_channels; PyTorch's depthwise out = C = Keras' fan_in
    return keras.initializers.VarianceScaling(2.0, "fan_in" if depthwise else "fan_out",
                                              "untruncated_normal")
  # U(+-1 / sqrt(fan_in)); PyTorch's depthwise fan_in k * k is Keras' fan_out.
  return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out" if depthwise else "fan_in",
                                            "uniform")


def default_bias_initializer(fan_in):
  """PyTorch's default bias init for a conv or linear layer, U(+-1 / sqrt(fan_in)), fan_in
  being the *weight's* (in_channels * k * k): a Keras VarianceScaling on the bias would read
  the bias's own length instead."""
  bound = 1.0 / math.sqrt(fan_in)
  return keras.initializers.RandomUniform(-bound, bound)


def conv(x, filters, kernel, stride=1, depthwise=False, init="kaiming", use_bias=False):
  """PyTorch's Conv2d(kernel, stride, padding=kernel // 2) (depthwise: groups=channels)."""
  padding = "same"
  if stride > 1:
    padding = "valid"
    if kernel > 1:
      x = keras.layers.ZeroPadding2D(kernel // 2)(x)
  initializer = conv_initializer(init, depthwise)
  if depthwise:
    return keras.layers.DepthwiseConv2D(kernel, strides=stride, padding=padding,
                                        use_bias=use_bias,
                                        depthwise_initializer=initializer)(x)
  return keras.layers.Conv2D(filters, kernel, strides=stride, padding=padding,
                             use_bias=use_bias, kernel_initializer=initializer)(x)


def conv_bn(x, filters, kernel, sync_bn, stride=1, relu=True, depthwise=False, stage=None,
            init="kaiming", use_bias=False):
  """conv - BN (- ReLU); ``stage``: the BN is ``<stage>_preact_bn`` and, with ``relu``, its
  output is tapped as ``<stage>_preact``."""
  y = conv(x, filters, kernel, stride, depthwise, init, use_bias)
  y = batch_norm(sync_bn, parts.preact_bn_name(stage))(y)
  return keras.layers.ReLU()(parts.preact_tap(y, stage)) if relu else y


def shortcut(x, filters, stride, sync_bn):
  """The identity, or conv1x1/stride - BN when the shape changes (torchvision's downsample)."""
  if stride == 1 and x.shape[-1] == filters:
    return x
  return conv_bn(x, filters, 1, sync_bn, stride=stride, relu=False)


def basic_block(x, filters, stride, sync_bn, stage=None):
  """He et al.'s basic block as torchvision and RepDistiller write it: conv3x3/stride-BN-ReLU,
  conv3x3-BN, + shortcut, ReLU; ``stage``: the sum is tapped as ``<stage>_preact`` and the
  branch's last BN named ``<stage>_preact_bn``."""
  y = conv_bn(x, filters, 3, sync_bn, stride=stride)
  y = conv_bn(y, filters, 3, sync_bn, relu=False, stage=stage)
  out = keras.layers.Add()([y, shortcut(x, filters, stride, sync_bn)])
  return keras.layers.ReLU()(parts.preact_tap(out, stage))


def linear(x, num_classes, init="default"):
  """The float32 logits layer with PyTorch's ``init`` (LINEAR_INITS)."""
  if init not in LINEAR_INITS:
    raise ValueError(f"linear init {init!r}: one of {LINEAR_INITS}")
  bound = 1.0 / math.sqrt(x.shape[-1])
  kernel = (keras.initializers.RandomNormal(0.0, 0.01) if init == "normal"
            else keras.initializers.RandomUniform(-bound, bound))
  bias = (default_bias_initializer(x.shape[-1]) if init == "default"
          else keras.initializers.Zeros())
  return keras.layers.Dense(num_classes, dtype="float32", name="logits",
                            kernel_initializer=kernel, bias_initializer=bias)(x)
