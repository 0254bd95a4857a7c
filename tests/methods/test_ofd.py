"""OFD against float64 NumPy (mdistiller's partial L2 and margins), its connectors' weights read
back."""

import numpy as np
import pytest

from kd_research.methods import ofd as ofd_lib
from conftest import check
from method_references import layers_of, np_bn_train, np_conv, np_pool, rng_maps


def test_ofd_margin_is_the_mean_of_the_negative_part_and_the_loss_matches_numpy():
  gamma, beta = np.array([1.0, 0.5, 2.0, 0.1]), np.array([0.0, 1.0, -1.0, 1.0])
  got = ofd_lib.margin(gamma, beta)
  # Independent: E[x | x < 0] by sampling x ~ N(beta, gamma^2); the last channel has
  # P(x < 0) = Phi(-10) <= 1e-3, so its margin is -3 gamma.
  x = np.random.default_rng(0).normal(beta[:3], gamma[:3], (2_000_000, 3))
  sampled = np.array([x[:, c][x[:, c] < 0].mean() for c in range(3)])
  np.testing.assert_allclose(got[:3], sampled, rtol=5e-3)
  assert got[3] == pytest.approx(-0.3)
  s, t = rng_maps(1, [(6, 4, 4, 4), (6, 4, 4, 4)])
  m = got.astype(np.float64)
  s64, t64 = s.astype(np.float64), t.astype(np.float64)
  # mdistiller's three-term form (distillers/OFD.py feat_loss), summed per example.
  want = ((s64 - m) ** 2 * ((s64 > m) & (t64 <= m))
          + (s64 - t64) ** 2 * ((s64 > t64) & (t64 > m) & (t64 <= 0))
          + (s64 - t64) ** 2 * (t64 > 0)).sum((1, 2, 3))
  check("ofd", ofd_lib.partial_l2(s, t, got), want)


def test_ofd_method_loss_with_connectors_and_stage_weights():
  s1, s2, t1, t2 = rng_maps(2, [(4, 8, 8, 3), (4, 4, 4, 5), (4, 7, 7, 6), (4, 3, 3, 2)])
  margins = [[np.full(6, -0.5, np.float32), np.full(2, -0.2, np.float32)]]
  method = ofd_lib.OFD(1.0, 0.0, [1.0], [("s1", "t1"), ("s2", "t2")], margins)
  method.build({"s1": s1.shape[1:], "s2": s2.shape[1:]}, [{"t1": t1.shape[1:], "t2": t2.shape[1:]}])
  got = method.method_loss({}, {"features": {"s1": s1, "s2": s2}},
                           {"features": [{"t1": t1, "t2": t2}]}, 0, 0)
  want = 0.0
  for i, (s, t, m) in enumerate([(s1, t1, margins[0][0]), (s2, t2, margins[0][1])]):
    module = method.modules[i]
    conv = layers_of(module, "Conv2D")[0].kernel.numpy().astype(np.float64)
    y = np_bn_train(np_conv(s.astype(np.float64), conv), layers_of(module, "BatchNormalization")[0])
    target = np.maximum(np_pool(t.astype(np.float64), y.shape[1:3]), m)
    mask = (y > target) | (target > 0)
    want = want + ((y - target) ** 2 * mask).sum((1, 2, 3)) / 2.0 ** (1 - i)
  check("ofd", got, want, rtol=2e-4)
