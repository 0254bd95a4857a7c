"""Multi-teacher distillation, teacher monitoring and the teacher-output cache."""

import json
import glob
import os

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from kd_research import config as config_lib
from kd_research import run_spec
from kd_research.common import metrics
from kd_research.train import end_to_end
from kd_research.campaign import pipeline
from kd_research.train import teacher_cache
from kd_research.common.errors import UserError
from conftest import DEFAULT, load_experiment, tiny_config



def three_teacher_config(**overrides):
  config = tiny_config(**overrides)
  with config.unlocked():
    config.extra_teachers = ml_collections.ConfigDict({
        "b": config_lib.model_config("mlp", width=48, epochs=2, seed=1),
        "c": config_lib.model_config("mlp", width=96, epochs=1, seed=2)})
  return config


@pytest.fixture(scope="module")
def multi_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("multi"))
  config = three_teacher_config(**{"distill.teacher_weights": (2.0, 1.0, 1.0)})
  run_spec.parse(config)
  results, table = pipeline.run(config, workdir, DEFAULT)
  return workdir, results, table


def test_multi_teacher_pipeline_table(multi_run):
  workdir, results, table = multi_run
  for stage in ("teacher", "teacher_b", "teacher_c", "teacher_ensemble", "student_baseline",
                "student_kd", "student_kd_multi"):
    assert stage in results, stage
  rows = {line.split(" | ")[-2]: line for line in table.splitlines() if line.startswith("| ")}
  assert "teacher: mlp w48 (seed 1)" in rows["teacher_b"]
  assert "teacher: mlp w96 (seed 2)" in rows["teacher_c"]
  assert "| teacher ensemble (3: teacher, teacher_b, teacher_c; prob_mean) |" in table
  assert "1 teacher(s)" in rows["student_kd"] and "3 teacher(s)" in rows["student_kd_multi"]
  single = json.load(open(os.path.join(workdir, "student_kd", "config.json")))
  multi = json.load(open(os.path.join(workdir, "student_kd_multi", "config.json")))
  assert len(single["teachers"]) == 1 and len(multi["teachers"]) == 3
  assert multi["distill"]["teacher_weights"] == [2.0, 1.0, 1.0]


def test_teacher_report_matches_numpy(multi_run):
  workdir, results, _ = multi_run
  report = results["student_kd_multi"]["teachers"]
  assert report["weights"] == pytest.approx([0.5, 0.25, 0.25])
  # Each teacher's test accuracy equals what its own run measured.
  for k, stage in enumerate(("teacher", "teacher_b", "teacher_c")):
    assert report["test"]["accuracy"][k] == pytest.approx(results[stage]["test_accuracy"],
                                                          abs=1e-9)
  # The ensemble and agreement from the teachers' saved models, in NumPy.
  from kd_research.data import datasets
  splits = datasets.load_splits(datasets.data_spec(tiny_config()))
  images, labels = splits.test.images, splits.test.labels
  probs = []
  for stage in ("teacher", "teacher_b", "teacher_c"):
    model = keras.models.load_model(os.path.join(workdir, stage, "model.keras"), compile=False)
    probs.append(tf.nn.softmax(model(images.astype(np.float32))).numpy())
  ensemble = 0.5 * probs[0] + 0.25 * probs[1] + 0.25 * probs[2]
  assert report["test"]["ensemble_accuracy"] == pytest.approx(
      (ensemble.argmax(1) == labels).mean(), abs=1e-9)
  agree = (probs[0].argmax(1) == probs[2].argmax(1)).mean()
  assert report["test"]["pairwise_agreement"][0][2] == pytest.approx(agree, abs=1e-9)
  assert report["test"]["pairwise_agreement"][1][1] == 1.0
  assert results["student_kd_multi"]["teacher_test_accuracy"] == pytest.approx(
      report["test"]["ensemble_accuracy"], abs=1e-9)


def test_expected_calibration_error_small_case():
  probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
  labels = np.array([0, 1, 1, 0])
  # Bins (15): 0.9 -> bin 13, 0.8 -> bin 11, 0.7 -> bin 10, 0.6 -> bin 8; one example each.
  want = 0.25 * (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.7) + abs(1 - 0.6))
  assert metrics.expected_calibration_error(probs, labels) == pytest.approx(want)


@pytest.mark.parametrize("replicas", [1, 2])
def test_cached_and_live_teacher_distil_identically(multi_run, tmp_path, replicas,
                                                    strategy_factory):
  workdir = multi_run[0]
  paths = tuple(os.path.join(workdir, s, "model.keras")
                for s in ("teacher", "teacher_b", "teacher_c"))
  strategy = strategy_factory(replicas)
  results = {}
  for cache in (False, True):
    config = three_teacher_config(**{"student.epochs": 1, "distill.cache_teacher": cache,
                                     "distill.combine": "kl_sum"})
    results[cache] = end_to_end.train_and_evaluate(config, str(tmp_path / f"c{cache}"), "distill",
                                          strategy, paths)
  assert len(glob.glob(str(tmp_path / "cTrue" / "teacher_cache" / "train-*.npz"))) == 1
  weights = {c: keras.models.load_model(str(tmp_path / f"c{c}" / "model.keras"),
                                        compile=False).weights for c in (False, True)}
  diff = max(float(np.max(np.abs(a.numpy() - b.numpy())))
             for a, b in zip(weights[False], weights[True]))
  print(f"{replicas} replica(s): cached vs live max |dw| = {diff:.2e}")
  assert diff < 1e-5
  assert results[True]["test_loss"] == pytest.approx(results[False]["test_loss"], rel=1e-5)


def test_stale_or_corrupt_cache_is_rebuilt(multi_run, tmp_path):
  from kd_research.train import teachers as teachers_lib
  workdir = multi_run[0]
  path = os.path.join(workdir, "teacher", "model.keras")
  ensemble = teachers_lib.load([path], (28, 28, 1), 10)
  images = np.random.default_rng(0).integers(0, 255, (50, 28, 28, 1)).astype(np.uint8)
  cache_dir = str(tmp_path / "cache")
  digest = teacher_cache.fingerprint([path], images, "none", "prob_mean")
  fresh = teacher_cache.load_or_compute(cache_dir, "train", ensemble, images, digest)
  np.testing.assert_allclose(fresh, teacher_cache.compute_logits(ensemble, images), rtol=1e-6)
  # A cache written for other data has another fingerprint and is recomputed.
  other = teacher_cache.fingerprint([path], images[::-1].copy(), "none", "prob_mean")
  assert other != digest
  cached = teacher_cache.cache_path(cache_dir, "train", digest)
  np.savez(cached, logits=np.zeros_like(fresh), fingerprint=np.array(other))
  np.testing.assert_allclose(
      teacher_cache.load_or_compute(cache_dir, "train", ensemble, images, digest), fresh)
  # A truncated file is detected and rebuilt.
  with open(cached, "r+b") as f:
    f.truncate(100)
  np.testing.assert_allclose(
      teacher_cache.load_or_compute(cache_dir, "train", ensemble, images, digest), fresh)
  with np.load(cached) as f:
    assert str(f["fingerprint"]) == digest
  # A shared cache dir keeps the outputs of different teacher sets side by side.
  two = teacher_cache.fingerprint([path, path], images, "none", "prob_mean")
  teacher_cache.load_or_compute(cache_dir, "train", teachers_lib.load([path, path], (28, 28, 1),
                                                                      10), images, two)
  assert len(glob.glob(os.path.join(cache_dir, "train-*.npz"))) == 2
  np.testing.assert_allclose(
      teacher_cache.load_or_compute(cache_dir, "train", ensemble, images, digest), fresh)


@pytest.mark.parametrize("weights,match", [((1.0, -1.0, 1.0), "non-negative"),
                                           ((0.0, 0.0, 0.0), "positive sum"),
                                           ((1.0, 1.0), "2 teacher weights for 3 teachers")])
def test_bad_teacher_weights_in_config(weights, match):
  with pytest.raises(UserError, match=match):
    run_spec.parse(three_teacher_config(**{"distill.teacher_weights": weights}))


def test_multi_teacher_experiment_validates():
  config = load_experiment("fashion_mnist_multi_teacher")
  run_spec.parse(config)
  assert len(config_lib.teacher_entries(config)) >= 3
