"""keras.applications backbones as teachers: ResNet50, MobileNetV2, EfficientNetB0.

Each builder adapts small images to the backbone (grey -> 3 channels, resize to
``image_size``), applies the application's own preprocessing, runs the backbone
with frozen, inference-mode BatchNorm when the weights are pretrained (see set_trainable)
and ends in a new Dense head with the dataset's class count. ``weights`` is ''
(random init), 'imagenet' (Keras downloads it on a machine with internet, or finds
it in ~/.keras/models) or the path of a weights file (the application's 'notop' file).
Feature taps: ``stage1``..``stage4`` (the backbone's outputs at strides 4, 8, 16, 32) and
``pooled``.
"""

import functools
import os

import keras

from kd_research.common.errors import UserError
from kd_research.models import registry

APPLICATIONS = {
    "resnet50_keras": ("ResNet50", "resnet50", 224),  # resnet50: the torchvision layout
    "mobilenetv2": ("MobileNetV2", "mobilenet_v2", 224),
    "efficientnetb0": ("EfficientNetB0", "efficientnet", 224),
}
# The backbone layers whose outputs are the stage taps stage1..stage4 (strides 4, 8, 16, 32).
STAGE_LAYERS = {
    "resnet50_keras": ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out",
                       "conv5_block3_out"),
    "mobilenetv2": ("block_2_add", "block_5_add", "block_12_add", "out_relu"),
    "efficientnetb0": ("block2b_add", "block3b_add", "block5c_add", "top_activation"),
}
BACKBONE_NAME = "backbone"


@keras.saving.register_keras_serializable(package="kd_research")
class GreyToRGB(keras.layers.Layer):
  """Repeats a single channel three times (pretrained backbones expect RGB)."""

  def call(self, x):
    return keras.ops.concatenate([x, x, x], axis=-1) if x.shape[-1] == 1 else x


@keras.saving.register_keras_serializable(package="kd_research")
class AppPreprocess(keras.layers.Layer):
  """The application's preprocess_input on 0..255 RGB images, as a serialisable layer."""

  def __init__(self, module_name, **kwargs):
    super().__init__(**kwargs)
    self.module_name = module_name

  def call(self, x):
    module = getattr(keras.applications, self.module_name)
    return module.preprocess_input(x)

  def get_config(self):
    return dict(super().get_config(), module_name=self.module_name)


@keras.saving.register_keras_serializable(package="kd_research")
class KeepTaps(keras.layers.Layer):
  """Returns its first input; the others (stage taps) stay in the functional graph, which
  keeps only layers on a path to the outputs."""

  def call(self, inputs):
    return inputs[0]

  def compute_output_shape(self, input_shapes):
    return input_shapes[0]


def _weights_arg(weights, app_name):
  if weights in ("", "none", None):
    return None
  if weights == "imagenet":
    return "imagenet"
  if not os.path.isfile(weights):
    raise UserError(f"{app_name}: weights file {weights!r} does not exist; give '' (random), "
                    "'imagenet' or the path of the application's no-top .h5 weights file.")
  return weights


def build_application(name, input_shape, num_classes, image_size=None, weights=""):
  """Builds the ``name`` application teacher (see module docstring)."""
  app_name, module_name, default_size = APPLICATIONS[name]
  size = image_size or default_size
  if size < 32:
    raise UserError(f"{name}: image_size must be >= 32 for keras.applications, got {size}.")
  try:
    backbone = getattr(keras.applications, app_name)(
        include_top=False, weights=_weights_arg(weights, app_name),
        input_shape=(size, size, 3), pooling="avg", name=BACKBONE_NAME)
  except UserError:
    raise
  except Exception as e:  # Download failures surface as several exception types.
    if weights != "imagenet":
      raise UserError(f"{name}: cannot load weights {weights!r}: {e}")
    raise UserError(
        f"{name}: weights='imagenet' need a download that failed ({type(e).__name__}: "
        f"{str(e)[:200]}). Offline, copy the application's no-top weights file (as Keras names "
        f"it, e.g. from a machine with internet: ~/.keras/models/) to ~/.keras/models/ here, or "
        f"pass its path: --config.teacher.weights=/path/to/{module_name}_..._notop.h5.")
  if _weights_arg(weights, app_name) is None:
    # Trained from scratch: the applications' BatchNorm momentum (0.999 for MobileNetV2)
    # leaves the moving statistics near their initial values after a short CPU run, and
    # inference-mode accuracy at chance; 0.9 lets them track the batches.
    for layer in backbone.layers:
      if isinstance(layer, keras.layers.BatchNormalization):
        layer.momentum = 0.9
  inputs = keras.Input(shape=input_shape)
  x = GreyToRGB()(inputs)
  if x.shape[1] != size or x.shape[2] != size:
    x = keras.layers.Resizing(size, size)(x)
  x = AppPreprocess(module_name)(x)
  # One nested backbone with its stage outputs and the pooled feature as outputs, so that
  # feature methods tap stage1..stage4 of a pretrained teacher from the same forward pass.
  backbone = keras.Model(backbone.inputs, [backbone.get_layer(n).output for n in
                                           STAGE_LAYERS[name]] + list(backbone.outputs),
                         name=BACKBONE_NAME)
  *stages, pooled = backbone(x)  # BatchNorm mode: see set_trainable.
  stages = [keras.layers.Identity(name=f"stage{i + 1}")(s) for i, s in enumerate(stages)]
  x = KeepTaps()([keras.layers.Identity(name="pooled")(pooled)] + stages)
  logits = keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)
  return keras.Model(inputs, logits, name=name)


for _name in APPLICATIONS:
  registry.register(_name, functools.partial(build_application, _name), pretrained=True)


def set_trainable(model, phase, unfreeze_top=0, freeze_batchnorm=True):
  """Sets which variables train; returns True when the model has a backbone.

  phase 'head': only the head trains; 'finetune': the backbone too (its top
  ``unfreeze_top`` layers, or all of it when 0). With ``freeze_batchnorm`` (pretrained
  weights) the backbone's BatchNormalization layers stay frozen, which in Keras 3 also
  means inference mode: their ImageNet statistics are kept instead of being replaced
  by the statistics of small, differently distributed batches. A randomly initialised
  backbone has no statistics worth keeping, so its BatchNorm trains normally.
  """
  try:
    backbone = model.get_layer(BACKBONE_NAME)
  except ValueError:
    return False
  backbone.trainable = phase == "finetune"
  if phase == "finetune":
    for layer in backbone.layers[:-unfreeze_top] if unfreeze_top else ():
      layer.trainable = False
    if freeze_batchnorm:
      for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
          layer.trainable = False
  return True
