"""keras.applications teachers: building, head-then-backbone fine-tuning, offline weights."""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research.train import end_to_end
from kd_research.models import registry as model_registry
from kd_research.models import pretrained
from kd_research.methods import base
from kd_research.train import steps as steps_lib
from kd_research.common.errors import UserError
from conftest import DEFAULT, load_experiment, tiny_config



@pytest.mark.parametrize("name", ["resnet50_keras", "mobilenetv2", "efficientnetb0"])
def test_application_teachers_build_at_small_size(name):
  model = model_registry.build(name, (28, 28, 1), 10, image_size=32)
  out = model(np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32))
  assert out.shape == (2, 10) and out.dtype == "float32"
  assert model.get_layer(pretrained.BACKBONE_NAME).input_shape[1:] == (32, 32, 3)


def _snapshot(model):
  return {w.path: w.numpy().copy() for w in model.weights}


def _changed(before, model):
  return {w.path for w in model.weights if not np.array_equal(before[w.path], w.numpy())}


def _finetune_steps(model, phase, unfreeze_top, freeze_bn, steps=2):
  """Runs ``steps`` SGD steps in ``phase``; returns the set of variables that changed."""
  opt = keras.optimizers.SGD(0.1)
  pretrained.set_trainable(model, "finetune", unfreeze_top, freeze_bn)
  opt.build(model.trainable_variables)
  pretrained.set_trainable(model, phase, unfreeze_top, freeze_bn)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (16, 28, 28, 1)).astype(np.float32),
           "label": rng.integers(0, 10, 16).astype(np.int32)}
  ds = tf.data.Dataset.from_tensors(batch).repeat()
  before = _snapshot(model)
  step = tf.Variable(0, dtype=tf.int64)
  steps_lib.make_train_loop(DEFAULT, model, opt, step, 16, base.Objective())(
      iter(ds), tf.constant(steps))
  return _changed(before, model)


def test_head_then_top_blocks_fine_tuning(tmp_path):
  keras.utils.set_random_seed(0)
  model = model_registry.build("mobilenetv2", (28, 28, 1), 10, image_size=32)
  backbone = model.get_layer(pretrained.BACKBONE_NAME)
  top = {w.path for layer in backbone.layers[-12:] for w in layer.weights}
  head = {w.path for w in model.get_layer("logits").weights}
  # Random init: BatchNorm trains with the unfrozen top layers; nothing below them moves.
  changed = _finetune_steps(model, "finetune", 12, freeze_bn=False)
  assert changed - head and changed <= top | head
  assert any("moving_mean" in p for p in changed)
  # Those backbone weights now serve as 'pretrained' weights loaded from a file.
  path = str(tmp_path / "backbone.weights.h5")
  backbone.save_weights(path)
  keras.utils.set_random_seed(1)
  tuned = model_registry.build("mobilenetv2", (28, 28, 1), 10, image_size=32, weights=path)
  head = {w.path for w in tuned.get_layer("logits").weights}
  changed = _finetune_steps(tuned, "head", 12, freeze_bn=True)
  assert changed and changed <= head  # Head-only warm-up.
  changed = _finetune_steps(tuned, "finetune", 12, freeze_bn=True)
  assert changed - head and changed <= top | head
  # Pretrained weights: BatchNorm stays frozen (statistics and scale/offset unchanged).
  assert not any("_bn" in p.lower() or "BN" in p for p in changed - head)


def test_pretrained_teacher_pipeline_under_mirrored(tmp_path, strategy_factory):
  config = tiny_config(**{"train_size": 256, "teacher.model": "mobilenetv2",
                          "teacher.image_size": 32, "teacher.epochs": 2,
                          "teacher.head_epochs": 1, "teacher.unfreeze_top": 20,
                          "student.epochs": 1,
                          # 8 steps from random init: plumbing only, not a useful teacher.
                          "run.allow_weak_teacher": True})
  start = time.time()
  teacher = end_to_end.train_and_evaluate(config, str(tmp_path / "t"), "teacher", DEFAULT)
  print(f"mobilenetv2 at 32x32: 2 epochs of 256 examples in {time.time() - start:.1f} s")
  assert teacher["steps"] == 8
  kd = end_to_end.train_and_evaluate(config, str(tmp_path / "kd"), "distill", strategy_factory(2),
                                     (str(tmp_path / "t" / "model.keras"),))
  assert kd["replicas"] == 2 and kd["teacher_test_accuracy"] == pytest.approx(
      teacher["test_accuracy"], abs=1e-9)


def test_imagenet_weights_offline_fail_fast(monkeypatch):
  attempts = []

  def no_network(*args, **kwargs):
    attempts.append(args)
    raise Exception("URL fetch failure: no network")

  monkeypatch.setattr("keras.src.utils.file_utils.get_file", no_network)
  monkeypatch.setenv("KERAS_HOME", "/nonexistent-keras-home")
  with pytest.raises(UserError, match="weights='imagenet' need a download"):
    model_registry.build("mobilenetv2", (28, 28, 1), 10, image_size=32, weights="imagenet")
  assert len(attempts) == 1  # Fails on the first refused download: no retry loop.
  with pytest.raises(UserError, match="does not exist"):
    model_registry.build("mobilenetv2", (28, 28, 1), 10, image_size=32, weights="/no/such.h5")


def test_local_weights_file(tmp_path):
  keras.utils.set_random_seed(1)
  source = keras.applications.MobileNetV2(include_top=False, weights=None,
                                          input_shape=(32, 32, 3), pooling="avg")
  path = str(tmp_path / "mobilenet_notop.weights.h5")
  source.save_weights(path)
  model = model_registry.build("mobilenetv2", (28, 28, 1), 10, image_size=32, weights=path)
  backbone = model.get_layer(pretrained.BACKBONE_NAME)
  for a, b in zip(source.weights, backbone.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_head_epochs_needs_an_application():
  from kd_research import run_spec
  with pytest.raises(UserError, match="pretrained backbone"):
    run_spec.parse(tiny_config(**{"teacher.head_epochs": 1}))
  run_spec.parse(load_experiment("fashion_mnist_pretrained_teacher"))


def test_application_teachers_expose_stage_taps_after_save_and_load(tmp_path):
  from kd_research.models import taps  # pylint: disable=g-import-not-at-top
  model = model_registry.build("mobilenetv2", (28, 28, 1), 10, image_size=32)
  path = str(tmp_path / "app.keras")
  model.save(path)
  loaded = keras.models.load_model(path, safe_mode=True, compile=False)
  assert taps.stage_names(loaded) == ("stage1", "stage2", "stage3", "stage4")
  assert taps.resolve(loaded, "middle_stage", "teacher") == "stage2"
  x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
  logits, stage4, pooled = taps.feature_model(loaded, ("stage4", "pooled"))(x)
  np.testing.assert_allclose(logits, model(x), atol=1e-5)
  # The pooled feature is the global average of the last stage (one forward pass).
  np.testing.assert_allclose(pooled, np.mean(stage4, axis=(1, 2)), atol=1e-5)
