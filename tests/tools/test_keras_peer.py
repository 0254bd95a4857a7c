"""The official Keras distiller as a peer: same objective as our kd, a run dir the report
lists, finished runs skipped."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research.tools import keras_peer
from kd_research.methods import losses
from kd_research.report import rows as report_rows
from kd_research.report import tables as report_tables
from kd_research.train import end_to_end
from kd_research.common.errors import UserError
from conftest import tiny_config


def test_keras_distiller_loss_is_our_hinton_loss_only_with_a_kl_instance():
  """Distiller(student_loss_weight = 1 - alpha) + LogitsDistillation(T, loss=KLDivergence())
  on one batch equals the mean of our per-example alpha T^2 KL + (1 - alpha) CE. With its
  default loss ('kl_divergence', a function, not a KLDivergence instance) Keras 3.15 skips
  the softmax and the T^2: it takes the KL of the clipped scaled *logits*."""
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (16, 6)).astype(np.float32)  # Moderate logits: Keras clips p at 1e-7.
  y = rng.integers(0, 4, 16).astype(np.int32)
  keras.utils.set_random_seed(0)
  teacher = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
  student = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
  alpha, t = 0.7, 3.0
  ce = losses.cross_entropy(student(x), y)
  theirs = {}
  for kl in ("default", "instance"):
    distiller = keras_peer.distiller(teacher, student, alpha, t, kl)
    distiller.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    theirs[kl] = float(distiller.compute_loss(x, y, student(x)))
  distill = t * t * losses.combined_distill_term(student(x), teacher(x)[None], t, "prob_mean",
                                                 [1.0])
  ours = float(tf.reduce_mean(alpha * distill + (1 - alpha) * ce))
  np.testing.assert_allclose(theirs["instance"], ours, rtol=1e-5)
  on_logits = keras.losses.kl_divergence(teacher(x) / t, student(x) / t)
  np.testing.assert_allclose(
      theirs["default"], float(tf.reduce_mean(alpha * on_logits + (1 - alpha) * ce)), rtol=1e-5)


def test_keras_peer_run_is_reported_and_skipped_when_finished(teacher_file, tmp_path):
  config = tiny_config(**{"distill.alpha.start": 0.5, "distill.alpha.end": 0.5,
                          "distill.temperature.start": 2.0, "distill.temperature.end": 2.0})
  workdir = str(tmp_path / "runs" / "peer")
  results = keras_peer.train_and_evaluate(config, workdir, teacher_file)
  assert results["trainer"] == "keras.distillation" and 0 <= results["test_accuracy"] <= 1
  assert json.load(open(os.path.join(workdir, "config.json")))["trainer"] == "keras.distillation"
  fixed = keras_peer.train_and_evaluate(config, str(tmp_path / "runs" / "fixed"), teacher_file,
                                        kl="instance")
  assert fixed["trainer"] == "keras.distillation+KLDivergence()"
  stamp = os.path.getmtime(os.path.join(workdir, "results.json"))
  assert keras_peer.train_and_evaluate(config, workdir, teacher_file) == results
  assert os.path.getmtime(os.path.join(workdir, "results.json")) == stamp
  end_to_end.train_and_evaluate(config, str(tmp_path / "runs" / "ours"), "distill",
                                tf.distribute.get_strategy(), (teacher_file,))
  runs_dir = str(tmp_path / "runs")
  table = report_tables.build_table(report_rows.find_runs(runs_dir), runs_dir)
  assert "keras.distillation Distiller (fit)" in table  # A row of its own beside ours.
  with pytest.raises(UserError, match="constant"):
    keras_peer.train_and_evaluate(tiny_config(**{"distill.alpha.kind": "cosine"}),
                                  str(tmp_path / "sched"), teacher_file)
