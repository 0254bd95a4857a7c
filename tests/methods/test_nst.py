"""NST's squared MMD (polynomial kernel) against float64 NumPy."""

import numpy as np

from kd_research.methods import nst as nst_lib
from conftest import check
from method_references import np_pool, rng_maps


def test_nst_matches_numpy_and_is_zero_for_identical_channels():
  s, t = rng_maps(6, [(4, 8, 8, 3), (4, 4, 4, 5)])
  s = np.abs(s)

  def np_nst(fs, ft):
    fs = np_pool(fs.astype(np.float64), ft.shape[1:3]) if fs.shape[1] > ft.shape[1] else fs
    out = []
    for a, b in zip(fs.reshape(len(fs), -1, fs.shape[-1]), ft.reshape(len(ft), -1, ft.shape[-1])):
      a, b = a / np.linalg.norm(a, axis=0), b / np.linalg.norm(b, axis=0)
      k = lambda u, v: np.mean([(u[:, i] @ v[:, j]) ** 2 for i in range(u.shape[1])
                                for j in range(v.shape[1])])
      out.append(k(b, b) + k(a, a) - 2 * k(a, b))
    return np.array(out)
  check("nst", nst_lib.nst(s, t), np_nst(s, t.astype(np.float64)))
  np.testing.assert_allclose(nst_lib.nst(t, t * 3.0).numpy(), 0.0, atol=1e-6)
