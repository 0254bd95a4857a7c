"""End to end on the real Fashion-MNIST files: the pipeline command on a small subset."""

import json
import os

from tensorboard.backend.event_processing import event_accumulator

from conftest import TF_CHATTER, run_main
from generated_data import write_fake_cifar10, write_fake_cifar100


def test_pipeline_on_real_fashion_mnist(tmp_path):
  """The pipeline command as a user runs it (TF's log level unset): the run's own lines
  only, no TensorFlow/TFLite chatter (a student is exported, so the converter and the
  interpreter run), the table last with where its files are; every stage's files, the
  real test split, results.json and the deployed columns of results.md."""
  workdir = str(tmp_path / "pipeline")
  quiet_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  out = run_main("pipeline", "--experiment=fashion_mnist:quick", f"--workdir={workdir}",
                 "--config.train_size=8000", "--config.validation_size=2000",
                 "--config.teacher.model=mlp", "--config.teacher.width=256",
                 "--config.student.model=mlp", "--config.student.width=32",
                 "--config.teacher.epochs=3", "--config.student.epochs=3",
                 "--config.run.log_every_steps=50", env=quiet_env)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "vs labels only" in out.stdout and "results.md (the full table" in out.stdout
  printed = out.stdout + out.stderr
  assert not [c for c in TF_CHATTER if c in printed], printed[:3000]
  assert "teacher finished: test accuracy" in out.stderr
  assert out.stdout.rstrip().splitlines()[-3].startswith("Files: ")
  assert len(printed.splitlines()) < 60, printed
  stages = {}
  for stage in ("teacher", "student_baseline", "student_kd"):
    run = os.path.join(workdir, stage)
    for name in ("config.json", "results.json", "model.keras", "saved_model/saved_model.pb"):
      assert os.path.exists(os.path.join(run, name)), (stage, name)
    stages[stage] = json.load(open(os.path.join(run, "results.json")))
    assert stages[stage]["test_count"] == 10000  # The whole real test split.
    assert stages[stage]["steps"] == 3 * (8000 // 128)
    acc = event_accumulator.EventAccumulator(run)
    acc.Reload()
    assert "eval/accuracy" in acc.Tags()["tensors"]
  assert stages["teacher"]["test_accuracy"] > 0.75
  for stage, row in stages.items():  # The terminal summary prints what results.json holds.
    assert f"{100 * row['test_accuracy']:.2f}%" in out.stdout.split(stage, 1)[1].splitlines()[0]
  assert stages["student_kd"]["test_accuracy"] > 0.6  # Far above the 10% of chance.
  assert stages["student_kd"]["teacher_test_accuracy"] == stages["teacher"]["test_accuracy"]
  summary = json.load(open(os.path.join(workdir, "results.json")))
  assert set(summary) == {"teacher", "student_baseline", "student_kd"}
  table = open(os.path.join(workdir, "results.md")).read()
  runs_table = table.split("\n\n")[1]
  assert sum(l.startswith("| ") for l in runs_table.splitlines()) == 4  # header + 3 rows
  assert "| distill: mlp w32, 1 teacher(s), kd, alpha 0.5, T 2, " in table and " KB " in table
  kd = stages["student_kd"]
  export = json.load(open(os.path.join(workdir, "student_kd", "export", "export_report.json")))
  int8 = export["artifacts"]["tflite_int8"]["test_accuracy"]
  assert f"| {100 * int8:.2f}% |" in table  # The deployed columns come from the export.
  assert abs(int8 - kd["test_accuracy"]) < 0.03


def test_cifar10_seed_experiment_on_generated_miniature(tmp_path):
  write_fake_cifar10(str(tmp_path / "data" / "cifar-10-batches-py"), per_batch=40, test=40)
  out = run_main("pipeline", "--experiment=cifar10_article:mini", f"--workdir={tmp_path}/run",
                 f"--config.run.data_dir={tmp_path}/data",
                 "--config.pipeline.export_students=false")  # Export: test_export.py.
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.load(open(os.path.join(tmp_path, "run", "results.json")))
  assert results["student_kd"]["test_count"] == 40
  assert results["teacher"]["steps"] == (200 - 20) // 16


def test_cifar100_benchmark_mini_on_generated_data(tmp_path):
  """The CIFAR-100 protocol end to end (SGD + coupled L2, piecewise lr, crop + flip with a
  live teacher, kd and crd students) on a generated CIFAR-100 miniature."""
  write_fake_cifar100(str(tmp_path / "data" / "cifar-100-python"))
  out = run_main("pipeline", "--experiment=cifar100_benchmark:mini", f"--workdir={tmp_path}/run",
                 f"--config.run.data_dir={tmp_path}/data")
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.load(open(os.path.join(tmp_path, "run", "results.json")))
  assert set(results) == {"teacher", "student_baseline", "student_kd_kd", "student_kd_crd"}
  assert results["student_kd_crd"]["test_count"] == 40
  assert results["student_kd_crd"]["extra_trainable_params"] > 0
  identity = json.load(open(os.path.join(tmp_path, "run", "student_kd_crd", "seed_0",
                                         "config.json")))
  assert identity["optimizer"]["l2"] == 5e-4 and identity["dataset"] == "cifar100"
