"""The transfer set: labels for part of the training split, soft labels on all of it."""

import json

import numpy as np
import pytest
import tensorflow as tf

from kd_research.data import datasets
from kd_research.methods import base
from kd_research.train import end_to_end
from kd_research.common.errors import UserError
from conftest import DEFAULT, tiny_config
from conftest import read_scalars



def test_labelled_mask_counts_fractions_and_is_fixed_by_seed():
  mask = datasets.labelled_mask(1000, count=37, seed=3)
  assert mask.sum() == 37 and set(np.unique(mask)) == {0.0, 1.0}
  np.testing.assert_array_equal(mask, datasets.labelled_mask(1000, count=37, seed=3))
  assert not np.array_equal(mask, datasets.labelled_mask(1000, count=37, seed=4))
  assert datasets.labelled_mask(1000, fraction=0.1).sum() == 100
  assert datasets.labelled_mask(10).sum() == 10  # Nothing set: every example is labelled.
  with pytest.raises(UserError, match="not both"):
    datasets.labelled_mask(10, count=2, fraction=0.5)
  with pytest.raises(UserError, match=r"count=20 must be in \[1, 10\]"):
    datasets.labelled_mask(10, count=20)


def test_cross_entropy_only_where_a_label_exists():
  logits = tf.constant(np.random.default_rng(0).normal(size=(4, 3)), tf.float32)
  batch = {"label": tf.constant([0, 1, 2, 0]), "labelled": tf.constant([1.0, 0.0, 1.0, 0.0])}
  full = base.labelled_cross_entropy({"label": batch["label"]}, logits).numpy()
  masked = base.labelled_cross_entropy(batch, logits).numpy()
  np.testing.assert_allclose(masked, full * [1, 0, 1, 0])


def test_transfer_set_runs(teacher_file, tmp_path):
  """Labels-only: the labelled examples alone, for the full step budget; distilled: every
  image, the CE term only on the labelled share (its logged mean is that share of CE)."""
  config = tiny_config(**{"labels.count": 128, "student.epochs": 1})
  baseline = end_to_end.train_and_evaluate(config, str(tmp_path / "labels"), "student", DEFAULT)
  kd = end_to_end.train_and_evaluate(config, str(tmp_path / "kd"), "distill", DEFAULT,
                                     (teacher_file,))
  assert baseline["steps"] == kd["steps"] == 1800 // 64  # The same budget of steps.
  identity = json.load(open(tmp_path / "kd" / "config.json"))
  assert identity["labels"] == {"count": 128, "fraction": 0.0, "seed": 0}
  ce = [v for _, v in read_scalars(str(tmp_path / "kd"))["train/loss_ce"]]
  full = end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1}), str(tmp_path / "all"),
                                       "distill", DEFAULT, (teacher_file,))
  ce_all = [v for _, v in read_scalars(str(tmp_path / "all"))["train/loss_ce"]]
  assert np.mean(ce) < 0.3 * np.mean(ce_all)  # ~128/1800 of the examples carry a label.
  assert full["steps"] == kd["steps"]
  with pytest.raises(UserError, match="fewer than one global batch"):
    end_to_end.train_and_evaluate(tiny_config(**{"labels.count": 10}), str(tmp_path / "few"),
                                  "student", DEFAULT)
