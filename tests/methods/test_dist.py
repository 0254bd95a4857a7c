"""DIST's inter- and intra-class relations against float64 NumPy."""

import numpy as np
import pytest

from kd_research.methods import dist as dist_lib
from conftest import check
from method_references import case, softmax


def pearson_rows(a, b):
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_matches_numpy(tau):
  s, te, _, _, _ = case(4)
  ys, yt = softmax(s, tau), softmax(te, tau)
  check("dist", dist_lib.dist_inter(s, te, tau), tau**2 * (1 - pearson_rows(ys, yt)))
  intra = tau**2 * (1 - pearson_rows(ys.T, yt.T).mean())
  check("dist", dist_lib.dist_intra(s, te, tau, 5), np.full(5, intra))
  atol = 1e-6 * tau * tau  # float32 rounding of 1 - correlation, magnified by tau^2.
  np.testing.assert_allclose(dist_lib.dist_inter(s, s, tau).numpy(), 0.0, atol=atol)
  np.testing.assert_allclose(dist_lib.dist_intra(s, s, tau, 3).numpy(), 0.0, atol=atol)
