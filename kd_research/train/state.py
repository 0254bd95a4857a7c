"""Training state, built once: model, optimizer, step, train time, the objectives' own
variables, and the checkpoint that saves and restores all of them.

Everything with state is created inside ``strategy.scope()``. Restoring falls back to
the newest checkpoint that reads: a checkpoint cut short (a full disk, a killed copy)
is skipped with a warning naming it and why, instead of ending the run.
"""

import dataclasses
import os
import tempfile

from absl import logging
import tensorflow as tf

from kd_research.common.errors import UserError

# Errors that mean "this checkpoint's files are damaged", not "another model's checkpoint".
_UNREADABLE = (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.NotFoundError,
               IndexError, EOFError)


@dataclasses.dataclass
class TrainState:
  """What a run trains and saves; ``extra`` holds the objectives' variables (tf.Module)."""
  model: object
  optimizer: object
  step: tf.Variable
  train_seconds: tf.Variable
  extra: tf.Module
  checkpoint: tf.train.Checkpoint
  manager: tf.train.CheckpointManager

  @property
  def current_step(self):
    return int(self.step.numpy())

  def save(self):
    """Saves a checkpoint numbered by the step (a collective under multi-worker)."""
    return self.manager.save(checkpoint_number=self.current_step)


def build(strategy, model_fn, optimizer_fn, extra_variables_fn, workdir, keep, chief,
          model_name="model"):
  """Creates the state in ``strategy.scope()`` and restores the newest readable checkpoint.

  Args:
    model_fn: () -> Keras model, with every variable that will ever train trainable.
    optimizer_fn: () -> optimizer (built here for the model's and the extras' variables).
    extra_variables_fn: (model) -> list of the objectives' variables (created in
      the scope, after the model: the model's initial weights come first from the RNG).
    workdir: run directory; the chief's checkpoints live in workdir/checkpoints. Other
      workers save into a temporary directory (saving is a collective) and restore the
      chief's.
    keep: how many checkpoints to keep.
    chief: whether this process is the chief.
    model_name: how error messages name the model (e.g. the registry name).
  """
  with strategy.scope():
    model = model_fn()
    extra = tf.Module()
    extra.variables_list = list(extra_variables_fn(model))
    optimizer = optimizer_fn()
    optimizer.build(list(model.trainable_variables)
                    + [v for v in extra.variables_list if v.trainable])
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step,
                                     train_seconds=seconds, objective=extra)
  chief_dir = os.path.join(workdir, "checkpoints")
  directory = chief_dir if chief else tempfile.mkdtemp(prefix="kd_worker_ckpt_")
  manager = tf.train.CheckpointManager(checkpoint, directory, max_to_keep=keep)
  state = TrainState(model, optimizer, step, seconds, extra, checkpoint, manager)
  restore_newest_readable(state, chief_dir, model_name)
  return state


def restore_newest_readable(state, checkpoint_dir, model_name="model"):
  """Restores the newest checkpoint in ``checkpoint_dir`` that reads; returns its path or None.

  A damaged checkpoint (truncated or missing data) is skipped with a warning; a
  checkpoint of another model is refused (the workdir holds another run).
  """
  listed = tf.train.get_checkpoint_state(checkpoint_dir)
  paths = list(listed.all_model_checkpoint_paths) if listed else []
  skipped = []
  for path in reversed(paths):
    if not tf.io.gfile.exists(path + ".index"):
      skipped.append((path, "its index file is missing"))
      continue
    try:
      state.checkpoint.restore(path).assert_existing_objects_matched()
    except _UNREADABLE as e:
      skipped.append((path, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
      continue
    except (ValueError, AssertionError, tf.errors.OpError) as e:
      raise UserError(f"Checkpoint {path} does not fit the configured {model_name} model "
                      f"({str(e).splitlines()[0][:300]}). The workdir holds another model's "
                      "run: use a new --workdir, or --overwrite to discard it.")
    for bad, why in skipped:
      logging.warning("Skipped damaged checkpoint %s (%s); resumed from the older %s.", bad,
                      why, path)
    logging.info("Resumed from %s at step %d.", path, state.current_step)
    return path
  if skipped:
    listing = "; ".join(f"{p} ({why})" for p, why in skipped)
    raise UserError(f"No checkpoint in {checkpoint_dir} can be read: {listing}. Rerun with "
                    "--overwrite to start the run again.")
  return None
