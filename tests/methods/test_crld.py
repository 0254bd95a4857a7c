"""CRLD against a float64 NumPy transcription of the authors' distiller (scx-822/CRLD-main
mdistiller/distillers/CRLD.py, ``forward_train``; per example: its means over the batch
left out), with masks that keep some examples and drop others."""

import numpy as np
import pytest

from kd_research.methods import crld as crld_lib
from conftest import check
from method_references import kl, softmax


def reference_kd(s, t, temp):
  """kd_loss(reduce=False): F.kl_div(log_softmax(s/T), softmax(t/T)).sum(1) * T^2."""
  return kl(softmax(t, temp), softmax(s, temp)) * temp ** 2


def reference_crld(s_w, s_s, t_w, t_s, temp, tau_w, tau_s):
  mask_w = softmax(t_w).max(1) >= tau_w
  mask_s = softmax(t_s).max(1) >= tau_s
  wv = (reference_kd(s_w, t_w, temp) + reference_kd(s_s, t_s, temp)) * mask_w
  cv = (reference_kd(s_s, t_w, temp) + reference_kd(s_w, t_s, temp)) * mask_s
  return wv, cv, mask_w, mask_s


@pytest.mark.parametrize("seed,temp", [(0, 4.0), (1, 2.0)])
def test_crld_matches_the_reference(seed, temp):
  rng = np.random.default_rng(seed)
  # Rows from flat to peaked, so that each threshold keeps some examples and drops others.
  scale = np.geomspace(0.05, 8.0, 16)[:, None]
  s_w, s_s, t_w, t_s = ((rng.normal(0, 1, (16, 10)) * scale[rng.permutation(16)])
                        .astype(np.float32) for _ in range(4))
  want_wv, want_cv, mask_w, mask_s = reference_crld(s_w, s_s, t_w, t_s, temp, 0.9, 0.2)
  assert 0 < mask_w.sum() < 16 and 0 < mask_s.sum() < 16  # both masks keep and drop
  got_wv, got_cv = crld_lib.crld_terms(s_w, s_s, t_w, t_s, temp, 0.9, 0.2)
  check("crld", got_wv, want_wv, atol=2e-6 * temp * temp)
  check("crld", got_cv, want_cv, atol=2e-6 * temp * temp)
