"""One run end to end: resolve it, train its phases, evaluate, write its results.

``train_and_evaluate`` is the one entry for a teacher, a labels-only student or a
distilled student (resolve.py builds the run, driver.py trains it). A finished run
(results.json, same identity) is reported, not retrained; an interrupted one resumes from
its newest checkpoint.
"""

import contextlib
import functools
import os
import shutil
import tempfile

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from kd_research import config as config_lib
from kd_research import run_spec
from kd_research.common import fileio
from kd_research.common import machine
from kd_research.common import timing
from kd_research.common.errors import Preempted
from kd_research.common.errors import UserError
from kd_research.data import augment
from kd_research.data import views as views_lib
from kd_research.data import datasets
from kd_research.runtime import distribute
from kd_research.runtime import precision
from kd_research.runtime import preemption
from kd_research.train import driver as driver_lib
from kd_research.models import registry as model_registry
from kd_research.train import evaluation
from kd_research.train import resolve as resolve_lib
from kd_research.train import results as results_lib
from kd_research.train import summaries
from kd_research.train import teacher_sources
from kd_research.train import teachers as teachers_lib
from kd_research.train import workdir as workdir_lib

ROLES = ("teacher", "student", "distill")


CLASSES_FILE = "classes.json"


def train_and_evaluate(config, workdir, role, strategy, teacher_paths=(), overwrite=False):
  """Trains one model (``role``: teacher | student | distill) in ``workdir``; returns results."""
  if role not in ROLES:
    raise UserError(f"Unknown role {role!r}; valid: {', '.join(ROLES)}.")
  chief = distribute.is_chief(strategy)
  # 'auto' resolves before identity, loss scaling and cache fingerprint use it: a run resumed
  # on another kind of CPU is refused rather than silently continued in another precision.
  choice = precision.choose(config.mixed_precision)
  if choice.requested != "none":  # Said only where a choice was made.
    logging.info("Precision: %s (%s: %s).", choice.used, choice.requested, choice.reason)
  if choice.requested != choice.used:
    config = config_lib.replaced(config, mixed_precision=choice.used)
  spec = run_spec.parse(config)  # Checked before anything is written.
  for k, path in enumerate(teacher_paths):  # A missing or cut file: before config.json too.
    teachers_lib.check_teacher_file(path, f"teacher {k}")
  identity = workdir_lib.run_identity(config, role, teacher_paths)
  if chief:
    fileio.check_writable(workdir)
  with workdir_lib.RunLock(workdir) if chief else contextlib.nullcontext():
    finished = workdir_lib.prepare(workdir, identity, overwrite, write=chief)
    if finished is not None:
      logging.info("%s: already finished (test accuracy %.4f); not retraining.", workdir,
                   finished["test_accuracy"])
      return finished
    _check_strategy(config, strategy)
    splits = datasets.load_splits(spec.data)
    if chief and splits.classes:  # A file source: which label is which class.
      fileio.atomic_write_json(os.path.join(workdir, CLASSES_FILE),
                               {"source": splits.source, "classes": list(splits.classes)})
    if config.deterministic:
      tf.config.experimental.enable_op_determinism()
    precision.set_policy(choice.used)
    keras.utils.set_random_seed(resolve_lib.entry_of(config, role).seed)
    try:
      with preemption.Guard(strategy) as guard:  # SIGTERM from here on: save, then stop.
        run = resolve_lib.resolve(spec, workdir, role, strategy, splits, tuple(teacher_paths),
                                  chief)
        results = _train(run, guard)
    finally:
      precision.set_policy("none")
    results.precision = choice.as_dict()
    results = _write(run, results)
    if guard.requested():  # SIGTERM after the last loop boundary: stop the caller too.
      raise Preempted(results["steps"], results_lib.path(workdir),
                      finished=True)
  return results


def _check_strategy(config, strategy):
  replicas = strategy.num_replicas_in_sync
  if config.global_batch_size % replicas:
    raise UserError(f"config.global_batch_size={config.global_batch_size} is not divisible by "
                    f"the {replicas} replicas of this strategy; use a multiple of {replicas}.")
  if config.run.checkpoint_every_seconds and isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    raise UserError("config.run.checkpoint_every_seconds works only in single-process runs: "
                    "workers would disagree on when to save (a collective). Use "
                    "config.run.checkpoint_every_steps with multi_worker.")


def _train(run, guard):
  """Runs the phases with validation and summaries; returns the final ResultsRecord."""
  config, strategy = run.config, run.strategy
  writer = summaries.Summaries(run.workdir, enabled=run.chief)
  writer.hparams(summaries.run_hparams(config_lib.flatten(workdir_lib.run_identity(
      config, run.role, run.teachers.paths if run.teachers else ()))),
      summaries.trial_id(fileio.portable_command(os.path.abspath(run.workdir))))
  teacher_arg = None
  if run.teachers:
    writer.scalars(0, evaluation.teacher_scalars(run.teachers.report))
    teacher_arg = (run.teachers.final_temperature, run.spec.distill.combine,
                   list(run.teachers.report["weights"]))
  evaluator = evaluation.Evaluator(
      strategy, run.state.model, run.splits.num_classes,
      evaluation.eval_batch_size(config.run.eval_batch_size, strategy), teacher_arg)
  last_validation = {}

  def validate(step):
    last_validation.update(step=step, result=_evaluate(run, evaluator, "validation"))
    _log_eval(writer, step, last_validation["result"], "eval")
    logging.info("%s epoch %d: validation accuracy %.4f loss %.4f", run.role,
                 step // run.steps_per_epoch, last_validation["result"]["accuracy"],
                 last_validation["result"]["loss"])

  make_driver(run, writer, validate).run(train_stream(run, writer), guard)
  results = _final_results(run, evaluator, last_validation)
  _log_eval(writer, run.state.current_step, results.test, "test")
  writer.close()
  return results


def make_driver(run, writer, validate=None):
  """The run's driver (its phases, cadence, learning rate, precision options)."""
  config = run.config
  cadence = driver_lib.Cadence(
      run.steps_per_epoch, config.run.steps_per_loop, config.run.log_every_steps,
      config.run.checkpoint_every_steps, config.run.checkpoint_every_seconds,
      config.run.eval_every_epochs)
  return driver_lib.Driver(run.strategy, run.state, run.phases, cadence,
                           config.global_batch_size, writer, validate, run.lr_fn,
                           config.run.jit_compile, config.optimizer.l2, run.entry.seed)


def train_stream(run, writer=None):
  """The distributed training stream from the state's step (augmented, with cached logits);
  ``writer`` gets the first augmented images."""
  config, splits = run.config, run.splits
  per_replica = config.global_batch_size // run.strategy.num_replicas_in_sync
  augment.validate(run.spec.augment, splits.input_shape, per_replica)
  extra = resolve_lib.run_views(run.spec, run.role)
  for _, view_ops in extra:
    augment.validate(run.spec.augment, splits.input_shape, per_replica, view_ops)
  transform = resolve_lib.augmentation(run.spec, run.entry.seed, splits, run.role)
  extras = {}
  if run.teachers and run.teachers.train_outputs is not None:
    extras.update(teacher_sources.cache_extras(run.teachers.train_outputs))
  if run.labelled is not None:
    extras["labelled"] = run.labelled
  train_fn = functools.partial(run.train.train_fn, config.global_batch_size,
                               seed=run.entry.seed, transform=transform, extras=extras or None,
                               threads=config.run.data_threads, repeats=config.augment.repeats)
  step = run.state.current_step
  if step == 0 and transform is not None and writer is not None:
    first = next(iter(train_fn()(tf.distribute.InputContext())))
    writer.images(0, "train/augmented_examples", first["image"][:16] / 255.0)
    for name, _ in extra:
      writer.images(0, f"train/{views_lib.field(name)}_examples",
                    first[views_lib.field(name)][:16] / 255.0)
  return iter(run.strategy.distribute_datasets_from_function(train_fn(start_step=step)))


def _evaluate(run, evaluator, split):
  return evaluator(getattr(run.splits, split),
                   run.teachers.logits[split] if run.teachers else None)


def _log_eval(writer, step, result, prefix):
  """eval/* (validation) or test/* scalars, distill/* agreement and KL, the confusion image."""
  metrics = {f"{prefix}/accuracy": result["accuracy"], f"{prefix}/loss": result["loss"],
             f"{prefix}/ece": result["ece"]}
  if "agreement" in result:
    tag = "" if prefix == "eval" else f"{prefix}_"
    metrics.update({f"distill/{tag}agreement": result["agreement"],
                    f"distill/{tag}kl": result["kl"]})
  writer.scalars(step, metrics)
  if prefix == "eval":
    writer.images(step, "eval/confusion_matrix",
                  summaries.confusion_image(np.asarray(result["confusion"]))[None])


def _final_results(run, evaluator, last_validation):
  """Test-split evaluation (once, at the end), validation accuracy, size and latency."""
  test = _evaluate(run, evaluator, "test")
  step = run.state.current_step
  validation = (last_validation["result"] if last_validation.get("step") == step
                else _evaluate(run, evaluator, "validation"))
  model, shape, entry = run.state.model, run.splits.input_shape, run.entry
  repeats = run.config.run.latency_repeats
  extra = run.state.extra.variables_list
  results = results_lib.ResultsRecord(
      role=run.role, model=entry.model, width=entry.width, seed=entry.seed,
      params=int(model.count_params()), test_accuracy=test["accuracy"],
      test_loss=test["loss"], test_count=test["count"], test=test,
      validation_accuracy=validation["accuracy"], steps=step, epochs=entry.epochs,
      train_seconds=float(run.state.train_seconds.numpy()),
      ms_per_batch_128=timing.inference_ms_per_batch(model, shape, 128, repeats),
      ms_per_batch_1=timing.inference_ms_per_batch(model, shape, 1, repeats),
      replicas=run.strategy.num_replicas_in_sync, dataset=run.config.dataset,
      workdir=os.path.abspath(run.workdir), machine=machine.describe(),
      # Connectors and other objective variables: trained, never exported.
      extra_params=int(sum(np.prod(v.shape) for v in extra)),
      extra_trainable_params=int(sum(np.prod(v.shape) for v in extra if v.trainable)))
  if run.splits.classes:  # A file source.
    results.data = {"examples": {name: getattr(run.splits, name).num_examples
                                 for name in ("train", "validation", "test")},
                    "skipped_corrupt": dict(run.splits.skipped)}
  results.members = evaluation.evaluate_members(run.state.model, run.strategy, run.splits,
                                                run.config.run.eval_batch_size)
  if run.teachers:
    results.method = run.config.distill.method
    results.teachers = run.teachers.report
    results.test_agreement = test["agreement"]
    results.teacher_test_accuracy = run.teachers.report["test"]["ensemble_accuracy"]
  logging.info("%s finished: test accuracy %.4f over %d examples.", run.role, test["accuracy"],
               test["count"])
  return results


def _write(run, results):
  """The chief exports the model and writes results.json; other workers clean up. Returns
  the results as a dict."""
  saved_model = run.config.run.saved_model
  if run.chief:
    _export(run.state.model, run.workdir, saved_model)
    return results_lib.write(run.workdir, results)
  scratch = tempfile.mkdtemp(prefix="kd_worker_export_")
  # Saving may need every worker; the copy is thrown away.
  _export(run.state.model, scratch, saved_model)
  for path in (run.state.manager.directory, scratch):
    shutil.rmtree(path, ignore_errors=True)
  return results.as_dict()


def _export(model, workdir, saved_model):
  """Saves the trained model as RUN/model.keras and (``saved_model``) RUN/saved_model, each
  atomically."""
  fileio.atomic_save_keras(model, os.path.join(workdir, "model.keras"))
  for member in model_registry.members(model):  # A cohort's members, each a model of its own.
    fileio.atomic_save_keras(member, workdir_lib.member_path(workdir, member.name))
  if saved_model:
    fileio.atomic_save_dir(os.path.join(workdir, "saved_model"),
                           lambda d: model.export(d, verbose=False))

