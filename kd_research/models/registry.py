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

from kd_research.models import cifar
from kd_research.common.errors import UserError
from kd_research.models.parts import logits as _logits
from kd_research.models.parts import residual_block as _residual_block
from kd_research.models.parts import tap as _tap


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
    from kd_research.models import pretrained  # pylint: disable=g-import-not-at-top
    return pretrained.build_application(name, input_shape, num_classes, image_size, weights)
  builder.__doc__ = f"keras.applications {name} backbone with a new head (kd_research.models.pretrained)."
  return builder


MODELS = {
    "resnet50": _application("resnet50"),
    "mobilenetv2": _application("mobilenetv2"),
    "efficientnetb0": _application("efficientnetb0"),
    "resnet_seed": resnet_seed,
    "cnn_seed": cnn_seed,
    "mlp": mlp,
    **cifar.MODELS,
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
