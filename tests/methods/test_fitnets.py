"""FitNets: the hint against NumPy; the connector trains, is checkpointed (its exact resume is
tests/train/test_reliability.py's), stays out of the exported model; the hint stage and one
connector per teacher."""

import os

import keras
import numpy as np
import tensorflow as tf

from kd_research.methods import fitnets as fitnets_lib
from kd_research.train import end_to_end
from conftest import DEFAULT, check, method_config, read_scalars
from method_references import case


def test_hint_matches_numpy():
  _, _, _, fs, _ = case(5)
  check("fitnets", fitnets_lib.hint(fs, fs[..., ::-1] * 2), ((fs - fs[..., ::-1] * 2) ** 2).mean((1, 2, 3)))
  np.testing.assert_allclose(fitnets_lib.hint(fs, fs).numpy(), 0.0, atol=1e-7)


def test_fitnets_connector_is_checkpointed_and_not_exported(conv_teacher, tmp_path):
  """The connector trains with the student, is checkpointed and stays out of model.keras.
  (That it resumes exactly is tests/train/test_reliability.py's: FitNets is one of the
  methods of its SIGTERM-then-SIGKILL run.)"""
  config = method_config("fitnets")
  full = str(tmp_path / "full")
  results = end_to_end.train_and_evaluate(config, full, "distill", DEFAULT, (conv_teacher,))
  # Connector: 1x1 conv 8 -> 16 channels (student stage1 to teacher stage2) + BatchNorm.
  assert results["extra_params"] == 8 * 16 + 4 * 16
  exported = keras.models.load_model(os.path.join(full, "model.keras"), compile=False)
  assert exported.count_params() == results["params"]
  ckpt = tf.train.latest_checkpoint(os.path.join(full, "checkpoints"))
  reader = tf.train.load_checkpoint(ckpt)
  values = [reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if n.startswith("objective/") and "OPTIMIZER" not in n]
  assert sorted(v.shape for v in values) == [(1, 1, 8, 16)] + [(16,)] * 4
  # BatchNorm's gamma, beta, moving mean and variance start at 1, 0, 0, 1: trained, none is.
  for vector in (v for v in values if v.shape == (16,)):
    assert not np.all(vector == 0.0) and not np.all(vector == 1.0)


def test_fitnets_hint_stage_and_two_teachers(conv_teacher, tmp_path):
  config = method_config("fitnets", **{"student.epochs": 2, "distill.fitnets.hint_epochs": 1})
  results = end_to_end.train_and_evaluate(config, str(tmp_path / "hint"), "distill", DEFAULT,
                                          (conv_teacher, conv_teacher))
  assert results["extra_params"] == 2 * (8 * 16 + 4 * 16)  # One connector per teacher.
  scalars = read_scalars(str(tmp_path / "hint"))
  ce = dict(scalars["train/loss_ce"])
  assert ce[10] == 0.0 and ce[max(ce)] > 0  # The hint stage has no CE term.
