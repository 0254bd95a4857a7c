"""Hinton KD's loss, alpha T^2 KL(teacher_T || student_T) + (1 - alpha) CE, against float64 NumPy."""

import numpy as np
import pytest

from kd_research.methods import losses
from method_references import kl, softmax


def cross_entropy(labels, logits):
  return -np.log(softmax(logits)[np.arange(len(labels)), labels])


@pytest.mark.parametrize("alpha,temperature", [(0.0, 1.0), (0.7, 10.0), (0.5, 4.0),
                                               (1.0, 2.5), (0.9, 20.0)])
def test_distillation_loss_matches_numpy(alpha, temperature):
  rng = np.random.default_rng(int(alpha * 10 + temperature))
  s, t = (rng.normal(0, 4.0, (16, 10)).astype(np.float32) for _ in range(2))
  y = rng.integers(0, 10, 16).astype(np.int32)
  got = losses.distillation_loss(s, t, y, alpha, temperature).numpy()
  distill = temperature**2 * kl(softmax(t, temperature), softmax(s, temperature))
  want = alpha * distill + (1 - alpha) * cross_entropy(y, s)
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
  total, d, ce = losses.distillation_terms(s, t, y, alpha, temperature)
  np.testing.assert_allclose(d.numpy(), distill, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(ce.numpy(), cross_entropy(y, s), rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(total.numpy(), got, rtol=1e-6)
