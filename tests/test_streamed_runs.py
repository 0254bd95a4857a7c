"""Whole runs on streamed file sources: folder:, tfrecord: and tfds: end to end from the
command line, a SIGKILL mid-run resumed bit-identical, 1/2/4 replicas alike, 2 workers."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEFAULT, ENV, REPO, kill_after_checkpoint, tiny_config, weights_of
from generated_data import write_image_folder, write_tfds_dataset
from kd_research.tools import tfrecord_shards
from kd_research.train import end_to_end

STREAMED = {"image_size": 12, "validation_size": 12, "global_batch_size": 12,
            "run.eval_batch_size": 24, "data.train_view": "inception",
            "optimizer.learning_rate.start": 0.01}


def flags(values):
  return [f"--config.{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """An image folder (3 classes, brightness = class), its TFRecord conversion, a TFDS copy
  of the same kind of data, and a teacher trained on the shards."""
  root = tmp_path_factory.mktemp("streamed")
  folder = write_image_folder(str(root / "images"), train=36)
  tfrecord_shards.convert(f"folder:{folder}", str(root / "shards"), shards=4)
  write_tfds_dataset(root / "tfds")
  teacher_dir = str(root / "teacher")
  config = tiny_config(**{**STREAMED, "dataset": f"tfrecord:{root / 'shards'}",
                          "teacher.epochs": 16, "data.train_view": "center"})
  result = end_to_end.train_and_evaluate(config, teacher_dir, "teacher", DEFAULT)
  assert result["test_accuracy"] > 0.9, result["test_accuracy"]  # chance is 1/3
  return {"folder": f"folder:{folder}", "tfrecord": f"tfrecord:{root / 'shards'}",
          "tfds": "tfds:kd_toy", "tfds_dir": str(root / "tfds"),
          "teacher": os.path.join(teacher_dir, "model.keras")}


def distill_args(data, dataset, workdir, **extra):
  values = dict(STREAMED, dataset=dataset, **{"teacher.path": data["teacher"],
                                             "data.tfds_dir": data["tfds_dir"]}, **extra)
  return [sys.executable, "-m", "kd_research.main", "distill",
          "--experiment=fashion_mnist:tiny", f"--workdir={workdir}"] + flags(values)


def check_streamed_run(workdir, data, kind):
  """A finished distillation run on source ``kind``: its splits, test count, classes."""
  results = json.load(open(workdir / "results.json"))
  assert results["dataset"] == data[kind]
  assert results["data"]["examples"]["validation"] == 12
  assert results["test_count"] == (27 if kind != "tfds" else 15)
  assert results["teacher_test_accuracy"] > 0.6
  classes = json.load(open(workdir / "classes.json"))["classes"]
  assert classes == (["class_0", "class_1", "class_2"] if kind != "tfds"
                     else ["dark", "mid", "bright"])
  return results


# TFRecord shards end to end: the SIGKILL test's uninterrupted run below checks them.
@pytest.mark.parametrize("kind", ["folder", "tfds"])
def test_distill_end_to_end_from_each_source(tmp_path, data, kind):
  done = subprocess.run(distill_args(data, data[kind], tmp_path / "run"), cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  results = check_streamed_run(tmp_path / "run", data, kind)
  if kind == "folder":  # eval and export find the run's streamed data from its config.json
    out = {}
    for command in ("eval", "export"):
      done = subprocess.run([sys.executable, "-m", "kd_research.main", command,
                             "--experiment=fashion_mnist:tiny", f"--workdir={tmp_path / 'run'}"],
                            cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
      assert done.returncode == 0, done.stderr[-3000:]
      out[command] = done.stdout
    assert f"test accuracy {100 * results['test_accuracy']:.2f}% over 27" in out["eval"]
    assert "| tflite_int8 |" in out["export"]


def test_sigkill_mid_run_resumes_bit_identical_on_shards(tmp_path, data):
  """A distillation run on TFRecord shards end to end (its splits, classes), then killed
  mid-epoch and rerun: bit-identical to the uninterrupted run."""
  extra = {"student.epochs": 6, "run.checkpoint_every_steps": 8, "run.steps_per_loop": 2,
           "deterministic": "true", "augment.ops": "('flip','cutout')"}
  full, cut = tmp_path / "full", tmp_path / "cut"
  done = subprocess.run(distill_args(data, data["tfrecord"], full, **extra), cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  check_streamed_run(full, data, "tfrecord")  # TFRecord shards end to end
  # Killed mid-epoch (8 steps per epoch) after a checkpoint of step >= 20.
  killed_at = kill_after_checkpoint(distill_args(data, data["tfrecord"], cut, **extra),
                                    str(cut / "checkpoints"), 20)
  resumed = subprocess.run(distill_args(data, data["tfrecord"], cut, **extra), cwd=REPO,
                           env=ENV, capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "Resumed" in resumed.stderr
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(weights_of(full), weights_of(cut))]
  print(f"streamed: killed after checkpoint {killed_at} of 48; max |dw| {max(diffs)}")
  assert max(diffs) == 0.0


@pytest.mark.parametrize("replicas", [4])  # 1, 2, 4 alike batch for batch: test_streams.py
def test_replica_count_does_not_change_a_streamed_run(tmp_path, data, strategy_factory,
                                                      replicas):
  config = tiny_config(**STREAMED, dataset=data["tfrecord"],
                       **{"student.epochs": 2, "teacher.path": data["teacher"]})
  one = end_to_end.train_and_evaluate(config, str(tmp_path / "one"), "distill", DEFAULT,
                                      (data["teacher"],))
  many = end_to_end.train_and_evaluate(config, str(tmp_path / "many"), "distill",
                                       strategy_factory(replicas), (data["teacher"],))
  diffs = [float(np.max(np.abs(a - b))) for a, b in
           zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "many")))]
  print(f"streamed, 1 vs {replicas} replicas: max |dw| {max(diffs):.2e}")
  assert max(diffs) < 1e-5
  assert many["test_loss"] == pytest.approx(one["test_loss"], rel=1e-5)


def test_two_workers_train_on_shards(tmp_path, data):
  args = distill_args(data, data["tfrecord"], tmp_path / "mw")
  args[3:3] = ["multiworker", "--num_workers=2"]
  done = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / "mw" / "results.json"))
  assert results["replicas"] == 2 and results["test_count"] == 27
  # 4 shards of 27, one cut to 15 by the validation carve: the worker with 27 + 15 records
  # sets the epoch at 42 // 6 = 7 steps (single-worker runs: 96 // 12 = 8).
  assert results["steps"] == 2 * 7


@pytest.mark.parametrize("method,view", [("kd", "center"), ("rkd", "center"),
                                         ("kd", "inception")])
def test_teacher_cache_on_shards_matches_the_live_teacher(tmp_path, data, method, view):
  """rkd also caches the 'pooled' feature; the inception crop changes every step, so its
  cache holds the teacher's outputs per training view."""
  import glob
  results = {}
  for cache in (False, True):
    config = tiny_config(**{**STREAMED, "dataset": data["tfrecord"],
                            "data.train_view": view, "student.epochs": 2,
                            "distill.method": method, "distill.cache_teacher": cache})
    results[cache] = end_to_end.train_and_evaluate(config, str(tmp_path / f"c{cache}"), "distill",
                                                   DEFAULT, (data["teacher"],))
  kind = "train" if view == "center" else "views"
  cached = glob.glob(str(tmp_path / "cTrue" / "teacher_cache" / f"{kind}-*" / "*.rows"))
  assert len(cached) == (2 if method == "rkd" else 1)  # row files, not an in-memory npz
  diffs = [float(np.max(np.abs(a - b))) for a, b in
           zip(weights_of(str(tmp_path / "cFalse")), weights_of(str(tmp_path / "cTrue")))]
  print(f"streamed {method}, {view} view: cached vs live teacher max |dw| {max(diffs):.2e}")
  assert max(diffs) < 1e-5
  assert results[True]["test_loss"] == pytest.approx(results[False]["test_loss"], rel=1e-5)


def test_imagenet_benchmark_mini_on_a_generated_jpeg_folder(tmp_path, data):
  """The ImageNet protocol end to end (torchvision-layout resnet18 teacher, MobileNet-V1
  student, SGD + coupled L2, piecewise lr, inception crop seen by teacher and student, a
  kd student) on the generated image folder; then the deit_mini preset distilled from its
  teacher."""
  done = subprocess.run([sys.executable, "-m", "kd_research.main", "pipeline",
                         "--experiment=imagenet_benchmark:mini", f"--workdir={tmp_path}/run",
                         f"--config.dataset={data['folder']}"], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.load(open(tmp_path / "run" / "results.json"))
  assert set(results) == {"teacher", "student_baseline", "student_kd_kd"}
  assert results["student_kd_kd"]["test_count"] == 27
  identity = json.load(open(tmp_path / "run" / "student_kd_kd" / "seed_0" / "config.json"))
  assert identity["model"]["model"] == "mobilenetv1" and identity["optimizer"]["l2"] == 1e-4
  assert identity["data"]["train_view"] == "inception" and identity["image_size"] == 32
  assert identity["distill"]["alpha"]["start"] == 0.5
  report = subprocess.run([sys.executable, "-m", "kd_research.main", "report",
                           f"--workdir={tmp_path}/run", f"--output={tmp_path}/report.md",
                           "--claims=imagenet_benchmark"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
  assert report.returncode == 0, report.stderr[-3000:]
  text = open(tmp_path / "report.md").read()
  assert "NOT measured here" in text and "| ResNet-34 -> ResNet-18 | 73.31 | 69.76 | 71.03 (a)" in text
  # DeiT's recipe (deit_mini: vit_mini_distilled, randaugment, erase, mixup + cutmix, drop
  # path, AdamW) distilled from that pipeline's teacher through the distillation token.
  deit = subprocess.run([sys.executable, "-m", "kd_research.main", "distill",
                         "--experiment=imagenet_benchmark:deit_mini",
                         f"--workdir={tmp_path}/deit",
                         f"--config.dataset={data['folder']}",
                         f"--config.teacher.path={tmp_path}/run/teacher/model.keras"],
                        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert deit.returncode == 0, deit.stderr[-3000:]
  identity = json.load(open(tmp_path / "deit" / "config.json"))
  assert identity["model"]["model"] == "vit_mini_distilled"
  assert identity["model"]["drop_path"] == 0.1 and identity["augment"]["erase_prob"] == 0.25
  assert identity["distill"]["method"] == "deit" and identity["optimizer"]["name"] == "adamw"
