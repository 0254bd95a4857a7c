"""The teacher cache with augmentation: outputs per training view, the same training as a
live teacher, on 1 and 2 replicas, shared by students whose views agree."""

import glob
import os

import numpy as np
import pytest

from conftest import DEFAULT, tiny_config, weights_of
from kd_research.train import end_to_end

AUGMENTED = {"augment.ops": ("flip", "crop", "mixup"), "student.epochs": 2}


def distil(tmp_path, name, teacher_file, strategy=DEFAULT, **overrides):
  config = tiny_config(**{**AUGMENTED, **overrides})
  result = end_to_end.train_and_evaluate(config, str(tmp_path / name), "distill", strategy,
                                         (teacher_file,))
  return result, weights_of(str(tmp_path / name))


def max_diff(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize("method", ["kd", "rkd"])  # rkd caches the 'pooled' feature too
def test_cached_views_train_like_the_live_teacher(tmp_path, teacher_file, method):
  live, live_w = distil(tmp_path, "live", teacher_file, **{"distill.method": method})
  cached, cached_w = distil(tmp_path, "cached", teacher_file, **{
      "distill.method": method, "distill.cache_teacher": True})
  views = glob.glob(str(tmp_path / "cached" / "teacher_cache" / "views-*" / "*.rows"))
  assert len(views) == (2 if method == "rkd" else 1)
  print(f"augmented {method}: cached views vs live teacher max |dw| "
        f"{max_diff(live_w, cached_w):.2e}")
  assert max_diff(live_w, cached_w) <= 1e-6
  assert cached["test_loss"] == pytest.approx(live["test_loss"], rel=1e-6)


def test_view_cache_on_two_replicas_and_shared_by_students(tmp_path, teacher_file,
                                                          strategy_factory):
  shared = {"distill.cache_teacher": True, "run.cache_dir": str(tmp_path / "shared")}
  _, one = distil(tmp_path, "one", teacher_file, **shared)
  files = glob.glob(str(tmp_path / "shared" / "views-*" / "cache.json"))
  assert len(files) == 1
  stamp = os.path.getmtime(files[0])
  _, two = distil(tmp_path, "two", teacher_file, strategy_factory(2), **shared)
  print(f"view cache, 1 vs 2 replicas: max |dw| {max_diff(one, two):.2e}")
  assert max_diff(one, two) < 1e-5
  # Another method at the same seed reads the same views; another seed makes its own.
  distil(tmp_path, "dist", teacher_file, **shared, **{"distill.method": "dist"})
  assert glob.glob(str(tmp_path / "shared" / "views-*" / "cache.json")) == files
  assert os.path.getmtime(files[0]) == stamp
  distil(tmp_path, "seed1", teacher_file, **shared, **{"student.seed": 1})
  assert len(glob.glob(str(tmp_path / "shared" / "views-*" / "cache.json"))) == 2


def test_dkd_with_mixed_labels_is_refused():
  from kd_research import run_spec
  from kd_research.common.errors import UserError
  with pytest.raises(UserError, match="dkd split.s. the target class"):
    run_spec.parse(tiny_config(**{**AUGMENTED, "distill.method": "dkd"}))


def test_float16_views_halve_the_disk(tmp_path, teacher_file):
  distil(tmp_path, "f32", teacher_file, **{"distill.cache_teacher": True})
  _, half = distil(tmp_path, "f16", teacher_file, **{"distill.cache_teacher": True,
                                                     "distill.cache_dtype": "float16"})
  size = {name: os.path.getsize(glob.glob(str(tmp_path / name / "teacher_cache" / "views-*"
                                                / "logits.rows"))[0]) for name in ("f32", "f16")}
  assert size["f16"] * 2 == size["f32"]


def test_top_k_views_keep_the_top_probabilities_and_the_tail_mass(tmp_path, teacher_file):
  import json
  import tensorflow as tf
  from kd_research.data import cache_rows
  logits = tf.constant(np.random.default_rng(0).normal(size=(6, 2, 10)) * 3, tf.float32)
  values, indices, tail = cache_rows.top_k(logits, 3)
  rebuilt = cache_rows.reconstruct(values, indices, tail, 10)
  p, q = tf.nn.softmax(logits).numpy(), tf.nn.softmax(rebuilt).numpy()
  top = np.take_along_axis(p, indices.numpy(), -1)
  np.testing.assert_allclose(np.take_along_axis(q, indices.numpy(), -1), top, atol=1e-6)
  rest = np.ones_like(p, bool)
  np.put_along_axis(rest, indices.numpy(), False, -1)
  np.testing.assert_allclose(q[rest].reshape(6, 2, 7), np.repeat(
      (1 - top.sum(-1, keepdims=True)) / 7, 7, -1), atol=1e-6)
  # A run on top-3 views learns (it stores 3 + 3 + 1 numbers per teacher and view); mixup
  # alone, since flips and crops make the synthetic classes unlearnable in 2 epochs.
  result, _ = distil(tmp_path, "top3", teacher_file, **{
      "distill.cache_teacher": True, "distill.cache_topk": 3, "augment.ops": ("mixup",)})
  meta = json.load(open(glob.glob(str(tmp_path / "top3" / "teacher_cache" / "views-*" /
                                      "cache.json"))[0]))
  assert meta["shapes"]["topk_values"][-1] == 3 and meta["dtypes"]["topk_indices"] == "int32"
  assert result["test_accuracy"] > 0.5  # chance: 0.1
