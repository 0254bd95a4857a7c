"""Feature taps: intermediate outputs of a Keras functional model, from the same forward pass
as its logits.

``feature_model(model, names)`` is a Keras model sharing every layer (and variable) of
``model`` whose outputs are the logits followed by the named layers' outputs: one
forward pass serves the classifier and every tap. The registry's models name their
stage outputs ``stage1``, ``stage2``, ... and the pooled feature ``pooled``
(models/article.py, cifar.py); keras.applications teachers have ``pooled``. Any other layer of the
model's top-level graph can be named instead. Most registry models also tap each stage's
pre-activation, ``stage<i>_preact`` (the tensor whose ReLU is the stage output: OFD and
ReviewKD read it), and name ``stage<i>_preact_bn`` the BatchNorm that shapes it.
"""

import keras

from kd_research.common.errors import UserError

# Checks a model family registers for saved models whose taps no longer mean what they
# name (check(model) -> a message, or None); run before any tap is read.
_LAYOUT_CHECKS = []


def register_layout_check(check):
  """Adds ``check(model) -> str | None`` to the checks ``feature_model`` runs."""
  _LAYOUT_CHECKS.append(check)


def stage_names(model):
  """The model's stage taps in order (``stage1``, ``stage2``, ...), possibly empty."""
  names = {layer.name for layer in model.layers}
  return tuple(f"stage{i}" for i in range(1, 100) if f"stage{i}" in names)


def preact(stage):
  """The pre-activation tap of ``stage`` ('stage2' -> 'stage2_preact')."""
  return f"{stage}_preact"


def require_preact(model, stages, what, method):
  """The pre-activation taps of ``stages`` on ``model``; UserError naming the model and
  the method when it has none (user models can name their own layers this way)."""
  names = {layer.name for layer in model.layers}
  missing = [s for s in stages if preact(s) not in names]
  if missing:
    raise UserError(
        f"config.distill.method={method} reads the {what}'s pre-activation taps, and model "
        f"{model.name} has no {', '.join(preact(s) for s in missing)}. The registry's ResNets, "
        "WRNs, VGGs, MobileNets, resnet_article and cnn_article have them (a model file saved "
        "before they existed does not: retrain it); in your own model name the tensor before a "
        "stage's last ReLU '<stage>_preact' (e.g. keras.layers.Identity(name='stage2_preact')).")
  return [preact(s) for s in stages]


def preact_batch_norm(model, stage):
  """The BatchNormalization layer named ``<stage>_preact_bn`` of ``model``, or None."""
  names = {layer.name for layer in model.layers}
  name = f"{stage}_preact_bn"
  return model.get_layer(name) if name in names else None


def resolve(model, name, what):
  """A tap name: ``name`` itself, 'last_stage' / 'middle_stage' / 'penultimate_stage' /
  'pooled' resolved on ``model``. Raises UserError naming the missing layer and the
  available ones."""
  stages = stage_names(model)
  if name == "last_stage" and stages:
    return stages[-1]
  if name == "middle_stage" and stages:  # stage2 of 3 (RepDistiller's hint layer 2 of 0-4)
    return stages[(len(stages) - 1) // 2]
  if name == "penultimate_stage" and len(stages) >= 2:  # the stage before the last (USKD)
    return stages[-2]
  if name == POOLED_MAP:
    pooled_map(model)  # UserError naming what is missing
    return name
  if name in {layer.name for layer in model.layers}:
    return name
  raise UserError(f"{what}: model {model.name} has no layer {name!r} to tap. Standard taps "
                  f"of this model: {', '.join(stages + ('pooled',))}; any top-level layer "
                  f"name works too (e.g. {', '.join(l.name for l in model.layers[-4:])}). "
                  "A teacher saved before feature taps existed has none: retrain it.")


# The map that a model's 'pooled' feature averages (SDD pools it at several scales and
# applies the model's own classifier to each region): not a layer of its own, so a name here.
POOLED_MAP = "pooled_map"


def pooled_map(model):
  """The [B, H, W, C] tensor whose global average pooling is ``model``'s 'pooled' tap, when
  its logits layer reads 'pooled' directly (logits = Dense(GAP(map))); else UserError."""
  names = {layer.name for layer in model.layers}
  pooled = model.get_layer("pooled") if "pooled" in names else None
  logits = model.get_layer("logits") if "logits" in names else None
  gap = [layer for layer in model.layers
         if isinstance(layer, keras.layers.GlobalAveragePooling2D) and pooled is not None
         and layer.output is pooled.input]
  if not (gap and logits is not None and logits.input is pooled.output):
    raise UserError(
        f"model {model.name} has no map whose global average pooling feeds its classifier "
        "(a GlobalAveragePooling2D -> Identity 'pooled' -> Dense 'logits'), which SDD "
        "applies at several scales. The registry's CNNs (CIFAR, ImageNet, resnet_article, "
        "cnn_article) have it; a ViT or the MLP does not.")
  return gap[0].input


def _output(model, name):
  return pooled_map(model) if name == POOLED_MAP else model.get_layer(name).output


def feature_model(model, names):
  """A model with outputs [logits, *the named taps], sharing ``model``'s layers."""
  if not names:
    return model
  for check in _LAYOUT_CHECKS:
    message = check(model)
    if message:
      raise UserError(message)
  outputs = [_output(model, name) for name in names]
  return keras.Model(model.inputs, [model.outputs[0]] + outputs, name=f"{model.name}_taps")


def shape(model, name):
  """The output shape of a tap, without the batch dimension."""
  return tuple(_output(model, name).shape[1:])
