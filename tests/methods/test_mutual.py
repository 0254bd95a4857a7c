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


def test_the_labels_only_objective_is_chosen_from_the_registry():
  """DML is a registered teacher-free objective: a labels-only run of a cohort entry trains
  with it, any other entry with the plain labels objective; the cohort is a model wrapper
  (models/cohort.py) that validates its own entries."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from kd_research import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  from kd_research.methods import registry  # pylint: disable=g-import-not-at-top
  from kd_research.models import registry as model_registry  # pylint: disable=g-import-not-at-top
  entry = config_lib.model_config("mlp", width=8)
  plain = registry.labels_objective(entry)
  assert type(plain).__name__ == "Objective" and not plain.needs_teacher
  cohort = ml_collections.ConfigDict(dict(entry.to_dict(), cohort=3))
  dml = registry.labels_objective(cohort)
  assert dml.name == "dml" and dml.size == 3 and not dml.needs_teacher
  assert model_registry.wrapper_of(entry) is None
  wrapper = model_registry.wrapper_of(cohort)
  with pytest.raises(UserError, match="only config.student trains as one"):
    wrapper.validate("teacher", cohort)
  with pytest.raises(UserError, match="2 or more members"):
    wrapper.validate("student", ml_collections.ConfigDict(dict(entry.to_dict(), cohort=1)))
  with pytest.raises(UserError, match="not distill"):
    wrapper.build(cohort, "distill", (28, 28, 1), None)
  model = wrapper.build(cohort, "student", (28, 28, 1),
                        lambda member: model_registry.build("mlp", (28, 28, 1), 10, 8))
  assert [m.name for m in model_registry.members(model)] == ["member_0", "member_1", "member_2"]
  assert model_registry.members(model_registry.build("mlp", (28, 28, 1), 10, 8)) == []
