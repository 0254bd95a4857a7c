"""Similarity-preserving KD against float64 NumPy from the paper (batch means), and split exactly
over two "replicas" (local rows against the global batch)."""

import numpy as np

from kd_research.methods import sp as sp_lib
from conftest import check
from method_references import assert_splits_over_replicas, case


def np_sp(fs, ft):
  def gram(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    g = f @ f.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)
  return ((gram(ft) - gram(fs)) ** 2).sum() / len(fs) ** 2


def test_sp_matches_numpy_and_splits_over_replicas():
  _, _, _, fs, ft = case(6, b=10)
  s, t = (fs, ft)
  loss = lambda sl, tl, sg, tg, o: sp_lib.sp(sl, tl, sg, tg)
  whole = assert_splits_over_replicas(loss, s, t)
  check("sp", whole.mean(), np_sp(s, t))
  np.testing.assert_allclose(loss(s, s, s, s, 0).numpy(), 0.0, atol=1e-6)
