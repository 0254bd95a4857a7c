"""The training loop: outputs, resume, replica independence, frozen teachers, safety."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research.train import driver
from kd_research.models import registry as model_registry
from kd_research.methods import base
from kd_research.methods import hinton_kd
from kd_research.train import teacher_sources
from kd_research import main as main_lib
from kd_research.train import end_to_end
from kd_research.train import steps
from kd_research.train import teachers as teachers_lib
from kd_research.common.errors import UserError
from conftest import (DEFAULT, interrupt_then_resume, mlp_sgd, read_scalars, tiny_config,
                      weights_of)



def test_distillation_run_writes_everything(tmp_path, teacher_file):
  workdir = str(tmp_path / "kd")
  config = tiny_config(**{"run.saved_model": True})  # The tiny preset leaves it out.
  results = end_to_end.train_and_evaluate(config, workdir, "distill", DEFAULT, (teacher_file,))
  for name in ("config.json", "results.json", "model.keras", "saved_model/saved_model.pb"):
    assert os.path.exists(os.path.join(workdir, name)), name
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)
  assert saved["test_count"] == 500 and saved["steps"] == 2 * (1800 // 64)
  assert saved["test_accuracy"] == results["test_accuracy"] > 0.5
  assert saved["ms_per_batch_128"] > 0 and saved["params"] > 0
  scalars = read_scalars(workdir)
  for tag in ("train/loss_total", "train/loss_distill", "train/loss_ce", "train/accuracy",
              "train/alpha", "train/temperature", "train/learning_rate",
              "train/examples_per_second", "eval/loss", "eval/accuracy", "distill/agreement",
              "distill/kl", "teacher/accuracy", "test/accuracy", "train/grad_norm",
              "eval/ece", "teacher/ece", "teacher/entropy", "teacher/stability",
              "teacher/0/validation_accuracy", "teacher/ensemble/validation_ece"):
    assert tag in scalars, tag
  assert all(v > 0 for _, v in scalars["train/grad_norm"])
  assert all(0 <= v <= 1 for _, v in scalars["teacher/stability"])
  # The last validation agreement/accuracy equal the final results (same model, same data).
  assert scalars["eval/accuracy"][-1][1] == pytest.approx(saved["validation_accuracy"], abs=1e-6)
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  assert "eval/confusion_matrix" in acc.Tags()["tensors"]
  assert "_hparams_/session_start_info" in acc.Tags()["tensors"]
  # distill/agreement at the last evaluation equals NumPy on the saved models.
  from kd_research.data import datasets
  val_x = datasets.load_splits(datasets.data_spec(config)).validation.images
  student = keras.models.load_model(os.path.join(workdir, "model.keras"), compile=False)
  teacher = keras.models.load_model(teacher_file, compile=False)
  agree = np.mean(np.argmax(student(val_x.astype(np.float32)), 1) ==
                  np.argmax(teacher(val_x.astype(np.float32)), 1))
  assert scalars["distill/agreement"][-1][1] == pytest.approx(agree, abs=1e-6)
  confusion = np.asarray(saved["test"]["confusion"])
  assert confusion.sum() == 500 and np.trace(confusion) == round(500 * saved["test_accuracy"])
  assert all(v == pytest.approx(0.7) for _, v in scalars["train/alpha"])
  assert all(v > 0 for _, v in scalars["train/examples_per_second"])
  # loss_total = alpha * loss_distill + (1 - alpha) * loss_ce at every logged step.
  for (_, t), (_, d), (_, c) in zip(scalars["train/loss_total"], scalars["train/loss_distill"],
                                    scalars["train/loss_ce"]):
    assert t == pytest.approx(0.7 * d + 0.3 * c, rel=1e-4)
  # Finished runs are reported, not retrained; a different config is refused.
  mtime = os.path.getmtime(os.path.join(workdir, "model.keras"))
  again = end_to_end.train_and_evaluate(config, workdir, "distill", DEFAULT, (teacher_file,))
  assert again["test_accuracy"] == results["test_accuracy"]
  assert os.path.getmtime(os.path.join(workdir, "model.keras")) == mtime
  with pytest.raises(UserError, match=r"distill.temperature.start: 10.0 -> 3.0"):
    end_to_end.train_and_evaluate(tiny_config(**{"distill.temperature.start": 3.0}), workdir,
                                  "distill", DEFAULT, (teacher_file,))


def test_resume_after_interruption_matches_uninterrupted(tmp_path, teacher_file, monkeypatch):
  config = tiny_config()
  full_dir, cut_dir = str(tmp_path / "full"), str(tmp_path / "cut")
  end_to_end.train_and_evaluate(config, full_dir, "distill", DEFAULT, (teacher_file,))
  interrupt_then_resume(config, cut_dir, teacher_file, monkeypatch, stop_after=35,
                        expected_checkpoint=20)
  for a, b in zip(weights_of(full_dir), weights_of(cut_dir)):
    np.testing.assert_array_equal(a, b)
  assert not os.path.exists(os.path.join(full_dir, "saved_model"))  # run.saved_model false


@pytest.mark.parametrize("replicas", [2, 4])
def test_distillation_does_not_depend_on_replica_count(tmp_path, teacher_file, replicas,
                                                       strategy_factory):
  config = tiny_config(**{"student.epochs": 1})
  single = end_to_end.train_and_evaluate(config, str(tmp_path / "one"), "distill", DEFAULT,
                                         (teacher_file,))
  multi = end_to_end.train_and_evaluate(config, str(tmp_path / "many"), "distill",
                                        strategy_factory(replicas), (teacher_file,))
  assert multi["replicas"] == replicas
  one = read_scalars(str(tmp_path / "one"))
  many = read_scalars(str(tmp_path / "many"))
  for tag in ("train/loss_total", "train/loss_ce", "train/accuracy", "train/grad_norm",
              "eval/accuracy", "distill/agreement"):
    np.testing.assert_allclose([v for _, v in one[tag]], [v for _, v in many[tag]],
                               rtol=1e-5, atol=1e-6, err_msg=tag)
  diffs = [float(np.max(np.abs(a - b))) for a, b in
           zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "many")))]
  print(f"1 vs {replicas} replicas: max |dw| {max(diffs):.2e}")
  for a, b in zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "many"))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert multi["test_count"] == single["test_count"] == 500
  assert multi["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1e-9)
  assert multi["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)


def test_train_loop_loss_is_global_mean_on_two_replicas(strategy_factory):
  """The loop's summed loss equals the per-example mean computed on one device."""
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (16, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 3, 16).astype(np.int32)
  want = None
  for n in (1, 2):
    strategy = strategy_factory(n)
    model, opt, step = mlp_sgd(strategy, (4, 4, 1), 3, 8, 0.0)
    ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat())
    objective = base.Objective()
    run = steps.make_train_loop(strategy, model, opt, step, 16, objective)
    sums = steps.train_layout(objective.terms_names).unpack(run(iter(ds), tf.constant(1)))
    if want is None:
      with tf.GradientTape() as tape:
        logits = model(images)
        mean = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
      want = float(mean)
      want_norm = float(tf.linalg.global_norm(tape.gradient(mean, model.trainable_variables)))
    assert sums["count"] == 16 and sums["steps"] == pytest.approx(1.0)
    assert sums["loss_total"] / sums["count"] == pytest.approx(want, rel=1e-5)
    assert sums["grad_norm"] == pytest.approx(want_norm, rel=1e-5)


def test_teacher_weights_and_bn_statistics_never_move(strategy_factory):
  strategy = strategy_factory(2)
  rng = np.random.default_rng(1)
  images = rng.uniform(0, 255, (8, 8, 8, 1)).astype(np.float32)
  labels = rng.integers(0, 4, 8).astype(np.int32)
  with strategy.scope():
    teacher = model_registry.build("resnet_article", (8, 8, 1), 4, width=2)
    student = model_registry.build("mlp", (8, 8, 1), 4, width=8)
    opt = keras.optimizers.Adam(0.1)
    opt.build(student.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
  before = [w.numpy().copy() for w in teacher.weights]
  ensemble = teachers_lib.TeacherEnsemble([teacher], ["t"])
  ds = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat())
  student_before = [w.numpy().copy() for w in student.weights]
  run = steps.make_train_loop(strategy, student, opt, step, 8,
                              hinton_kd.HintonKD(lambda s: 0.7, lambda s: 4.0),
                              teacher_sources.live_teachers(ensemble))
  run(iter(ds), tf.constant(3))
  assert any(np.any(a != b.numpy()) for a, b in zip(student_before, student.weights))
  assert any("moving" in w.path for w in teacher.weights)
  for a, b in zip(before, teacher.weights):
    np.testing.assert_array_equal(a, b.numpy())


def test_divergence_stops_without_results(tmp_path):
  config = tiny_config(**{"optimizer.learning_rate.start": 1e30,
                          "optimizer.learning_rate.end": 1e30,
                          "optimizer.name": "sgd"})
  workdir = str(tmp_path / "nan")
  with pytest.raises(driver.TrainingDiverged, match="train/loss"):
    end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_schedules_and_finetune_stage_resume_exactly(tmp_path, teacher_file, monkeypatch):
  """Linear alpha 0.9 -> 0.3 over two distillation epochs, then one labels-only epoch."""
  config = tiny_config(**{"student.epochs": 3, "distill.finetune_epochs": 1,
                          "distill.alpha.start": 0.9, "distill.alpha.end": 0.3,
                          "distill.alpha.kind": "linear",
                          "distill.temperature.start": 8.0, "distill.temperature.end": 2.0,
                          "distill.temperature.kind": "cosine"})
  full_dir, cut_dir = str(tmp_path / "full"), str(tmp_path / "cut")
  end_to_end.train_and_evaluate(config, full_dir, "distill", DEFAULT, (teacher_file,))
  spe, distill_steps = 1800 // 64, 2 * (1800 // 64)
  scalars = read_scalars(full_dir)
  for step, alpha in scalars["train/alpha"]:
    want = 0.0 if step > distill_steps else 0.9 - 0.6 * step / distill_steps
    assert alpha == pytest.approx(want, abs=1e-6), step
  temperature = dict(scalars["train/temperature"])
  assert temperature[50] == pytest.approx(2.0 + 3.0 * (1 + np.cos(np.pi * 50 / 56)), rel=1e-5)
  assert temperature[10] == pytest.approx(2.0 + 3.0 * (1 + np.cos(np.pi * 10 / 56)), rel=1e-5)
  distill = dict(scalars["train/loss_distill"])
  total = dict(scalars["train/loss_total"])
  ce = dict(scalars["train/loss_ce"])
  finetune_steps = [s for s in distill if s > distill_steps + 10]
  assert finetune_steps and all(distill[s] == 0 and total[s] == ce[s] for s in finetune_steps)
  # Interrupt inside the fine-tuning stage (last checkpoint at step 60 > 56), then resume.
  interrupt_then_resume(config, cut_dir, teacher_file, monkeypatch, stop_after=65,
                        expected_checkpoint=60)
  for a, b in zip(weights_of(full_dir), weights_of(cut_dir)):
    np.testing.assert_array_equal(a, b)
  assert spe == 28


def test_report_groups_seeds(tmp_path):
  from kd_research.report import rows as report_rows  # pylint: disable=g-import-not-at-top
  from kd_research.report import tables as report_tables  # pylint: disable=g-import-not-at-top
  accuracies = []
  for seed in (0, 1, 2):
    results = end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1, "student.seed": seed}),
                                            str(tmp_path / f"s{seed}"), "student", DEFAULT)
    accuracies.append(results["test_accuracy"])
  end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1, "student.width": 16}),
                                str(tmp_path / "narrow"), "student", DEFAULT)
  table = report_tables.build_table(report_rows.find_runs(str(tmp_path)), str(tmp_path))
  rows = [l for l in table.splitlines() if l.startswith("| student")]
  assert len(rows) == 2
  want = f"{100 * np.mean(accuracies):.2f} +- {100 * np.std(accuracies, ddof=1):.2f}%"
  assert any("| 3 | " + want in r for r in rows), (want, rows)
  assert main_lib.report_command([f"--workdir={tmp_path}"]) == 0
  assert os.path.exists(tmp_path / "report.md")
  assert main_lib.report_command([f"--workdir={tmp_path}/nothing"]) == 2


def test_coupled_l2_adds_l2_times_weight_to_the_gradient(strategy_factory):
  """optimizer.l2 (PyTorch SGD's weight_decay): with SGD at learning rate 1 the update
  with l2 differs from the one without by exactly l2 * w, on 1 and 2 replicas."""
  from kd_research.methods import base  # pylint: disable=g-import-not-at-top
  from kd_research.train import steps  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (8, 6, 6, 1)).astype(np.float32),
           "label": rng.integers(0, 3, 8).astype(np.int32)}
  for strategy in (DEFAULT, strategy_factory(2)):
    updates = []
    for l2 in (0.0, 0.1):
      model, optimizer, step = mlp_sgd(strategy, (6, 6, 1), 3, 4, 1.0)
      before = [w.numpy().copy() for w in model.trainable_variables]
      ds = strategy.experimental_distribute_dataset(
          tf.data.Dataset.from_tensors(batch).repeat())
      steps.make_train_loop(strategy, model, optimizer, step, 8, base.Objective(),
                            l2=l2)(iter(ds), tf.constant(1))
      updates.append([b - w.numpy() for b, w in zip(before, model.trainable_variables)])
    for plain, decayed, w in zip(*updates, before):
      np.testing.assert_allclose(decayed - plain, 0.1 * w, atol=1e-6)
