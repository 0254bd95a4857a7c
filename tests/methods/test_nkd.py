"""NKD against a float64 NumPy transcription of yzd-v/cls_KD mmcls/models/dis_losses/nkd.py
(per example: its means over the batch left out), with integer labels and with mixed label
distributions (the reference takes their arg-max)."""

import numpy as np
import pytest

from kd_research.methods import nkd as nkd_lib
from conftest import check
from method_references import case, softmax


def reference_nkd(logit_s, logit_t, label, temp, gamma):
  """NKDLoss.forward per example: (target term, non-target term)."""
  n, c = logit_s.shape
  rows = np.arange(n)
  s_i, t_i = np.log(softmax(logit_s)), softmax(logit_t)
  loss_t = -(t_i[rows, label] * s_i[rows, label])
  keep = np.ones((n, c), bool)
  keep[rows, label] = False  # scatter_(1, label, 0)
  ns, nt = logit_s[keep].reshape(n, -1), logit_t[keep].reshape(n, -1)
  big_s, big_t = np.log(softmax(ns, temp)), softmax(nt, temp)
  loss_non = -gamma * temp ** 2 * (big_t * big_s).sum(1)
  return loss_t, loss_non


@pytest.mark.parametrize("seed,temp,gamma", [(0, 1.0, 1.5), (1, 2.0, 1.5), (2, 4.0, 1.0)])
def test_nkd_matches_the_reference(seed, temp, gamma):
  s, te, y, _, _ = case(seed, c=10)
  want_t, want_non = reference_nkd(s, te, y, temp, gamma)
  got_t, got_non = nkd_lib.nkd_terms(s, te, y, temp, gamma)
  check("nkd", got_t, want_t, atol=2e-6)
  check("nkd", got_non, want_non, atol=2e-6 * temp * temp)
  mixed = 0.7 * np.eye(10)[y] + 0.3 * np.eye(10)[(y + 1) % 10]
  got_mixed = nkd_lib.nkd_terms(s, te, mixed.astype(np.float32), temp, gamma)
  np.testing.assert_allclose(np.stack(got_mixed), np.stack([got_t, got_non]), rtol=1e-6)
