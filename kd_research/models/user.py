"""Models from the user's own code: ``package.module:function`` specs and ``.keras`` files.

A spec names a function the user wrote that builds a Keras model; it is called as
``function(input_shape=..., num_classes=..., **kwargs)`` with the data's image shape and
class count and the entry's ``kwargs`` (a JSON object, ``--config.student.kwargs='{"depth":
3}'``). The module is imported from ``sys.path`` (``./launch.sh`` puts the directory it was
called from first, so a module beside the user's shell works). What comes back is checked
like a registry model: a Keras model taking that shape and returning ``num_classes``
logits. Taps are read by layer name (``taps.py``), so a user model that names no stages
serves every method that taps a named layer or ``pooled`` when it has one.

A ``.keras`` file as an entry's ``init`` (``registry.load_start``) starts a model from that
file's architecture and weights (a pretrained or pruned student, or one built in a notebook).
"""

import hashlib
import importlib
import inspect
import json

from kd_research.common.errors import UserError


def is_spec(name):
  """True for ``package.module:function`` (a user's builder), False for a registry name."""
  return ":" in str(name)


def parse_kwargs(text, where):
  """The entry's ``kwargs`` JSON object as a dict ('' = none); UserError on anything else."""
  if not text:
    return {}
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise UserError(f"{where}={text!r} is not JSON ({e.msg}); give an object such as "
                    "'{\"depth\": 3, \"dropout\": 0.1}'.") from None
  if not isinstance(value, dict):
    raise UserError(f"{where}={text!r} must be a JSON object of keyword arguments such as "
                    "'{\"depth\": 3}', not a {type(value).__name__}.")
  return value


def builder_of(spec):
  """The function a ``module:function`` spec names; UserError naming what is missing."""
  module_name, _, function_name = str(spec).partition(":")
  if not module_name or not function_name:
    raise UserError(f"model {spec!r}: a user model is 'package.module:function' (both parts).")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    raise UserError(f"model {spec!r}: cannot import module {module_name!r} ({e}). It must be "
                    "importable: run from the directory that holds it, or add that directory "
                    "to PYTHONPATH.") from None
  function = getattr(module, function_name, None)
  if not callable(function):
    found = sorted(n for n, v in vars(module).items() if inspect.isfunction(v)
                   and not n.startswith("_") and v.__module__ == module.__name__)
    raise UserError(f"model {spec!r}: module {module_name} has no function {function_name!r}; "
                    f"its functions: {', '.join(found) or 'none'}.")
  return function


def import_modules(specs):
  """Imports the modules of the user specs among ``specs``, so that custom layers they
  register (``keras.saving.register_keras_serializable``) load from saved files."""
  for spec in specs:
    if is_spec(spec):
      builder_of(spec)


def build(spec, input_shape, num_classes, kwargs):
  """Calls the user's function and checks the model it returns against the data."""
  import keras  # pylint: disable=g-import-not-at-top
  function = builder_of(spec)
  try:
    model = function(input_shape=tuple(input_shape), num_classes=int(num_classes), **kwargs)
  except TypeError as e:
    raise UserError(f"model {spec!r}: calling it with input_shape, num_classes and kwargs "
                    f"{sorted(kwargs)} failed: {e}. A user model function takes "
                    "input_shape=(H, W, C) and num_classes=N as keywords.") from None
  if not isinstance(model, keras.Model):
    raise UserError(f"model {spec!r} returned a {type(model).__name__}, not a keras.Model.")
  check_against_data(model, f"model {spec!r}", input_shape, num_classes)
  return model


def check_against_data(model, what, input_shape, num_classes):
  """A model that takes the data's images and returns one logit per class."""
  got_shape = tuple(model.input_shape[1:]) if len(model.inputs) == 1 else None
  if got_shape != tuple(input_shape):
    raise UserError(f"{what} takes inputs of shape {got_shape}; the data's images are "
                    f"{tuple(input_shape)} (one input, raw pixel values in [0, 255]).")
  if not isinstance(model.output_shape, tuple) or model.output_shape[-1] != num_classes:
    raise UserError(f"{what} outputs {model.output_shape}; the data has {num_classes} classes "
                    "(the first output must be [batch, classes] logits).")
  check_returns_logits(model, what)


def _softmax_layer(model):
  """The name of the model's last layer when it is a softmax (a Softmax or
  Activation('softmax') layer, or a layer built with activation='softmax'), else None."""
  import keras  # pylint: disable=g-import-not-at-top
  if not model.layers:
    return None
  last = model.layers[-1]
  activation = getattr(last, "activation", None)
  if isinstance(last, keras.layers.Softmax) or getattr(activation, "__name__", "") == "softmax":
    return last.name
  return None


def check_returns_logits(model, what):
  """UserError when ``model`` returns probabilities instead of logits: its last layer is a
  softmax, or its outputs on a probe batch are non-negative rows that sum to 1. Distilling
  them would soften probabilities (softmax(p / T) of values in [0, 1] is nearly uniform) and
  take their CE as if they were logits, with no error: Keras' own losses warn here too."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  layer = _softmax_layer(model)
  if layer is None:
    probe = np.random.default_rng(0).uniform(0, 255, (4,) + tuple(model.input_shape[1:]))
    outputs = model(probe.astype(np.float32), training=False)
    outputs = np.asarray(outputs[0] if isinstance(outputs, (list, tuple)) else outputs)
    if not (np.all(outputs >= 0) and np.allclose(outputs.sum(-1), 1.0, atol=1e-4)):
      return
  found = (f"its last layer {layer!r} is a softmax" if layer else
           "its outputs on a probe batch are non-negative and sum to 1 per row")
  raise UserError(f"{what} returns probabilities, not logits: {found}. Distillation softens "
                  "logits (softmax(z / T)); given probabilities it would soften them again and "
                  "train on the wrong targets, silently. Return logits: build the last layer "
                  "without activation='softmax' (or drop the Softmax layer), and apply "
                  "keras.activations.softmax at prediction time if you need probabilities.")


def file_digest(path):
  """SHA-256 of a file (a student's starting point is part of its run's identity)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()
