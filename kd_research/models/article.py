"""The models of the article this project grew from (resnet_article teacher, cnn_article
student; named resnet_seed and cnn_seed before, names still accepted) and the MLP test
workhorse.

They keep Keras' defaults (BatchNorm momentum 0.99, epsilon 1e-3, Glorot-uniform), as the
article's Keras models do.
"""

import keras

from kd_research.models import parts
from kd_research.models import registry


@registry.register("resnet_article", aliases=("resnet_seed",))
def resnet_article(input_shape, num_classes, width=None, sync_bn=False):
  """The seed article's teacher: six residual blocks (w, w, 2w/2, 2w, 4w/2, 4w), GAP, Dense."""
  width = width or 64
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  for index, (filters, stride) in enumerate(((width, 1), (width, 1), (2 * width, 2),
                                             (2 * width, 1), (4 * width, 2), (4 * width, 1))):
    stage = f"stage{index // 2 + 1}" if index % 2 else None
    x = parts.residual_block(x, filters, stride, sync_bn, stage)
    if stage:
      x = parts.tap(x, stage)
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, parts.logits(x, num_classes), name="resnet_article")


@registry.register("cnn_article", aliases=("cnn_seed",))
def cnn_article(input_shape, num_classes, width=None, sync_bn=False):
  """The seed article's student: Conv(w)-Conv(2w), MaxPool, Conv(2w)-Conv(2w), GAP, Dense."""
  del sync_bn  # No BatchNorm in this model.
  width = width or 32
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = keras.layers.Conv2D(width, 3, activation="relu")(x)
  # The stage-ending convolutions apply their ReLU as a layer of its own, after the max
  # pooling for stage1 (max and ReLU commute exactly), so that the pre-activations can be
  # tapped (stage1_preact, stage2_preact); the same weights and outputs as conv(relu).
  x = keras.layers.MaxPooling2D()(keras.layers.Conv2D(2 * width, 3)(x))
  x = parts.tap(keras.layers.ReLU()(parts.preact_tap(x, "stage1")), "stage1")
  x = keras.layers.Conv2D(2 * width, 3, activation="relu")(x)
  x = keras.layers.Conv2D(2 * width, 3)(x)
  x = parts.tap(keras.layers.ReLU()(parts.preact_tap(x, "stage2")), "stage2")
  x = parts.tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, parts.logits(x, num_classes), name="cnn_article")


@registry.register("mlp")
def mlp(input_shape, num_classes, width=None, sync_bn=False):
  """Two hidden ReLU layers of ``width`` units; the smallest student and the test workhorse."""
  del sync_bn
  width = width or 128
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = keras.layers.Flatten()(x)
  x = parts.tap(keras.layers.Dense(width, activation="relu")(x), "stage1")
  x = parts.tap(keras.layers.Dense(width, activation="relu")(x), "pooled")
  return keras.Model(inputs, parts.logits(x, num_classes), name="mlp")
