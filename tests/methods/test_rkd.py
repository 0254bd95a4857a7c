"""RKD against float64 NumPy from the paper (batch means), and split exactly over two
"replicas" (local rows against the global batch)."""

import numpy as np

from kd_research.methods import rkd as rkd_lib
from conftest import check
from method_references import assert_splits_over_replicas, case


def np_rkd(fs, ft, wd=25.0, wa=50.0):
  def dist(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    d = np.linalg.norm(f[:, None] - f[None], axis=-1)
    return d / d[~np.eye(len(f), dtype=bool)].mean()

  def angle(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    diff = f[None] - f[:, None]
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    diff = np.where(norm > 0, diff / np.maximum(norm, 1e-300), 0.0)
    return np.einsum("ijd,ikd->ijk", diff, diff)

  def smooth_l1(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x * x, x - 0.5)
  return wd * smooth_l1(dist(fs) - dist(ft)).mean() + wa * smooth_l1(angle(fs) - angle(ft)).mean()


def test_rkd_matches_numpy_and_splits_over_replicas():
  _, _, _, fs, ft = case(6, b=10)
  s, t = (fs.mean((1, 2)), ft.mean((1, 2)))
  loss = lambda sl, tl, sg, tg, o: rkd_lib.rkd(sl, tl, sg, tg, o)
  whole = assert_splits_over_replicas(loss, s, t)
  check("rkd", whole.mean(), np_rkd(s, t))
  np.testing.assert_allclose(loss(s, s, s, s, 0).numpy(), 0.0, atol=1e-6)
