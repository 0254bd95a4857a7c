"""Attention transfer against float64 NumPy (maps of equal and of different sizes)."""

import numpy as np

from kd_research.methods import at as at_lib
from conftest import check
from method_references import case


def test_attention_matches_numpy():
  _, _, _, fs, ft = case(5)

  def at(f):
    a = (np.abs(f.astype(np.float64)) ** 2).mean(-1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)
  check("at", at_lib.attention(fs, ft), ((at(fs) - at(ft)) ** 2).mean(-1))
  np.testing.assert_allclose(at_lib.attention(fs, fs).numpy(), 0.0, atol=1e-7)
  # Maps of different sizes: the larger is average-pooled to the smaller.
  big = np.repeat(np.repeat(fs, 2, 1), 2, 2)
  np.testing.assert_allclose(at_lib.attention(big, ft).numpy(), at_lib.attention(fs, ft).numpy(),
                             rtol=1e-5, atol=1e-7)
