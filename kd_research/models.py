"""Model registry: plain name -> builder functions returning Keras models that output logits.

Every builder takes ``input_shape`` and ``num_classes`` from the dataset plus a
``width`` (base channel count or hidden units; ``None`` selects the model's
default) and ``sync_bn`` (synchronised BatchNorm across replicas; plain
BatchNormalization keeps per-replica moving statistics under MirroredStrategy).
Models take raw pixel values in [0, 255] and rescale inside, like the seed
article's models, and end in a float32 Dense layer so that softmax, KL and
cross-entropy stay in float32 under mixed precision.

Feature taps: the registry's models name their stage outputs ``stage1``, ``stage2``,
... and the pooled feature before the classifier ``pooled`` (weightless Identity
layers, so weights and numerics are those of the untapped model); ``taps.py`` reads
them from the same forward pass as the logits.
"""

import keras

from kd_research.errors import UserError


def _batch_norm(sync_bn, name=None):
  return keras.layers.BatchNormalization(synchronized=sync_bn, name=name)


def _logits(x, num_classes):
  return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def _tap(x, name):
  """Names a tensor for feature taps (an Identity layer: no weights, no computation)."""
  return keras.layers.Identity(name=name)(x)


def _residual_block(x, filters, stride, sync_bn):
  """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU; 1x1 projection when shape changes."""
  shortcut = x
  y = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
  y = _batch_norm(sync_bn)(y)
  y = keras.layers.ReLU()(y)
  y = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
  y = _batch_norm(sync_bn)(y)
  # The seed article adds the branch to the input unchanged, which breaks as soon
  # as channels or stride change; project the shortcut in that case.
  if stride != 1 or x.shape[-1] != filters:
    shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
    shortcut = _batch_norm(sync_bn)(shortcut)
  return keras.layers.ReLU()(keras.layers.Add()([y, shortcut]))


def resnet_seed(input_shape, num_classes, width=None, sync_bn=False):
  """The seed article's teacher: six residual blocks (w, w, 2w/2, 2w, 4w/2, 4w), GAP, Dense."""
  width = width or 64
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  for index, (filters, stride) in enumerate(((width, 1), (width, 1), (2 * width, 2),
                                             (2 * width, 1), (4 * width, 2), (4 * width, 1))):
    x = _residual_block(x, filters, stride, sync_bn)
    if index % 2:
      x = _tap(x, f"stage{index // 2 + 1}")
  x = _tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, _logits(x, num_classes), name="resnet_seed")


def cnn_seed(input_shape, num_classes, width=None, sync_bn=False):
  """The seed article's student: Conv(w)-Conv(2w), MaxPool, Conv(2w)-Conv(2w), GAP, Dense."""
  del sync_bn  # No BatchNorm in this model.
  width = width or 32
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = keras.layers.Conv2D(width, 3, activation="relu")(x)
  x = keras.layers.Conv2D(2 * width, 3, activation="relu")(x)
  x = _tap(keras.layers.MaxPooling2D()(x), "stage1")
  x = keras.layers.Conv2D(2 * width, 3, activation="relu")(x)
  x = _tap(keras.layers.Conv2D(2 * width, 3, activation="relu")(x), "stage2")
  x = _tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, _logits(x, num_classes), name="cnn_seed")


def _cifar_resnet(depth, input_shape, num_classes, width, sync_bn):
  """CIFAR ResNet (He et al. 2016): 3 stages of (depth-2)/6 blocks at 16w, 32w, 64w filters."""
  blocks = (depth - 2) // 6
  width = width or 16
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
  x = keras.layers.ReLU()(_batch_norm(sync_bn)(x))
  for stage, filters in enumerate((width, 2 * width, 4 * width)):
    for block in range(blocks):
      stride = 2 if stage > 0 and block == 0 else 1
      x = _residual_block(x, filters, stride, sync_bn)
    x = _tap(x, f"stage{stage + 1}")
  x = _tap(keras.layers.GlobalAveragePooling2D()(x), "pooled")
  return keras.Model(inputs, _logits(x, num_classes), name=f"resnet{depth}")


def resnet20(input_shape, num_classes, width=None, sync_bn=False):
  """CIFAR ResNet-20 (about 0.27M params at width 16)."""
  return _cifar_resnet(20, input_shape, num_classes, width, sync_bn)


def resnet32(input_shape, num_classes, width=None, sync_bn=False):
  """CIFAR ResNet-32 (about 0.46M params at width 16)."""
  return _cifar_resnet(32, input_shape, num_classes, width, sync_bn)


def resnet56(input_shape, num_classes, width=None, sync_bn=False):
  """CIFAR ResNet-56 (about 0.85M params at width 16)."""
  return _cifar_resnet(56, input_shape, num_classes, width, sync_bn)


def mlp(input_shape, num_classes, width=None, sync_bn=False):
  """Two hidden ReLU layers of ``width`` units; the smallest student and the test workhorse."""
  del sync_bn
  width = width or 128
  inputs = keras.Input(shape=input_shape)
  x = keras.layers.Rescaling(1.0 / 255)(inputs)
  x = keras.layers.Flatten()(x)
  x = _tap(keras.layers.Dense(width, activation="relu")(x), "stage1")
  x = _tap(keras.layers.Dense(width, activation="relu")(x), "pooled")
  return keras.Model(inputs, _logits(x, num_classes), name="mlp")


def _application(name):
  def builder(input_shape, num_classes, width=None, sync_bn=False, image_size=None, weights=""):
    del width, sync_bn  # The application fixes its own widths and BatchNorm.
    from kd_research import pretrained  # pylint: disable=g-import-not-at-top
    return pretrained.build_application(name, input_shape, num_classes, image_size, weights)
  builder.__doc__ = f"keras.applications {name} backbone with a new head (kd_research.pretrained)."
  return builder


MODELS = {
    "resnet50": _application("resnet50"),
    "mobilenetv2": _application("mobilenetv2"),
    "efficientnetb0": _application("efficientnetb0"),
    "resnet_seed": resnet_seed,
    "cnn_seed": cnn_seed,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "mlp": mlp,
}


APPLICATION_MODELS = ("resnet50", "mobilenetv2", "efficientnetb0")


def build(name, input_shape, num_classes, width=None, sync_bn=False, image_size=None,
          weights=""):
  """Builds the registered model ``name`` for images of ``input_shape`` and ``num_classes``.

  ``image_size`` and ``weights`` apply to the keras.applications models only.
  """
  if name not in MODELS:
    raise UserError(f"Unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}.")
  if width is not None and width < 0:
    raise UserError(f"Model width must be a positive integer (or 0 for the default), got {width}.")
  if name in APPLICATION_MODELS:
    return MODELS[name](tuple(input_shape), num_classes, image_size=image_size or None,
                        weights=weights)
  if weights:
    raise UserError(f"{name} has no pretrained weights; 'weights' is for "
                    f"{', '.join(APPLICATION_MODELS)}.")
  return MODELS[name](tuple(input_shape), num_classes, width=width or None, sync_bn=sync_bn)
