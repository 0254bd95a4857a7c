"""DOT (train/dot.py) against a float64 NumPy transcription of mdistiller's
``DistillationOrientedTrainer`` (mdistiller/engine/dot.py, ``dot``): three KD steps of an
MLP on one device and on two replicas, the task and distillation gradients taken apart by
an independent tape, the reference's weight decay added to the task gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import hinton_kd
from kd_research.methods import losses
from kd_research.models import registry as model_registry
from kd_research.train import dot
from kd_research.train import steps
from conftest import DEFAULT

LR, MOMENTUM, DELTA, WD, ALPHA, T = 0.1, 0.9, 0.075, 5e-4, 0.7, 4.0


def reference_dot(params, task_grads, kd_grads, task_bufs, kd_bufs):
  """dot() of mdistiller for parameters that get both gradients (every one here)."""
  m_task, m_kd = MOMENTUM - DELTA, MOMENTUM + DELTA
  out = []
  for i, p in enumerate(params):
    d_p = task_grads[i] + WD * p
    task_bufs[i] = d_p.copy() if task_bufs[i] is None else m_task * task_bufs[i] + d_p
    p = p - LR * task_bufs[i]
    kd_bufs[i] = kd_grads[i].copy() if kd_bufs[i] is None else m_kd * kd_bufs[i] + kd_grads[i]
    out.append(p - LR * kd_bufs[i])
  return out


def split_gradients(student, teacher, batch, weights):
  """(task, kd) gradients of the reference's two losses at ``weights``, by a plain tape."""
  for v, w in zip(student.trainable_variables, weights):
    v.assign(w.astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    s = student(batch["image"], training=True)
    t = teacher(batch["image"], training=False)
    task = (1 - ALPHA) * tf.reduce_mean(losses.cross_entropy(s, batch["label"]))
    kd = ALPHA * T * T * tf.reduce_mean(losses.kl_divergence(s, t, T))
  variables = student.trainable_variables
  return ([g.numpy().astype(np.float64) for g in tape.gradient(task, variables)],
          [g.numpy().astype(np.float64) for g in tape.gradient(kd, variables)])


def dot_run(strategy, batch):
  """Three DOT steps of our loop; returns (teacher, student's initial and final weights)."""
  with strategy.scope():
    keras.utils.set_random_seed(0)
    teacher = model_registry.build("mlp", (8, 8, 1), 5, 16)
    student = model_registry.build("mlp", (8, 8, 1), 5, 8)
    optimizer = dot.DistillationOrientedSGD(LR, MOMENTUM, DELTA)
    optimizer.build(student.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
  before = [w.numpy().astype(np.float64) for w in student.trainable_variables]
  objective = hinton_kd.HintonKD(lambda s: ALPHA, lambda s: T)
  source = lambda b: {"logits": teacher(b["image"], training=False)[None]}
  ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
  steps.make_train_loop(strategy, student, optimizer, step, 16, objective, source, l2=WD)(
      iter(ds), tf.constant(3))
  return teacher, student, before, [w.numpy() for w in student.trainable_variables]


@pytest.mark.parametrize("replicas", [1, 2])
def test_dot_matches_the_reference(replicas, strategy_factory):
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(0, 1, (16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 5, 16).astype(np.int32)}
  strategy = DEFAULT if replicas == 1 else strategy_factory(2)
  teacher, _, weights, ours = dot_run(strategy, batch)
  initial = weights
  task_bufs, kd_bufs = [None] * len(weights), [None] * len(weights)
  with DEFAULT.scope():
    probe = model_registry.build("mlp", (8, 8, 1), 5, 8)
  for _ in range(3):
    task, kd = split_gradients(probe, teacher, batch, weights)
    weights = reference_dot(weights, task, kd, task_bufs, kd_bufs)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, weights))
  moved = max(float(np.abs(a - b).max()) for a, b in zip(ours, initial))
  print(f"DOT, {replicas} replica(s): max |w - w_reference| {diff:.2e}, max |dw| {moved:.2e}")
  assert diff < 2e-6 and moved > 1e-2
