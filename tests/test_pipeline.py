"""The pipeline: stages, variants, skipping finished stages, and the results table."""

import json
import os

import ml_collections
import pytest
import tensorflow as tf

from kd_research import config as config_lib
from kd_research import pipeline
from kd_research.errors import UserError
from conftest import tiny_config


def test_pipeline_with_variants_and_rerun(tmp_path):
  config = tiny_config(**{"student.epochs": 2})
  with config.unlocked():
    config.variants = ml_collections.ConfigDict({
        "low_alpha": {"alpha": 0.3, "alpha_end": 0.3},
        "finetune": {"finetune_epochs": 1}})
  config_lib.validate(config)
  workdir = str(tmp_path / "p")
  strategy = tf.distribute.get_strategy()
  results, table = pipeline.run(config, workdir, strategy)
  assert set(results) == {"teacher", "student_baseline", "student_kd_low_alpha",
                          "student_kd_finetune"}
  assert "KD low_alpha" in table and "KD finetune" in table
  saved = json.load(open(os.path.join(workdir, "student_kd_low_alpha", "config.json")))
  assert saved["distill"]["alpha"] == 0.3
  assert json.load(open(os.path.join(workdir, "student_kd_finetune", "config.json")))[
      "distill"]["finetune_epochs"] == 1
  stamp = os.path.getmtime(os.path.join(workdir, "teacher", "model.keras"))
  again, table_again = pipeline.run(config, workdir, strategy)  # Everything finished: skipped.
  assert os.path.getmtime(os.path.join(workdir, "teacher", "model.keras")) == stamp
  assert table_again == table


def test_variant_with_unknown_field():
  config = tiny_config()
  with config.unlocked():
    config.variants = ml_collections.ConfigDict({"bad": {"temprature": 3.0}})
  with pytest.raises(UserError, match="temprature"):
    config_lib.validate(config)
