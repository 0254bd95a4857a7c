"""PKT against float64 NumPy from the paper (batch means), and split exactly over two
"replicas" (local rows against the global batch)."""

import numpy as np

from kd_research.methods import pkt as pkt_lib
from conftest import check
from method_references import assert_splits_over_replicas, case


def np_pkt(fs, ft, eps=1e-7):
  def kernel(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    k = (f @ f.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  s, t = kernel(fs), kernel(ft)
  return (t * np.log((t + eps) / (s + eps))).mean()


def test_pkt_matches_numpy_and_splits_over_replicas():
  _, _, _, fs, ft = case(6, b=10)
  s, t = (fs.mean((1, 2)), ft.mean((1, 2)))
  loss = lambda sl, tl, sg, tg, o: pkt_lib.pkt(sl, tl, sg, tg)
  whole = assert_splits_over_replicas(loss, s, t)
  check("pkt", whole.mean(), np_pkt(s, t))
  np.testing.assert_allclose(loss(s, s, s, s, 0).numpy(), 0.0, atol=1e-6)
