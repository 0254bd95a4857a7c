"""Mixed float16 with dynamic loss scaling: overflow steps are skipped, results track fp32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research.train import end_to_end
from kd_research.models import registry as model_registry
from kd_research.train import optimizers
from kd_research.common import schedules
from kd_research.methods import base
from kd_research.train import steps
from conftest import DEFAULT, tiny_config
from conftest import read_scalars, weights_of



@pytest.fixture
def float16_policy():
  keras.mixed_precision.set_global_policy("mixed_float16")
  yield
  keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("replicas", [1, 2])
def test_overflow_step_is_skipped_and_scale_halved(strategy_factory, float16_policy, replicas):
  """A loss scale so large that float16 gradients overflow: the update is skipped (weights
  and Adam moments unchanged), the scale halves, the step is counted as skipped; once the
  scale is small enough the same loop updates the weights."""
  strategy = strategy_factory(replicas)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (16, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 3, 16).astype(np.int32)
  with strategy.scope():
    keras.utils.set_random_seed(0)
    model = model_registry.build("mlp", (4, 4, 1), 3, width=8)
    opt = optimizers.make_optimizer(tiny_config().optimizer, schedules.Schedule("constant", 1, 1e-2),
                              loss_scale=(2.0 ** 100, 1000))
    opt.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
  assert model.layers[-1].compute_dtype == "float32" and model.layers[2].compute_dtype == "float16"
  ds = strategy.experimental_distribute_dataset(
      tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat())
  iterator = iter(ds)
  objective = base.Objective()
  layout = steps.train_layout(objective.terms_names)
  run = steps.make_train_loop(strategy, model, opt, step, 16, objective)
  before = [w.numpy().copy() for w in model.trainable_weights]
  sums = layout.unpack(run(iterator, tf.constant(1)))
  assert sums["skipped"] == pytest.approx(1.0) and sums["grad_norm"] == 0.0
  assert float(opt.dynamic_scale.numpy()) == 2.0 ** 99
  for a, b in zip(before, model.trainable_weights):
    np.testing.assert_array_equal(a, b.numpy())
  # Halving continues until the scaled float16 gradients fit; then updates resume and
  # (growth every 1000 steps) the scale stays: scale = 2^100 / 2^(skipped steps).
  sums = layout.unpack(run(iterator, tf.constant(100)))
  assert 10 < sums["skipped"] < 100
  assert float(opt.dynamic_scale.numpy()) == 2.0 ** (100 - 1 - round(sums["skipped"]))
  assert any(np.abs(a - b.numpy()).max() > 0 for a, b in zip(before, model.trainable_weights))
  assert all(np.isfinite(w.numpy()).all() for w in model.trainable_weights)


def test_float16_run_tracks_float32(tmp_path):
  """A whole float16 run (loss scaling on) ends near the float32 run: same accuracy within
  2 points, weights within 0.05, float32 master weights, loss scale logged."""
  results = {}
  for precision in ("none", "fp16"):
    config = tiny_config(**{"student.epochs": 2, "mixed_precision": precision})
    results[precision] = end_to_end.train_and_evaluate(config, str(tmp_path / precision), "student",
                                              DEFAULT)
  assert results["fp16"]["test_accuracy"] == pytest.approx(results["none"]["test_accuracy"], abs=0.02)
  diffs = [float(np.abs(a - b).max()) for a, b in
           zip(weights_of(str(tmp_path / "none")), weights_of(str(tmp_path / "fp16")))]
  print(f"fp16 vs fp32: max |dw| {max(diffs):.2e}, accuracy {results['fp16']['test_accuracy']} vs "
        f"{results['none']['test_accuracy']}")
  assert max(diffs) < 0.05
  assert all(w.dtype == np.float32 for w in weights_of(str(tmp_path / "fp16")))
  scalars = read_scalars(str(tmp_path / "fp16"))
  assert [v for _, v in scalars["train/loss_scale"]][0] == 2.0 ** 15
  assert "train/loss_scale" not in read_scalars(str(tmp_path / "none"))
