"""Losses against float64 NumPy references on random logits."""

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import losses
from kd_research.common.errors import UserError


def np_softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
  return np.sum(p * (np.log(p) - np.log(q)), -1)


def np_ce(labels, logits):
  return -np.log(np_softmax(logits)[np.arange(len(labels)), labels])


def random_case(seed, k=1, b=16, c=10, scale=4.0):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, scale, (b, c)).astype(np.float32),
          rng.normal(0, scale, (k, b, c)).astype(np.float32),
          rng.integers(0, c, b).astype(np.int32))


def test_float32_inside_for_bfloat16_logits():
  s, t, y = random_case(3)
  got = losses.distillation_loss(tf.cast(s, tf.bfloat16), tf.cast(t[0], tf.bfloat16), y, 0.7, 4.0)
  assert got.dtype == tf.float32
  s16 = tf.cast(tf.cast(s, tf.bfloat16), tf.float32).numpy()
  t16 = tf.cast(tf.cast(t[0], tf.bfloat16), tf.float32).numpy()
  want = 0.7 * 16 * np_kl(np_softmax(t16, 4), np_softmax(s16, 4)) + 0.3 * np_ce(y, s16)
  np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_kl_is_zero_for_identical_logits_and_positive_otherwise():
  s, t, _ = random_case(4)
  np.testing.assert_allclose(losses.kl_divergence(s, s, 3.0).numpy(), 0.0, atol=1e-6)
  assert np.all(losses.kl_divergence(s, t[0], 3.0).numpy() > 0)


def test_dense_labels_cross_entropy_matches_sparse_for_one_hot():
  s, _, y = random_case(5)
  one_hot = np.eye(10, dtype=np.float32)[y]
  np.testing.assert_allclose(losses.cross_entropy(s, one_hot).numpy(),
                             losses.cross_entropy(s, y).numpy(), rtol=1e-6)
  mixed = 0.3 * one_hot + 0.7 * np.eye(10, dtype=np.float32)[(y + 1) % 10]
  want = -(mixed * np.log(np_softmax(s))).sum(-1)
  np.testing.assert_allclose(losses.cross_entropy(s, mixed).numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("weights", [None, [0.2, 0.5, 0.3], [3.0, 1.0, 0.0]])
def test_combine_modes_match_numpy(weights):
  s, t, _ = random_case(6, k=3)
  temperature = 5.0
  w = np.ones(3) / 3 if weights is None else np.asarray(weights) / np.sum(weights)
  student = np_softmax(s, temperature)
  probs = np.einsum("k,kbc->bc", w, np_softmax(t, temperature))
  want = {
      "prob_mean": np_kl(probs, student),
      "logit_mean": np_kl(np_softmax(np.einsum("k,kbc->bc", w, t.astype(np.float64)),
                                     temperature), student),
      "kl_sum": sum(w[k] * np_kl(np_softmax(t[k], temperature), student) for k in range(3)),
  }
  for mode, expected in want.items():
    got = losses.combined_distill_term(s, t, temperature, mode, weights).numpy()
    np.testing.assert_allclose(got, expected, rtol=3e-5, atol=3e-5, err_msg=mode)


def test_all_modes_reduce_to_single_teacher_loss():
  s, t, _ = random_case(7, k=1)
  single = losses.kl_divergence(s, t[0], 3.0).numpy()
  for mode in losses.COMBINE_MODES:
    np.testing.assert_allclose(losses.combined_distill_term(s, t, 3.0, mode).numpy(), single,
                               rtol=1e-5, atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("weights", [[1.0, -1.0], [0.0, 0.0], [1.0]])
def test_bad_teacher_weights_raise(weights):
  _, t, _ = random_case(8, k=2)
  with pytest.raises(UserError, match="weight"):
    losses.combined_distill_term(t[0], t, 2.0, "prob_mean", weights)


def test_unknown_combine_mode_lists_valid():
  _, t, _ = random_case(9, k=2)
  with pytest.raises(UserError, match="prob_mean, logit_mean, kl_sum"):
    losses.combined_distill_term(t[0], t, 2.0, "median")
