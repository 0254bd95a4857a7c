"""Building blocks shared by the model families (article.py) and the CIFAR family
(cifar.py): feature taps (with the stages' pre-activation taps), the float32 logits head,
BatchNorm, the basic residual block, and the two weightless layers ShuffleNetV2 needs
(saved and loaded by name, so ``.keras`` files load with safe_mode)."""

import keras
from keras import ops


def batch_norm(sync_bn, name=None):
  """BatchNormalization, synchronised across replicas when ``sync_bn``."""
  return keras.layers.BatchNormalization(synchronized=sync_bn, name=name)


def logits(x, num_classes):
  """The classifier in float32, so softmax, KL and CE stay float32 under mixed precision."""
  return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def tap(x, name):
  """Names a tensor for feature taps (an Identity layer: no weights, no computation)."""
  return keras.layers.Identity(name=name)(x)


def preact_bn_name(stage):
  """The name of the BatchNorm whose scale and offset shape ``stage``'s pre-activation
  (OFD reads its margin from them), or None when ``stage`` is None."""
  return f"{stage}_preact_bn" if stage else None


def preact_tap(x, stage):
  """Names ``stage``'s pre-activation ``<stage>_preact``: the tensor the stage's last ReLU
  takes (an Identity layer like ``tap``: the model's numerics and weights are unchanged)."""
  return tap(x, f"{stage}_preact") if stage else x


def residual_block(x, filters, stride, sync_bn, stage=None):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; 1x1 conv + BN projection when the shape
  changes (the seed article added the input unchanged, which breaks on such blocks).
  ``stage`` (the last block of a stage): the sum before the ReLU is tapped as
  ``<stage>_preact`` and the residual branch's last BatchNorm named ``<stage>_preact_bn``."""
  shortcut = x
  y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
  y = batch_norm(sync_bn)(y)
  y = keras.layers.ReLU()(y)
  y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
  y = batch_norm(sync_bn, name=preact_bn_name(stage))(y)
  if stride != 1 or x.shape[-1] != filters:
    shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
    shortcut = batch_norm(sync_bn)(shortcut)
  return keras.layers.ReLU()(preact_tap(keras.layers.Add()([y, shortcut]), stage))


@keras.saving.register_keras_serializable(package="kd_research")
class ChannelSplit(keras.layers.Layer):
  """Splits the channels into the first ``first`` and the rest (no weights)."""

  def __init__(self, first, **kwargs):
    super().__init__(**kwargs)
    self.first = int(first)

  def call(self, x):
    return x[..., :self.first], x[..., self.first:]

  def compute_output_shape(self, input_shape):
    rest = None if input_shape[-1] is None else input_shape[-1] - self.first
    return (tuple(input_shape[:-1]) + (self.first,), tuple(input_shape[:-1]) + (rest,))

  def get_config(self):
    return {**super().get_config(), "first": self.first}


@keras.saving.register_keras_serializable(package="kd_research")
class ChannelShuffle(keras.layers.Layer):
  """ShuffleNet's channel shuffle: [.., g * c] -> [.., c, g] transposed -> [.., c * g]."""

  def __init__(self, groups, **kwargs):
    super().__init__(**kwargs)
    self.groups = int(groups)

  def call(self, x):
    channels = x.shape[-1]
    shape = ops.shape(x)
    grouped = ops.reshape(x, (shape[0], shape[1], shape[2], self.groups,
                              channels // self.groups))
    swapped = ops.transpose(grouped, (0, 1, 2, 4, 3))
    return ops.reshape(swapped, (shape[0], shape[1], shape[2], channels))

  def get_config(self):
    return {**super().get_config(), "groups": self.groups}
