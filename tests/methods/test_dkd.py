"""DKD's TCKD and NCKD against float64 NumPy, and the paper's identity KD = TCKD + (1 - p_t) NCKD."""

import numpy as np
import pytest

from kd_research.methods import dkd as dkd_lib
from conftest import check
from method_references import case, kl, softmax


@pytest.mark.parametrize("seed,t", [(0, 1.0), (1, 4.0), (2, 8.0)])
def test_dkd_matches_numpy_and_decomposes_kd(seed, t):
  s, te, y, _, _ = case(seed)
  tckd, nckd = dkd_lib.dkd_terms(s, te, y, t)
  ps, pt = softmax(s, t), softmax(te, t)
  rows = np.arange(len(y))
  b_s = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
  b_t = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
  mask = np.eye(s.shape[1], dtype=bool)[y]
  hat_s = np.where(mask, 0, ps) / (1 - ps[rows, y])[:, None]
  hat_t = np.where(mask, 0, pt) / (1 - pt[rows, y])[:, None]
  atol = 2e-6 * t * t  # float32 rounding of the KL sums, magnified by T^2.
  check("dkd", tckd, t * t * kl(b_t, b_s), atol=atol)
  check("dkd", nckd, t * t * kl(hat_t, np.where(mask, 1, hat_s)), atol=atol)
  # The paper's identity (eq. 1-3): KD = TCKD + (1 - p_t^T) NCKD.
  kd = t * t * kl(pt, ps)
  check("dkd", tckd.numpy() + (1 - pt[rows, y]) * nckd.numpy(), kd, atol=atol)
