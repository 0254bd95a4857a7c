"""One run, resolved: a teacher, a labels-only student or a distilled student.

``train_and_evaluate`` turns (config, role) into what the driver needs (data, training
state, phases with their objectives and teacher sources, learning-rate schedule, hooks for
validation and summaries): the one place that knows roles. A finished run (results.json,
same identity) is reported, not retrained; an interrupted one resumes from its newest checkpoint.
"""

import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
from typing import Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from kd_research.data import augment
from kd_research import config as config_lib
from kd_research.data import datasets
from kd_research.runtime import distribute
from kd_research.train import driver as driver_lib
from kd_research.train import evaluation
from kd_research.common import fileio
from kd_research.common import machine
from kd_research.methods import registry as method_registry
from kd_research.models import registry as model_registry
from kd_research.methods import base as method_base
from kd_research.train import optimizers
from kd_research.runtime import precision
from kd_research.runtime import preemption
from kd_research.models import pretrained
from kd_research.common import schedules
from kd_research.train import state as state_lib
from kd_research.train import summaries
from kd_research.train import teacher_cache
from kd_research.train import teacher_sources
from kd_research.train import teachers as teachers_lib
from kd_research.common import timing
from kd_research import workdir as workdir_lib
from kd_research.common.errors import Preempted
from kd_research.common.errors import UserError

ROLES = ("teacher", "student", "distill")


def train_and_evaluate(config, workdir, role, strategy, teacher_paths=(), overwrite=False):
  """Trains one model (``role``: teacher | student | distill) in ``workdir``; returns results."""
  if role not in ROLES:
    raise UserError(f"Unknown role {role!r}; valid: {', '.join(ROLES)}.")
  chief = distribute.is_chief(strategy)
  # 'auto' resolves before identity, loss scaling and cache fingerprint use it: a run resumed
  # on another kind of CPU is refused rather than silently continued in another precision.
  choice = precision.choose(config.mixed_precision)
  logging.info("Precision: %s (%s: %s).", choice.used, choice.requested, choice.reason)
  if choice.requested != choice.used:
    config = config_lib.replaced(config, mixed_precision=choice.used)
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
    splits = datasets.load_splits(config)
    if config.deterministic:
      tf.config.experimental.enable_op_determinism()
    precision.set_policy(choice.used)
    keras.utils.set_random_seed(_entry(config, role).seed)
    try:
      with preemption.Guard(strategy) as guard:  # SIGTERM from here on: save, then stop.
        run = _resolve(config, workdir, role, strategy, splits, tuple(teacher_paths), chief)
        results = _train(run, guard)
    finally:
      precision.set_policy("none")
    results["precision"] = choice.as_dict()
    _write(run, results)
    if guard.requested():  # SIGTERM after the last loop boundary: stop the caller too.
      raise Preempted(results["steps"], os.path.join(workdir, workdir_lib.RESULTS_FILE),
                      finished=True)
  return results


def _entry(config, role):
  return config.teacher if role == "teacher" else config.student


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


@dataclasses.dataclass
class _Run:
  """Everything resolved for one run (see ``_resolve``)."""
  config: object
  workdir: str
  role: str
  strategy: object
  splits: object
  chief: bool
  entry: object
  steps_per_epoch: int
  phases: list
  lr_fn: object
  state: object
  teachers: Optional["_Teachers"]
  train: tuple            # the training arrays (images, labels) this run iterates over
  labelled: Optional[np.ndarray]  # distillation on a transfer set: 1 where a label exists


@dataclasses.dataclass
class _Teachers:
  """The frozen ensemble, its outputs on validation/test, and its report (once per run)."""
  ensemble: object
  paths: tuple
  weights: Optional[list]
  logits: dict
  report: dict
  train_outputs: Optional[dict]  # the cache: {'logits': [N, K, C], tap: [N, K, D]}
  final_temperature: float


def _resolve(config, workdir, role, strategy, splits, teacher_paths, chief):
  """The run's schedule, teachers, training state and phases."""
  entry = _entry(config, role)
  spe = datasets.steps_per_epoch(len(splits.train[0]), config.global_batch_size)
  total = entry.epochs * spe
  distill_steps = (entry.epochs - config.distill.finetune_epochs) * spe
  head_steps = entry.head_epochs * spe if role == "teacher" else 0
  lr_fn = _learning_rate(config, entry, role, total, head_steps, distill_steps)
  method = {}  # The distillation objective, built with the state (it may own variables).

  def method_variables(model):
    """Teachers and the method's variables, after the student: its initial weights come
    first from the seeded RNG, which the teachers and connectors would otherwise advance."""
    if role != "distill":
      return []
    method["ensemble"] = teachers_lib.load(teacher_paths, splits.input_shape,
                                           splits.num_classes)
    method["objective"] = method_registry.build(
        config.distill, method_registry.parse(config.distill.method), method_base.BuildContext(
            config.distill, model, method["ensemble"].models[0],
            _normalised_weights(config, len(teacher_paths)), spe, distill_steps,
            method_base.TrainingSet(
                len(splits.train[0]),
                None if config.labels.count or config.labels.fraction else splits.train[1],
                config.global_batch_size, entry.seed)))
    return method_registry.build_variables(method["objective"], model, method["ensemble"])

  state = state_lib.build(
      strategy, functools.partial(_build_model, entry, splits), functools.partial(
          optimizers.make_optimizer, config.optimizer, lr_fn,
          (config.loss_scale.initial, config.loss_scale.growth_steps)
          if config.mixed_precision == "fp16" else None),
      method_variables, workdir, config.run.keep_checkpoints, chief, entry.model)
  teachers = None
  if role == "distill":  # Checked and evaluated once, before any student step.
    teachers = _teachers_once(config, workdir, method["ensemble"], teacher_paths, splits,
                              chief, distill_steps, method["objective"].teacher_taps)
  phases = _phases(config, role, entry, state.model, teachers, method.get("objective"),
                   total, head_steps, distill_steps)
  logging.info("%s: %s %s, %d params, %d steps (%d/epoch), %d replica(s), %s.", workdir, role,
               entry.model, state.model.count_params(), total, spe,
               strategy.num_replicas_in_sync, splits.source)
  train, labelled = datasets.transfer_set(config.labels, role, splits.train,
                                      config.global_batch_size)
  return _Run(config, workdir, role, strategy, splits, chief, entry, spe, phases, lr_fn, state,
              teachers, train, labelled)


def _build_model(entry, splits):
  """The model, with every variable that will ever train trainable (the optimizer is built
  for them before tracing; pretrained backbones are frozen again by their phases)."""
  model = model_registry.build(entry.model, splits.input_shape, splits.num_classes, entry.width,
                       entry.sync_bn, entry.image_size, entry.weights)
  pretrained.set_trainable(model, "finetune", entry.unfreeze_top, bool(entry.weights))
  return model


def _learning_rate(config, entry, role, total, head_steps, distill_steps):
  lr_fn = schedules.from_config(config.optimizer.learning_rate, total,
                                "config.optimizer.learning_rate")
  if head_steps:
    lr_fn = optimizers.LRFactorAfter(lr_fn, head_steps, entry.finetune_lr_factor)
  if (role == "distill" and config.distill.finetune_epochs
      and config.distill.finetune_lr_factor != 1.0):
    lr_fn = optimizers.LRFactorAfter(lr_fn, distill_steps, config.distill.finetune_lr_factor)
  return lr_fn


def _normalised_weights(config, num_teachers):
  from kd_research.methods import losses  # pylint: disable=g-import-not-at-top
  return losses.normalise_weights(config_lib.teacher_weights(config), num_teachers)


def _phases(config, role, entry, model, teachers, objective, total, head_steps,
            distill_steps):
  """The run as phases: [head warm-up,] training, or [hint,] distillation [, fine-tuning]."""
  def trainable(mode):
    return functools.partial(pretrained.set_trainable, model, mode, entry.unfreeze_top,
                             bool(entry.weights))

  labels = method_base.Objective()
  if role != "distill":
    name = "teacher" if role == "teacher" else "student"
    head = ([driver_lib.Phase(f"{name} (head only)", head_steps, labels, None,
                              trainable("head"))] if head_steps else [])
    return head + [driver_lib.Phase(name, total, labels, None, trainable("finetune"))]
  taps = objective.teacher_taps
  if teachers.train_outputs is not None:
    source = teacher_sources.cached_teachers_with(taps)
  else:
    source = teacher_sources.live_teachers(
        teachers.ensemble.tap(taps) if taps else teachers.ensemble, taps)
  phases = []
  first = objective.first_stage()
  if first is not None:  # e.g. FitNets' hint stage
    stage, stage_epochs = first
    phases.append(driver_lib.Phase(stage.name, stage_epochs * (total // entry.epochs), stage,
                                   source, trainable("finetune")))
  phases.append(driver_lib.Phase("distill", distill_steps, objective, source,
                                 trainable("finetune")))
  if distill_steps < total:
    phases.append(driver_lib.Phase("finetune", total, labels, None, trainable("finetune")))
  return phases


def _teachers_once(config, workdir, ensemble, paths, splits, chief, distill_steps, taps):
  """Loads what the run needs from its frozen teachers, once, before any student step:
  logits on validation and test, and with the cache their outputs on the training split
  (logits, and the vector features ``taps`` a feature method reads)."""
  weights = config_lib.teacher_weights(config)
  cache_dir = config.run.cache_dir or os.path.join(workdir, "teacher_cache")
  outputs = {}
  for split in ("validation", "test") + (("train",) if config.distill.cache_teacher else ()):
    images = getattr(splits, split)[0]
    split_taps = taps if split == "train" else ()
    if split == "train":
      teacher_cache.refuse_with_augmentation(augment.parse_ops(config.augment.ops))
      teacher_cache.refuse_feature_maps(ensemble, taps)
    digest = teacher_cache.fingerprint(paths, images, config.mixed_precision,
                                       config.distill.combine, split_taps)
    outputs[split] = teacher_cache.load_or_compute_outputs(cache_dir, split, ensemble, images,
                                                           digest, split_taps, write=chief)
  logits = {split: value["logits"] for split, value in outputs.items()}
  final_t = float(schedules.from_config(config.distill.temperature, max(distill_steps, 1),
                                        "config.distill.temperature")(max(distill_steps, 1)))
  labels = {"validation": splits.validation[1], "test": splits.test[1]}
  report = evaluation.teacher_report({s: logits[s] for s in labels}, labels, ensemble.names,
                                     weights, final_t)
  if not config.run.allow_weak_teacher:
    teachers_lib.check_above_chance(report["validation"]["accuracy"], ensemble.paths,
                                    splits.validation[1], splits.num_classes)
  if config.run.stability_ops:
    report["stability"] = evaluation.teacher_stability(
        ensemble, splits.validation[0], logits["validation"],
        augment.parse_ops(config.run.stability_ops), config.augment, weights)
  return _Teachers(ensemble, paths, weights, logits, report, outputs.get("train"), final_t)


def _train(run, guard):
  """Runs the phases with validation and summaries; returns the final results."""
  config, strategy = run.config, run.strategy
  writer = summaries.Summaries(run.workdir, enabled=run.chief)
  writer.hparams(summaries.run_hparams(config_lib.flatten(workdir_lib.run_identity(
      config, run.role, run.teachers.paths if run.teachers else ()))),
      summaries.trial_id(fileio.portable_command(os.path.abspath(run.workdir))))
  teacher_arg = None
  if run.teachers:
    writer.scalars(0, evaluation.teacher_scalars(run.teachers.report))
    teacher_arg = (run.teachers.final_temperature, config.distill.combine,
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

  cadence = driver_lib.Cadence(
      run.steps_per_epoch, config.run.steps_per_loop, config.run.log_every_steps,
      config.run.checkpoint_every_steps, config.run.checkpoint_every_seconds,
      config.run.eval_every_epochs)
  driver = driver_lib.Driver(strategy, run.state, run.phases, cadence, config.global_batch_size,
                             writer, validate, run.lr_fn, config.run.jit_compile,
                             config.optimizer.l2)
  driver.run(_train_iterator(run, writer), guard)
  results = _final_results(run, evaluator, last_validation)
  _log_eval(writer, run.state.current_step, results["test"], "test")
  writer.close()
  return results


def _train_iterator(run, writer):
  """The distributed training stream from the state's step (augmented, with cached logits)."""
  config, splits = run.config, run.splits
  per_replica = config.global_batch_size // run.strategy.num_replicas_in_sync
  ops = augment.validate(config.augment, splits.input_shape, per_replica)
  transform = (functools.partial(augment.augment_batch, ops=ops, cfg=config.augment,
                                 seed=run.entry.seed, num_classes=splits.num_classes,
                                 global_batch_size=config.global_batch_size) if ops else None)
  extras = {}
  if run.teachers and run.teachers.train_outputs is not None:
    extras.update(teacher_sources.cache_extras(run.teachers.train_outputs))
  if run.labelled is not None:
    extras["labelled"] = run.labelled
  train_fn = functools.partial(datasets.train_dataset_fn, *run.train, config.global_batch_size,
                               seed=run.entry.seed, transform=transform, extras=extras or None,
                               threads=config.run.data_threads)
  step = run.state.current_step
  if step == 0 and transform is not None:
    first = next(iter(train_fn()(tf.distribute.InputContext())))
    writer.images(0, "train/augmented_examples", first["image"][:16] / 255.0)
  return iter(run.strategy.distribute_datasets_from_function(train_fn(start_step=step)))


def _evaluate(run, evaluator, split):
  images, labels = getattr(run.splits, split)
  return evaluator(images, labels, run.teachers.logits[split] if run.teachers else None)


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
  results = {
      "role": run.role, "model": entry.model, "width": entry.width, "seed": entry.seed,
      "params": int(model.count_params()), "test_accuracy": test["accuracy"],
      "test_loss": test["loss"], "test_count": test["count"],
      "validation_accuracy": validation["accuracy"], "steps": step, "epochs": entry.epochs,
      "train_seconds": float(run.state.train_seconds.numpy()),
      "ms_per_batch_128": timing.inference_ms_per_batch(model, shape, 128),
      "ms_per_batch_1": timing.inference_ms_per_batch(model, shape, 1),
      "replicas": run.strategy.num_replicas_in_sync, "dataset": run.config.dataset,
      "test": test, "workdir": os.path.abspath(run.workdir), "machine": machine.describe(),
      # Connectors and other objective variables: trained, never exported.
      "extra_params": int(sum(np.prod(v.shape) for v in run.state.extra.variables_list)),
      "extra_trainable_params": int(sum(np.prod(v.shape) for v in run.state.extra.variables_list
                                        if v.trainable))}
  if run.teachers:
    results.update(method=run.config.distill.method, teachers=run.teachers.report,
                   test_agreement=test["agreement"],
                   teacher_test_accuracy=run.teachers.report["test"]["ensemble_accuracy"])
  logging.info("%s finished: test accuracy %.4f over %d examples.", run.role, test["accuracy"],
               test["count"])
  return results


def _write(run, results):
  """The chief exports the model and writes results.json; other workers clean up."""
  if run.chief:
    _export(run.state.model, run.workdir)
    fileio.atomic_write_json(os.path.join(run.workdir, workdir_lib.RESULTS_FILE), results)
    return
  scratch = tempfile.mkdtemp(prefix="kd_worker_export_")
  _export(run.state.model, scratch)  # Saving may need every worker; the copy is thrown away.
  for path in (run.state.manager.directory, scratch):
    shutil.rmtree(path, ignore_errors=True)


def _export(model, workdir):
  """Saves the trained model as RUN/model.keras and RUN/saved_model, each atomically."""
  tmp = os.path.join(workdir, "model.tmp.keras")
  model.save(tmp)
  os.replace(tmp, os.path.join(workdir, "model.keras"))
  fileio.atomic_save_dir(os.path.join(workdir, "saved_model"),
                           lambda d: model.export(d, verbose=False))

