"""FitNets: the hint against NumPy; the connector trains, resumes exactly, stays out of the
exported model; the hint stage and one connector per teacher."""

import os

import keras
import numpy as np
import tensorflow as tf

from kd_research.methods import fitnets as fitnets_lib
from kd_research.train import end_to_end
from conftest import DEFAULT, check, interrupt_then_resume, method_config, read_scalars
from conftest import weights_of
from method_references import case


def test_hint_matches_numpy():
  _, _, _, fs, _ = case(5)
  check("fitnets", fitnets_lib.hint(fs, fs[..., ::-1] * 2), ((fs - fs[..., ::-1] * 2) ** 2).mean((1, 2, 3)))
  np.testing.assert_allclose(fitnets_lib.hint(fs, fs).numpy(), 0.0, atol=1e-7)


def test_fitnets_connector_trains_resumes_exactly_and_is_not_exported(conv_teacher, tmp_path,
                                                                       monkeypatch):
  config = method_config("fitnets", **{"student.epochs": 2})
  full = str(tmp_path / "full")
  results = end_to_end.train_and_evaluate(config, full, "distill", DEFAULT, (conv_teacher,))
  # Connector: 1x1 conv 8 -> 16 channels (student stage1 to teacher stage2) + BatchNorm.
  assert results["extra_params"] == 8 * 16 + 4 * 16
  exported = keras.models.load_model(os.path.join(full, "model.keras"), compile=False)
  assert exported.count_params() == results["params"]
  ckpt = tf.train.latest_checkpoint(os.path.join(full, "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(ckpt)]
  assert any(n.startswith("objective/") for n in names)  # Connectors are checkpointed.
  cut = str(tmp_path / "cut")
  interrupt_then_resume(config, cut, conv_teacher, monkeypatch, stop_after=35,
                        expected_checkpoint=20)
  for a, b in zip(weights_of(full), weights_of(cut)):
    np.testing.assert_array_equal(a, b)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(cut, "checkpoints")))
  for name in [n for n in names if n.startswith("objective/") and "OPTIMIZER" not in n]:
    np.testing.assert_array_equal(tf.train.load_checkpoint(ckpt).get_tensor(name),
                                  reader.get_tensor(name))


def test_fitnets_hint_stage_and_two_teachers(conv_teacher, tmp_path):
  config = method_config("fitnets", **{"student.epochs": 2, "distill.fitnets.hint_epochs": 1})
  results = end_to_end.train_and_evaluate(config, str(tmp_path / "hint"), "distill", DEFAULT,
                                          (conv_teacher, conv_teacher))
  assert results["extra_params"] == 2 * (8 * 16 + 4 * 16)  # One connector per teacher.
  scalars = read_scalars(str(tmp_path / "hint"))
  ce = dict(scalars["train/loss_ce"])
  assert ce[10] == 0.0 and ce[max(ce)] > 0  # The hint stage has no CE term.
