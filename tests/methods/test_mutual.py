"""Deep mutual learning's objective (methods/mutual.py) against a float64 NumPy transcription
of the paper's loss, and the stop-gradient identity that makes one backward pass train every
member by its own loss."""

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import mutual
from kd_research.models import cohort


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _reference(logits, labels):
  """{member<k>_ce, member<k>_kl}: CE(y, p_k) and 1/(N-1) sum_{l != k} KL(p_l || p_k)."""
  probs = [_softmax(z) for z in logits]
  out = {}
  for k, p_k in enumerate(probs):
    out[f"member{k}_ce"] = -np.log(p_k[np.arange(len(labels)), labels])
    out[f"member{k}_kl"] = sum(np.sum(p_l * (np.log(p_l) - np.log(p_k)), -1)
                               for l, p_l in enumerate(probs) if l != k) / (len(probs) - 1)
  return out


@pytest.mark.parametrize("size", [2, 3])
def test_dml_terms_match_numpy_and_each_member_gets_its_own_gradient(size):
  rng = np.random.default_rng(size)
  logits = [rng.normal(0, 3, (16, 10)) for _ in range(size)]
  labels = rng.integers(0, 10, 16)
  objective = mutual.MutualLearning(size)
  assert objective.student_taps == tuple(cohort.member_tap(k) for k in range(size))
  variables = [tf.Variable(z, dtype=tf.float32) for z in logits]
  with tf.GradientTape() as tape:
    terms = objective.terms({"label": tf.constant(labels, tf.int32)},
                            {"logits": variables[0], "features": dict(
                                zip(objective.student_taps, variables))}, None, 0)
    total = tf.reduce_sum(terms["total"])
  reference = _reference([np.asarray(v.numpy(), np.float64) for v in variables], labels)
  worst = 0.0
  for name, expected in reference.items():
    worst = max(worst, float(np.max(np.abs(terms[name].numpy() - expected)
                                    / np.maximum(np.abs(expected), 1e-3))))
  print(f"dml, {size} members: max relative error vs NumPy {worst:.2e}")
  assert worst < 1e-4
  np.testing.assert_allclose(terms["total"].numpy(), sum(reference.values()), rtol=1e-4)
  assert set(objective.terms_names) == set(terms)
  # d total / d z_k = d L_k / d z_k = (p_k - y) + 1/(N-1) sum_{l != k} (p_k - p_l): the
  # others' predictions are constants in L_k.
  probs = [_softmax(np.asarray(v.numpy(), np.float64)) for v in variables]
  onehot = np.eye(10)[labels]
  for k, grad in enumerate(tape.gradient(total, variables)):
    expected = (probs[k] - onehot) + sum(probs[k] - probs[l] for l in range(size)
                                         if l != k) / (size - 1)
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-5)
