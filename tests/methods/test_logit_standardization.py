"""Logit standardization: the z-score against NumPy, its invariance, and a run's record."""

import json

import numpy as np

from kd_research.methods import logit_standardization as ls
from kd_research.methods import losses
from kd_research.train import end_to_end
from conftest import DEFAULT, check, method_config
from method_references import case


def test_logit_standardization_is_invariant_to_shift_and_scale():
  s, te, _, _, _ = case(3)
  z = ls.standardize(s).numpy()
  want = (s - s.mean(-1, keepdims=True)) / (1e-7 + s.std(-1, ddof=1, keepdims=True))
  check("ls", z, want)
  kd = losses.kl_divergence(ls.standardize(s), ls.standardize(te), 2.0).numpy()
  moved = losses.kl_divergence(ls.standardize(3.0 * s + 5.0), ls.standardize(0.5 * te - 2.0),
                               2.0).numpy()
  np.testing.assert_allclose(moved, kd, rtol=1e-4, atol=1e-6)


def test_logit_standardization_run_records_only_the_active_method(conv_teacher, tmp_path):
  """A run with logit standardization records it, and trains (values checked in NumPy)."""
  config = method_config("kd", **{"distill.logit_standardization": True})
  end_to_end.train_and_evaluate(config, str(tmp_path / "ls"), "distill", DEFAULT, (conv_teacher,))
  identity = json.load(open(tmp_path / "ls" / "config.json"))
  assert identity["distill"]["logit_standardization"] is True
  assert "at" not in identity["distill"] and "dkd" not in identity["distill"]
