"""train_and_evaluate: one explicit training loop for teachers, student baselines and distillation.

The loop owns ``strategy.scope()``: model, optimizer, step counter and checkpoint
are created (and restored) inside it. The Python outer loop calls a traced
``train_loop`` for a few steps at a time, then logs, evaluates and checkpoints.
"""

import functools
import os
import shutil
import tempfile
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from kd_research import augment
from kd_research import config as config_lib
from kd_research import data
from kd_research import distribute
from kd_research import evaluate
from kd_research import io_utils
from kd_research import machine
from kd_research import models
from kd_research import optimizers
from kd_research import precision
from kd_research import pretrained
from kd_research import schedules
from kd_research import summaries
from kd_research import teacher_cache
from kd_research import teachers as teachers_lib
from kd_research import train_step
from kd_research import workdir as workdir_lib
from kd_research.errors import UserError

ROLES = ("teacher", "student", "distill")


class TrainingDiverged(UserError):
  """A loss became NaN or infinite; the run stops before checkpointing the bad state."""


def eval_batch_size(config, strategy):
  """The eval global batch, rounded up to a multiple of the replica count."""
  replicas = strategy.num_replicas_in_sync
  return -(-config.eval_batch_size // replicas) * replicas


def check_batch(global_batch_size, strategy):
  """The global batch must split evenly over the replicas."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size % replicas:
    raise UserError(f"config.global_batch_size={global_batch_size} is not divisible by the "
                    f"{replicas} replicas of this strategy; use a multiple of {replicas}.")


def _distill_schedules(config, distill_steps):
  alpha = schedules.from_config(config.distill, "alpha", distill_steps, "alpha schedule")
  alpha.check_range(0.0, 1.0)
  temperature = schedules.from_config(config.distill, "temperature", distill_steps,
                                      "temperature schedule")
  temperature.check_range(0.0, float("inf"), low_inclusive=False, what_range="T > 0")
  return alpha, temperature


def _augmentation(config, splits, per_replica_batch, seed):
  """The per-replica augmentation transform of config.augment, or None without ops."""
  ops = augment.validate(config.augment, splits.input_shape, per_replica_batch)
  if not ops:
    return None
  return functools.partial(augment.augment_batch, ops=ops, cfg=config.augment, seed=seed,
                           num_classes=splits.num_classes,
                           global_batch_size=config.global_batch_size)


def _steps_to_next(step, every):
  return every - step % every


def train_and_evaluate(config, workdir, role, strategy, teacher_paths=(), overwrite=False):
  """Trains one model (``role``: teacher | student | distill) in ``workdir``; returns results.

  Resumes from the latest checkpoint in ``workdir``; a finished run (results.json
  present, same config) is reported, not retrained.
  """
  if role not in ROLES:
    raise UserError(f"Unknown role {role!r}; valid: {', '.join(ROLES)}.")
  entry = config.teacher if role == "teacher" else config.student
  chief = distribute.is_chief(strategy)
  # 'auto' becomes the concrete precision before anything depends on it (identity,
  # loss scaling, cache fingerprint): a run resumed on another kind of CPU is refused
  # rather than silently continued in another precision.
  choice = precision.choose(config.mixed_precision)
  logging.info("Precision: %s (%s: %s).", choice.used, choice.requested, choice.reason)
  if choice.requested != choice.used:
    config = config_lib.replaced(config, mixed_precision=choice.used)
  identity = workdir_lib.run_identity(config, role, teacher_paths)
  finished = workdir_lib.prepare(workdir, identity, overwrite, write=chief)
  if finished is not None:
    logging.info("%s: already finished (test accuracy %.4f); not retraining.", workdir,
                 finished["test_accuracy"])
    return finished
  check_batch(config.global_batch_size, strategy)
  if config.checkpoint_every_seconds and isinstance(
      strategy, tf.distribute.MultiWorkerMirroredStrategy):
    raise UserError("config.checkpoint_every_seconds works only in single-process runs: "
                    "workers would disagree on when to save (a collective). Use "
                    "config.checkpoint_every_steps with multi_worker.")
  splits = data.load_splits(config)
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  precision.set_policy(choice.used)
  keras.utils.set_random_seed(entry.seed)
  try:
    results = _run(config, workdir, role, strategy, entry, splits, teacher_paths, chief,
                   choice)
  finally:
    precision.set_policy("none")
  return results


def _run(config, workdir, role, strategy, entry, splits, teacher_paths, chief, choice):
  gb = config.global_batch_size
  spe = data.steps_per_epoch(len(splits.train[0]), gb)
  total_steps = entry.epochs * spe
  distilling = role == "distill"
  distill_steps = (entry.epochs - config.distill.finetune_epochs) * spe if distilling else 0
  if distilling:
    alpha_fn, temperature_fn = _distill_schedules(config, distill_steps)
  lr_fn = schedules.from_config(config.optimizer, "learning_rate", total_steps,
                                "learning-rate schedule")
  head_steps = entry.head_epochs * spe if role == "teacher" else 0
  if head_steps:
    lr_fn = optimizers.LRFactorAfter(lr_fn, head_steps, entry.finetune_lr_factor)
  if distilling and config.distill.finetune_epochs and config.distill.finetune_lr_factor != 1.0:
    lr_fn = optimizers.LRFactorAfter(lr_fn, distill_steps, config.distill.finetune_lr_factor)

  with strategy.scope():
    model = models.build(entry.model, splits.input_shape, splits.num_classes,
                         entry.width, entry.sync_bn, entry.image_size, entry.weights)
    optimizer = optimizers.make_optimizer(
        config.optimizer, lr_fn,
        (config.loss_scale_initial, config.loss_scale_growth_steps)
        if config.mixed_precision == "fp16" else None)
    # Build for every variable that will ever train (also after unfreezing a backbone),
    # before tracing: an optimizer built lazily inside the first distributed step fails
    # with "You must feed a value for placeholder tensor" (TF 2.21, Keras 3).
    pretrained.set_trainable(model, "finetune", entry.unfreeze_top, bool(entry.weights))
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    elapsed_var = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="train_seconds")
    ensemble = (teachers_lib.load(teacher_paths, splits.input_shape, splits.num_classes)
                if distilling else None)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var,
                                     train_seconds=elapsed_var)
  # Every worker restores the chief's latest checkpoint (shared filesystem) and saves
  # (a collective under MultiWorkerMirroredStrategy), non-chiefs into a temporary dir.
  chief_ckpt_dir = os.path.join(workdir, "checkpoints")
  ckpt_dir = chief_ckpt_dir if chief else tempfile.mkdtemp(prefix="kd_worker_ckpt_")
  manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, max_to_keep=config.keep_checkpoints)
  latest = tf.train.latest_checkpoint(chief_ckpt_dir)
  if latest:
    try:
      checkpoint.restore(latest).assert_existing_objects_matched()
    except (ValueError, AssertionError, tf.errors.OpError) as e:
      raise UserError(f"Checkpoint {latest} does not fit the configured {entry.model} model "
                      f"({str(e).splitlines()[0][:300]}). The workdir holds another model's "
                      "run: use a new --workdir, or --overwrite to discard it.")
    logging.info("Resumed %s from %s at step %d.", workdir, latest, int(step_var.numpy()))
  step = int(step_var.numpy())
  logging.info("%s: %s %s, %d params, %d steps (%d/epoch), %d replica(s), %s.", workdir, role,
               entry.model, model.count_params(), total_steps, spe,
               strategy.num_replicas_in_sync, splits.source)

  weights = config_lib.teacher_weights(config) if distilling else None
  teacher_summary = None
  if distilling:  # Teachers are checked before any student step or cache write.
    teacher_summary = evaluate.teacher_report(ensemble, splits, weights)
    if not config.distill.allow_weak_teacher:
      teachers_lib.check_above_chance(teacher_summary["validation"]["accuracy"], ensemble.paths,
                                      splits.validation[1], splits.num_classes)
  transform = _augmentation(config, splits, gb // strategy.num_replicas_in_sync, entry.seed)
  cached = distilling and config.distill.cache_teacher
  extras = None
  if cached:
    teacher_cache.refuse_with_augmentation(augment.parse_ops(config.augment.ops))
    digest = teacher_cache.fingerprint(teacher_paths, splits.train[0], config.mixed_precision,
                                       config.distill.combine)
    extras = {"teacher_logits": teacher_cache.load_or_compute(
        config.distill.cache_dir or os.path.join(workdir, "teacher_cache"), "train", ensemble,
        splits.train[0], digest,
        write=chief)}
  plain_loop = train_step.make_train_loop(strategy, model, optimizer, step_var, gb,
                                          jit_compile=config.jit_compile)
  head_loop = (train_step.make_train_loop(strategy, model, optimizer, step_var, gb,
                                          jit_compile=config.jit_compile)
               if head_steps else None)
  distill_loop = (train_step.make_train_loop(
      strategy, model, optimizer, step_var, gb, None if cached else ensemble, alpha_fn,
      temperature_fn, config.distill.combine, weights, cached_teacher_logits=cached,
      jit_compile=config.jit_compile) if distilling else None)
  final_t = float(temperature_fn(max(distill_steps, 1))) if distilling else 1.0
  stability = None
  if distilling and config.stability_ops:
    stability = (augment.parse_ops(config.stability_ops), config.augment,
                 eval_batch_size(config, strategy))
  eval_step = train_step.make_eval_step(strategy, model, splits.num_classes, ensemble, final_t,
                                        config.distill.combine, weights, stability)
  eval_gb = eval_batch_size(config, strategy)
  writer = summaries.Summaries(workdir, enabled=chief)
  writer.hparams(summaries.run_hparams(config_lib.flatten(
      workdir_lib.run_identity(config, role, teacher_paths))),
                 trial_id=_trial_id(workdir))
  if teacher_summary is not None:
    writer.scalars(0, evaluate.teacher_scalars(teacher_summary))
  train_fn = functools.partial(data.train_dataset_fn, *splits.train, gb, seed=entry.seed,
                               transform=transform, extras=extras, threads=config.data_threads)
  if step == 0 and transform is not None:
    first = next(iter(train_fn()(tf.distribute.InputContext())))
    writer.images(0, "train/augmented_examples", first["image"][:16] / 255.0)
  iterator = iter(strategy.distribute_datasets_from_function(train_fn(start_step=step)))

  window = np.zeros(len(train_step.TRAIN_SUMS))
  window_start = last_save = time.perf_counter()
  window_eval_seconds = 0.0
  while step < total_steps:
    in_distill = distilling and step < distill_steps
    in_head = step < head_steps
    n = min(config.steps_per_loop, total_steps - step, _steps_to_next(step, config.log_every_steps),
            _steps_to_next(step, config.checkpoint_every_steps), _steps_to_next(step, spe))
    if in_distill:
      n = min(n, distill_steps - step)
    if in_head:
      n = min(n, head_steps - step)
    # Head-only warm-up, then the (partly) unfrozen backbone; each loop traces with the
    # trainable set of its phase. A no-op for models without a pretrained backbone.
    pretrained.set_trainable(model, "head" if in_head else "finetune", entry.unfreeze_top,
                             bool(entry.weights))
    loop_fn = distill_loop if in_distill else (head_loop if in_head else plain_loop)
    started = time.perf_counter()
    sums = loop_fn(iterator, tf.constant(n)).numpy()
    elapsed_var.assign_add(time.perf_counter() - started)
    _check_finite(sums, step, n, manager)
    step += n
    window += sums
    if step % config.log_every_steps == 0 or step == total_steps:
      # Training time only: validation passes inside the window are not training.
      seconds = time.perf_counter() - window_start - window_eval_seconds
      metrics = _train_metrics(window, seconds, lr_fn(step), optimizers.current_loss_scale(optimizer))
      if distilling:
        metrics["train/alpha"] = float(alpha_fn(step)) if in_distill else 0.0
        metrics["train/temperature"] = float(temperature_fn(step))
      writer.scalars(step, metrics)
      eta = (total_steps - step) * seconds / max(window[_SUM["steps"]], 1)
      logging.info("%s step %d/%d  loss %.4f  acc %.4f  %.0f ex/s  ETA %.0f s", role, step,
                   total_steps, metrics["train/loss_total"], metrics["train/accuracy"],
                   metrics["train/examples_per_second"], eta)
      window[:] = 0
      window_start, window_eval_seconds = time.perf_counter(), 0.0
    if step % spe == 0 and ((step // spe) % config.eval_every_epochs == 0 or
                            step == total_steps):
      eval_started = time.perf_counter()
      result = evaluate.run_eval(strategy, eval_step, *splits.validation, eval_gb,
                                 splits.num_classes)
      window_eval_seconds += time.perf_counter() - eval_started
      writer.scalars(step, _eval_metrics(result, distilling, "eval"))
      writer.images(step, "eval/confusion_matrix",
                    summaries.confusion_image(np.asarray(result["confusion"]))[None])
      logging.info("%s epoch %d: validation accuracy %.4f loss %.4f", role, step // spe,
                   result["accuracy"], result["loss"])
    timed_out = (config.checkpoint_every_seconds and
                 time.perf_counter() - last_save >= config.checkpoint_every_seconds)
    if step % config.checkpoint_every_steps == 0 or step == total_steps or timed_out:
      manager.save(checkpoint_number=step)
      last_save = time.perf_counter()

  results = _final_results(config, workdir, role, strategy, model, eval_step, splits, eval_gb,
                           ensemble, step, float(elapsed_var.numpy()))
  results["precision"] = choice.as_dict()
  if teacher_summary is not None:
    results["teachers"] = teacher_summary
  writer.scalars(step, _eval_metrics(results["test"], distilling, "test"))
  writer.close()
  if chief:
    _export(model, workdir)
    io_utils.atomic_write_json(os.path.join(workdir, workdir_lib.RESULTS_FILE), results)
  else:
    scratch = tempfile.mkdtemp(prefix="kd_worker_export_")
    _export(model, scratch)  # Saving may need every worker; the copy is thrown away.
    for path in (ckpt_dir, scratch):
      shutil.rmtree(path, ignore_errors=True)
  return results


def _trial_id(workdir):
  """'student_kd/seed_0 (runs/quickstart)': the stage first, so the truncated HParams
  column still tells runs apart; the parent keeps it unique across pipelines."""
  path = io_utils.portable_command(os.path.abspath(workdir))
  parent, name = os.path.split(path)
  if name.startswith("seed_"):
    parent, stage = os.path.split(parent)
    name = f"{stage}/{name}"
  return f"{name} ({parent})" if parent else name


_SUM = {name: i for i, name in enumerate(train_step.TRAIN_SUMS)}


def _check_finite(sums, step, n, manager):
  """Stops with a clear message when any loss term became NaN/inf in the last n steps."""
  for name, value in zip(train_step.TRAIN_SUMS, sums):
    if not np.isfinite(value):
      last = manager.latest_checkpoint or "none yet"
      raise TrainingDiverged(
          f"Training diverged: train/{name} became {value} between steps {step + 1} and "
          f"{step + n}. The last good checkpoint ({last}) is kept; no results were written. "
          "Lower the learning rate (config.optimizer.learning_rate) or check the data.")


def _train_metrics(window, seconds, lr, loss_scale=None):
  sums = dict(zip(train_step.TRAIN_SUMS, window))
  count = max(sums["count"], 1.0)
  metrics = {"train/grad_norm": sums["grad_norm"] / max(sums["steps"] - sums["skipped"], 1e-9),
          "train/loss_total": sums["loss_total"] / count,
          "train/loss_distill": sums["loss_distill"] / count,
          "train/loss_ce": sums["loss_ce"] / count,
          "train/accuracy": sums["correct"] / count,
          "train/learning_rate": float(lr),
          "train/examples_per_second": sums["count"] / max(seconds, 1e-9)}
  if loss_scale is not None:  # float16: updates skipped on overflow, and the current scale.
    metrics.update({"train/skipped_steps": sums["skipped"], "train/loss_scale": loss_scale})
  return metrics


def _eval_metrics(result, distilling, prefix):
  metrics = {f"{prefix}/accuracy": result["accuracy"], f"{prefix}/loss": result["loss"],
             f"{prefix}/ece": result["ece"]}
  if distilling:
    tag = "" if prefix == "eval" else f"{prefix}_"
    metrics.update({f"distill/{tag}agreement": result["agreement"],
                    f"distill/{tag}kl": result["kl"],
                    f"teacher/{tag}accuracy": result["teacher_accuracy"],
                    f"teacher/{tag}ece": result["teacher_ece"],
                    f"teacher/{tag}entropy": result["teacher_entropy"]})
    if prefix == "eval":
      metrics["teacher/stability"] = result["teacher_stability"]
  return metrics


def _final_results(config, workdir, role, strategy, model, eval_step, splits, eval_gb, ensemble,
                   step, train_seconds):
  """Test-split evaluation (once, at the end), validation accuracy, size and latency."""
  test = evaluate.run_eval(strategy, eval_step, *splits.test, eval_gb, splits.num_classes)
  validation = evaluate.run_eval(strategy, eval_step, *splits.validation, eval_gb,
                                 splits.num_classes)
  entry = config.teacher if role == "teacher" else config.student
  results = {
      "role": role, "model": entry.model, "width": entry.width, "seed": entry.seed,
      "params": int(model.count_params()), "test_accuracy": test["accuracy"],
      "test_loss": test["loss"], "test_count": test["count"],
      "validation_accuracy": validation["accuracy"], "steps": step, "epochs": entry.epochs,
      "train_seconds": train_seconds,
      "ms_per_batch_128": evaluate.inference_ms_per_batch(model, splits.input_shape, 128),
      "ms_per_batch_1": evaluate.inference_ms_per_batch(model, splits.input_shape, 1),
      "replicas": strategy.num_replicas_in_sync, "dataset": config.dataset, "test": test,
      "workdir": os.path.abspath(workdir), "machine": machine.describe(),
  }
  if ensemble is not None:
    results.update({"teacher_test_accuracy": test["teacher_accuracy"],
                    "test_agreement": test["agreement"]})
  logging.info("%s finished: test accuracy %.4f over %d examples.", role, test["accuracy"],
               test["count"])
  return results


def _export(model, workdir):
  """Saves the trained model as RUN/model.keras and RUN/saved_model, each atomically."""
  tmp = os.path.join(workdir, "model.tmp.keras")
  model.save(tmp)
  os.replace(tmp, os.path.join(workdir, "model.keras"))
  io_utils.atomic_save_dir(os.path.join(workdir, "saved_model"),
                           lambda d: model.export(d, verbose=False))
