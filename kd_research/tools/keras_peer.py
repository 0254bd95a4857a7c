"""The official Keras distiller as a peer: ``keras.distillation.Distiller`` with
``LogitsDistillation``, trained by ``fit`` on exactly what our ``kd`` run sees.

Same data split and training subset, student model and seed, teacher file, optimizer and
learning-rate schedule (ours, adapted to Keras), batch size, steps, alpha and T:
Keras' total loss is ``student_loss_weight * CE + (1 - student_loss_weight) * T^2 *
KL(teacher_T || student_T)``, so ``student_loss_weight = 1 - alpha`` is our Hinton loss.
What differs is the trainer itself (fit and Keras' own distiller instead of our loop) and
the example order (a shuffled tf.data stream seeded by the student seed).

Keras 3.15's ``LogitsDistillation(temperature=T)`` with its default loss (the string
'kl_divergence', converted to a *function*) does not compute that: only a
``keras.losses.KLDivergence()`` *instance* takes the softmax and multiplies by T^2; the
function is applied to the scaled logits themselves (clipped to [1e-7, 1]) without T^2
(tests/tools/test_keras_peer.py). ``kl='default'`` runs Keras as a user would call it,
``kl='instance'`` passes the instance and trains our Hinton loss.

The run directory has our layout (config.json with ``"trainer": "keras.distillation"``,
results.json, model.keras), so ``report`` lists it beside our runs. It is not resumable
mid-run (fit without checkpoints: a stopped run restarts); a finished run is skipped.
"""

import os
import time

import keras
import numpy as np
import tensorflow as tf

from kd_research.data import datasets
from kd_research.data import splits as splits_lib
from kd_research.train import evaluation
from kd_research.common import fileio
from kd_research.train import results as results_lib
from kd_research.common import machine
from kd_research.models import registry as model_registry
from kd_research.train import optimizers
from kd_research import run_spec
from kd_research.train import teachers as teachers_lib
from kd_research.common import timing
from kd_research.train import workdir as workdir_lib
from kd_research.common.errors import UserError

TRAINERS = {"default": "keras.distillation", "instance": "keras.distillation+KLDivergence()"}


def distiller(teacher, student, alpha, temperature, kl="default"):
  """keras.distillation.Distiller with LogitsDistillation(T) and CE weight 1 - alpha."""
  if kl not in TRAINERS:
    raise UserError(f"keras_kl={kl!r}; valid: {', '.join(TRAINERS)}.")
  options = {"loss": keras.losses.KLDivergence()} if kl == "instance" else {}
  return keras.distillation.Distiller(
      teacher=teacher, student=student,
      distillation_losses=keras.distillation.LogitsDistillation(temperature=temperature,
                                                                **options),
      student_loss_weight=1.0 - alpha)


def _constant(schedule, what):
  if schedule.kind != "constant":
    raise UserError(f"{what}: keras.distillation takes a constant value; the config has a "
                    f"{schedule.kind} schedule.")
  return float(schedule.start)


def train_and_evaluate(config, workdir, teacher_path, overwrite=False, kl="default"):
  """Distils config.student from ``teacher_path`` with Keras' Distiller; returns results."""
  spec = run_spec.parse(config)
  distill = spec.distill
  if distill.methods != ("kd",) or distill.logit_standardization or distill.finetune_epochs:
    raise UserError("The Keras peer runs plain Hinton KD: config.distill.method=kd without "
                    "logit standardization or fine-tuning.")
  alpha = _constant(distill.alpha, "config.distill.alpha")
  temperature = _constant(distill.temperature, "config.distill.temperature")
  if kl not in TRAINERS:
    raise UserError(f"keras_kl={kl!r}; valid: {', '.join(TRAINERS)}.")
  identity = dict(workdir_lib.run_identity(config, "distill", (teacher_path,)),
                  trainer=TRAINERS[kl])
  fileio.check_writable(workdir)
  with workdir_lib.RunLock(workdir):
    finished = workdir_lib.prepare(workdir, identity, overwrite)
    if finished is not None:
      return finished
    splits = datasets.load_splits(spec.data)
    if not isinstance(splits.train, splits_lib.ArraySplit):
      raise UserError(f"keras_peer fits Keras on in-memory arrays; {config.dataset} streams "
                      "from files. Use a built-in dataset for the Keras reference.")
    keras.utils.set_random_seed(config.student.seed)
    student = model_registry.build(config.student.model, splits.input_shape,
                                   splits.num_classes, config.student.width or None)
    teacher = teachers_lib.load_teacher(teacher_path, splits.input_shape, splits.num_classes)
    steps_per_epoch = splits.train.steps_per_epoch(config.global_batch_size)
    total = steps_per_epoch * config.student.epochs
    lr = spec.learning_rate.over(total)
    model = distiller(teacher, student, alpha, temperature, kl)
    model.compile(optimizer=optimizers.make_optimizer(config.optimizer, lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images, labels = splits.train.images, splits.train.labels
    stream = (tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels))
              .shuffle(len(images), seed=config.student.seed, reshuffle_each_iteration=True)
              .batch(config.global_batch_size, drop_remainder=True).prefetch(2))
    start = time.perf_counter()
    model.fit(stream, epochs=config.student.epochs, verbose=0)
    seconds = time.perf_counter() - start
    results = _results(config, splits, student, teacher, total, seconds, TRAINERS[kl])
    student.save(os.path.join(workdir, "model.keras"))
    return results_lib.write(workdir, results)


def _results(config, splits, student, teacher, steps, seconds, trainer):
  """results.json fields the report reads, measured like our runs (Evaluator, timing)."""
  strategy = tf.distribute.get_strategy()
  evaluator = evaluation.Evaluator(strategy, student, splits.num_classes,
                                   config.run.eval_batch_size)
  test = evaluator(splits.test)
  validation = evaluator(splits.validation)
  teacher_test = evaluation.Evaluator(strategy, teacher, splits.num_classes,
                                      config.run.eval_batch_size)(splits.test)
  return results_lib.ResultsRecord(
      role="distill", trainer=trainer, model=config.student.model, width=config.student.width,
      seed=config.student.seed, params=int(student.count_params()),
      test_accuracy=test["accuracy"], test_loss=test["loss"], test_count=test["count"],
      test=test, validation_accuracy=validation["accuracy"], steps=steps,
      epochs=config.student.epochs, train_seconds=seconds,
      ms_per_batch_128=timing.inference_ms_per_batch(student, splits.input_shape, 128,
                                                     config.run.latency_repeats),
      replicas=1, dataset=config.dataset, machine=machine.describe(), method="kd",
      teacher_test_accuracy=teacher_test["accuracy"])
