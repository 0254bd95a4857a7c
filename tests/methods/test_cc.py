"""Correlation congruence against float64 NumPy (the Taylor-series kernel), split over
replicas, and a finite gradient for a dead feature row."""

import numpy as np
import tensorflow as tf

from kd_research.methods import cc as cc_lib
from conftest import check
from method_references import rng_maps


def test_cc_matches_numpy_and_splits_over_replicas():
  fs, ft = rng_maps(7, [(10, 6), (10, 9)])

  def np_cc(s, t, gamma=0.4):
    def corr(f):
      f = f.astype(np.float64) / np.linalg.norm(f, axis=1, keepdims=True)
      # The Gaussian RBF exp(-gamma ||fi - fj||^2) by its order-2 Taylor series.
      sim = f @ f.T
      return np.exp(-2 * gamma) * (1 + 2 * gamma * sim + (2 * gamma * sim) ** 2 / 2)
    return ((corr(t) - corr(s)) ** 2).sum() / len(s) ** 2
  whole = cc_lib.cc(fs, ft, fs, ft).numpy()
  check("cc", whole.mean(), np_cc(fs, ft))
  halves = [cc_lib.cc(fs[i:i + 5], ft[i:i + 5], fs, ft).numpy() for i in (0, 5)]
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-5, atol=1e-8)
  # High order: the series approaches the exact kernel on unit vectors.
  exact = np.exp(-0.4 * np.square(np.linalg.norm(
      fs[:, None] / np.linalg.norm(fs, axis=1)[:, None, None]
      - fs[None] / np.linalg.norm(fs, axis=1)[None, :, None], axis=-1)))
  np.testing.assert_allclose(cc_lib.correlation(fs, fs, 0.4, 12).numpy(), exact, atol=1e-6)


def test_cc_gradient_is_finite_for_an_all_zero_feature_row():
  """A dead pooled feature (all zeros after ReLU) gives similarity 0; tf.pow's gradient of
  s^0 there is 0 * inf = NaN, which diverged a benchmark run at its first steps."""
  fs, ft = rng_maps(8, [(6, 5), (6, 7)])
  fs[2] = 0.0
  s = tf.Variable(fs)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(cc_lib.cc(s, ft, s, ft))
  grad = tape.gradient(loss, s).numpy()
  assert np.all(np.isfinite(grad)) and np.isfinite(loss.numpy())
