"""WTTM against a float64 NumPy transcription of zkxufo/TTM distiller_zoo/wttm.py, and its
two identities: gamma 1 is KD at T 1, and the loss over its weight U is KL with the teacher
at temperature 1 / gamma (TTM)."""

import numpy as np
import pytest

from kd_research.methods import wttm as wttm_lib
from conftest import check
from method_references import case, kl, softmax


def reference_wttm(y_s, y_t, l):
  """wttm.py's forward, per example (its torch.mean over the batch left out)."""
  log_p_s = np.log(softmax(y_s))
  p_t = softmax(y_t) ** l
  norm = p_t.sum(1)
  p_t = p_t / norm[:, None]
  kl_div = np.where(p_t > 0, p_t * (np.log(np.maximum(p_t, 1e-300)) - log_p_s), 0.0)
  return norm * kl_div.sum(1)


@pytest.mark.parametrize("seed,gamma", [(0, 0.2), (1, 0.1), (2, 0.5)])
def test_wttm_matches_the_reference(seed, gamma):
  s, te, _, _, _ = case(seed, c=100)
  check("wttm", wttm_lib.wttm_loss(s, te, gamma), reference_wttm(s, te, gamma), atol=2e-5)


def test_wttm_identities():
  s, te, _, _, _ = case(3)
  check("wttm", wttm_lib.wttm_loss(s, te, 1.0), kl(softmax(te), softmax(s)), atol=2e-6)
  gamma = 0.25
  power_sum = (softmax(te) ** gamma).sum(1)
  check("wttm", wttm_lib.wttm_loss(s, te, gamma).numpy() / power_sum,
        kl(softmax(te, 1 / gamma), softmax(s)), atol=2e-6)
