"""Frozen teachers: loading, checking against the data, and running them as one ensemble."""

import math
import os
import zipfile

import numpy as np
import tensorflow as tf

from kd_research.models import registry as model_registry
from kd_research.models import user as user_models
from kd_research.common.errors import UserError


class TeacherEnsemble:
  """K frozen Keras teachers; ``logits(x)`` returns their stacked [K, B, C] float32 logits.

  The tuple of teachers is fixed at construction, before any step is traced, so
  a traced step can never silently keep an older teacher list (a traced function
  closes over the Python objects it saw when it was traced).
  """

  def __init__(self, teacher_models, names, paths=None):
    self.models = tuple(teacher_models)
    self.names = tuple(names)
    self.paths = tuple(paths) if paths else self.names
    for model in self.models:
      model.trainable = False

  def __len__(self):
    return len(self.models)

  def logits(self, images):
    """Inference-mode logits of every teacher, outside any gradient tape's reach."""
    return tf.stop_gradient(tf.stack(
        [tf.cast(m(images, training=False), tf.float32) for m in self.models]))

  def tap(self, taps):
    """Builds (once, before tracing) each teacher's model with the feature ``taps``."""
    from kd_research.models import taps as taps_lib  # pylint: disable=g-import-not-at-top
    for model, path in zip(self.models, self.paths):
      for name in taps:
        taps_lib.resolve(model, name, f"teacher {path}")
    self._tapped = tuple(taps_lib.feature_model(m, taps) for m in self.models)
    self._taps = tuple(taps)
    return self

  def outputs(self, images, taps):
    """{'logits': [K, B, C], 'features': [{tap: tensor} per teacher]}, inference mode, one
    forward pass per teacher; ``tap(taps)`` must have been called first."""
    if tuple(taps) != getattr(self, "_taps", None):
      raise ValueError(f"teacher taps {taps} were not prepared with tap()")
    logits, features = [], []
    for model in self._tapped:
      out = model(images, training=False)
      logits.append(tf.cast(out[0], tf.float32))
      features.append({name: tf.stop_gradient(tf.cast(f, tf.float32))
                       for name, f in zip(taps, out[1:])})
    return {"logits": tf.stop_gradient(tf.stack(logits)), "features": features}


def check_teacher_file(path, name="teacher"):
  """UserError unless ``path`` names an existing, whole ``.keras`` file: checked before a
  run writes anything, and again when the teacher loads."""
  if not path:
    raise UserError(f"{name}: no path given; set --config.teacher.path=RUN/model.keras or run "
                    "the 'pipeline' command, which trains the teacher first.")
  if not os.path.exists(path):
    raise UserError(f"{name}: teacher file {path} does not exist.")
  if not path.endswith(".keras"):
    raise UserError(f"{name}: {path} is not a .keras file (saved by this project's runs as "
                    "RUN/model.keras).")
  if not zipfile.is_zipfile(path):
    raise UserError(f"{name}: teacher {path} is truncated or not a .keras file: a .keras file "
                    f"is a zip archive, this one ({os.path.getsize(path)} bytes) is not. "
                    "Copy it again, or retrain the teacher.")


def load_teacher(path, input_shape, num_classes, name="teacher"):
  """Loads a teacher saved as ``.keras`` and checks its input shape and class count."""
  check_teacher_file(path, name)
  try:
    # safe_mode (the default, stated here on purpose) refuses Lambda layers holding
    # Python bytecode: loading a teacher file never runs code from it.
    model = model_registry.load_keras(path)
  except Exception as e:  # Keras raises many types on a corrupt or foreign file.
    raise UserError(f"{name}: cannot load teacher {path}: {type(e).__name__}: {e}")
  check_finite_weights(model, path, name)
  got_shape = tuple(model.input_shape[1:])
  if got_shape != tuple(input_shape):
    raise UserError(f"{name}: teacher {path} takes inputs of shape {got_shape}, but the data "
                    f"has images of shape {tuple(input_shape)}.")
  got_classes = model.output_shape[-1]
  if got_classes != num_classes:
    raise UserError(f"{name}: teacher {path} predicts {got_classes} classes, but the data has "
                    f"{num_classes}.")
  user_models.check_returns_logits(model, f"{name}: teacher {path}")
  return model


def check_finite_weights(model, path, name="teacher"):
  """Refuses a model with NaN or infinite weights (a diverged or corrupted teacher file)."""
  bad = [(v.path, int(np.size(v)) - int(np.isfinite(v.numpy()).sum())) for v in model.weights
         if not np.all(np.isfinite(v.numpy()))]
  if bad:
    listing = ", ".join(f"{p} ({n} values)" for p, n in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise UserError(f"{name}: teacher {path} has non-finite (NaN or inf) weights in "
                    f"{len(bad)} variable(s): {listing}{more}. The run that saved it diverged or "
                    "the file is corrupt; retrain the teacher or use another file.")


def chance_threshold(labels, num_classes):
  """(chance, required): the majority-class share and the accuracy that is clearly above it.

  Required = chance + max(5 points, 3 binomial standard deviations of a chance-level
  classifier on len(labels) examples).
  """
  counts = np.bincount(np.asarray(labels), minlength=num_classes)
  chance = float(counts.max() / max(counts.sum(), 1))
  sd = math.sqrt(chance * (1 - chance) / max(len(labels), 1))
  return chance, min(1.0, chance + max(0.05, 3 * sd))


def check_above_chance(accuracies, names, labels, num_classes, split="validation"):
  """Refuses teachers whose accuracy on ``split`` is not clearly above chance.

  Args:
    accuracies: each teacher's accuracy on ``labels``.
    names: each teacher's file (for the message).
    labels: the labels the accuracies were measured on.
    num_classes: the class count.
  """
  chance, required = chance_threshold(labels, num_classes)
  weak = [(n, a) for n, a in zip(names, accuracies) if a < required]
  if weak:
    listing = "; ".join(f"{n}: {100 * a:.2f}%" for n, a in weak)
    raise UserError(
        f"Teacher accuracy on the {split} split is not clearly above chance ({listing}; chance "
        f"= the majority class, {100 * chance:.2f}%; required >= {100 * required:.2f}% over "
        f"{len(labels)} images). Distilling from it would teach the student noise: check that "
        "the teacher file belongs to this dataset and finished training. To distil from it on "
        "purpose, set --config.run.allow_weak_teacher=true.")


def load(paths, input_shape, num_classes):
  """Loads every teacher in ``paths`` into one frozen ``TeacherEnsemble``."""
  if not paths:
    raise UserError("A distillation run needs at least one teacher (config.teacher.path).")
  loaded = [load_teacher(p, input_shape, num_classes, name=f"teacher {i}")
            for i, p in enumerate(paths)]
  return TeacherEnsemble(loaded, [os.path.dirname(p) or p for p in paths], tuple(paths))
