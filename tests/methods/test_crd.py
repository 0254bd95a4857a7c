"""CRD against float64 NumPy written from the paper, its memory bank, its negatives, and
its distributed and resumed runs."""

import os

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import crd as crd_lib
from kd_research.train import end_to_end
from conftest import DEFAULT, weights_of
from conftest import check
from conftest import method_config



def np_nce(scores, num_examples):
  """Tian et al. 2020, eq. 18 with the NCE critic h = P / (P + K / N): the positive term
  log h(positive) plus, for each of the K negatives, log(1 - h(negative))."""
  k = scores.shape[1] - 1
  h = scores / (scores + k / num_examples)
  return -(np.log(h[:, 0]) + np.sum(np.log(1.0 - h[:, 1:]), 1))


def test_nce_matches_numpy():
  rng = np.random.default_rng(0)
  scores = rng.uniform(1e-4, 3e-3, (6, 9))
  check("crd_nce", crd_lib.crd_nce(scores.astype(np.float32), 500, eps=0.0), np_nce(scores, 500),
        rtol=1e-5)
  # The implementation's guard (eps 1e-7 in the denominators, as the reference code) moves
  # the loss by K * eps * N / K, far below the loss itself.
  np.testing.assert_allclose(crd_lib.crd_nce(scores.astype(np.float32), 500), np_nce(scores, 500),
                             rtol=1e-4)


def np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_crd_step_matches_numpy_and_updates_the_bank():
  """One CRD step on one device: loss from the paper's formula with the objective's own
  embedding weights, banks and negatives; then every batch row of both banks equals
  normalize(m * old + (1 - m) * new) and the other rows are unchanged."""
  rng = np.random.default_rng(1)
  n, b, k, dim, t, m = 40, 6, 7, 5, 0.07, 0.5
  labels = np.arange(n) % 4
  objective = crd_lib.CRD(0.8, 1.0, [1.0], [("pooled", "pooled")], n, b, dim, k, t, m,
                              seed=3, labels=labels)
  objective.build({"pooled": (3,)}, [{"pooled": (4,)}])
  f_s = rng.normal(size=(b, 3)).astype(np.float32)
  f_t = rng.normal(size=(b, 4)).astype(np.float32)
  index = rng.permutation(n)[:b]
  batch = {"index": tf.constant(index, tf.int64), "step": tf.fill([b], tf.constant(5, tf.int64)),
           "position": tf.range(b)}
  bank_s, bank_t = [v.numpy().astype(np.float64) for v in objective.banks[0]]
  negatives = objective.sampler(batch["index"], 5, batch["position"], b).numpy()
  assert negatives.shape == (b, k)
  assert np.all(labels[negatives] != labels[index][:, None])  # Other classes only.
  np.testing.assert_array_equal(negatives, objective.sampler(
      batch["index"], 5, batch["position"], b).numpy())  # Stateless: same draw again.
  loss = objective.method_loss(batch, {"features": {"pooled": f_s}},
                               {"features": [{"pooled": f_t}]}, 0, 5).numpy()

  (w_s, c_s), (w_t, c_t) = [[v.numpy().astype(np.float64) for v in h.trainable_variables]
                            for h in objective.heads[0]]
  v_s, v_t = np_normalize(f_s @ w_s + c_s), np_normalize(f_t @ w_t + c_t)
  contrast = np.concatenate([index[:, None], negatives], 1)
  e_s = np.exp(np.einsum("bkd,bd->bk", bank_t[contrast], v_s) / t)
  e_t = np.exp(np.einsum("bkd,bd->bk", bank_s[contrast], v_t) / t)
  z_s, z_t = e_s.mean() * n, e_t.mean() * n  # Z from the first batch.
  want = np_nce(e_s / z_s, n) + np_nce(e_t / z_t, n)
  check("crd", loss, want, rtol=1e-4)
  np.testing.assert_allclose(objective.z[0].numpy(), [z_s, z_t], rtol=1e-5)

  new_s, new_t = [v.numpy() for v in objective.banks[0]]
  np.testing.assert_allclose(new_s[index], np_normalize(m * bank_s[index] + (1 - m) * v_s),
                             atol=1e-6)
  np.testing.assert_allclose(new_t[index], np_normalize(m * bank_t[index] + (1 - m) * v_t),
                             atol=1e-6)
  rest = np.setdiff1d(np.arange(n), index)
  np.testing.assert_array_equal(new_s[rest], bank_s[rest].astype(np.float32))


def test_uniform_negatives_cover_the_dataset():
  sampler = crd_lib.NegativeSampler(50, 400, seed=0)
  draws = sampler(tf.constant([0, 1], tf.int64), 0, tf.constant([0, 1]), 2).numpy()
  assert draws.min() >= 0 and draws.max() < 50 and len(np.unique(draws)) == 50


def _objective_tensors(workdir):
  ckpt = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  reader = tf.train.load_checkpoint(ckpt)
  names = sorted(n for n in reader.get_variable_to_shape_map()
                 if n.startswith("objective/") and "OPTIMIZER" not in n)
  return {n: reader.get_tensor(n) for n in names}


def test_crd_bank_is_replica_independent(conv_teacher, tmp_path, strategy_factory):
  config = method_config("crd", train_size=192)
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  results = end_to_end.train_and_evaluate(config, one, "distill", DEFAULT, (conv_teacher,))
  end_to_end.train_and_evaluate(config, two, "distill", strategy_factory(2), (conv_teacher,))
  banks_one, banks_two = _objective_tensors(one), _objective_tensors(two)
  assert sum(v.shape == (192, 128) for v in banks_one.values()) == 2  # The two banks.
  # Relative to each tensor's scale: the Z constants are large numbers (mean score x N).
  bank_diff = max(float(np.abs(banks_one[n] - banks_two[n]).max()
                        / max(1.0, np.abs(banks_one[n]).max())) for n in banks_one)
  weight_diff = max(float(np.abs(a - b).max()) for a, b in zip(weights_of(one), weights_of(two)))
  print(f"crd: 1 vs 2 replicas max relative |d bank, Z| {bank_diff:.2e}, max |dw| {weight_diff:.2e}")
  assert bank_diff < 1e-5 and weight_diff < 1e-5
  # Heads: student pooled 8 -> 128, teacher pooled 32 -> 128 (weights + biases).
  assert results["extra_trainable_params"] == (8 + 1) * 128 + (32 + 1) * 128
  # Exact resume of the banks, Z and heads: the SIGKILL test's MLKD + CRD run
  # (tests/train/test_reliability.py) compares every objective tensor bit for bit.


def test_crd_refuses_what_it_cannot_do(conv_teacher, tmp_path):
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="negative_sampling=uniform"):
    end_to_end.train_and_evaluate(method_config("crd", **{"labels.count": 100}),
                                  str(tmp_path / "few"), "distill", DEFAULT, (conv_teacher,))
  with pytest.raises(UserError, match="negatives=5000"):
    end_to_end.train_and_evaluate(method_config("crd", **{"distill.crd.negatives": 5000}),
                                  str(tmp_path / "k"), "distill", DEFAULT, (conv_teacher,))


def test_pooled_feature_cache_serves_crd_like_the_live_teacher(conv_teacher, tmp_path):
  """The cache holds the teacher's pooled feature next to its logits; a CRD run from the
  cache matches the live-teacher run up to float rounding of the batched forward pass."""
  config = method_config("crd", train_size=192)
  live, cached = str(tmp_path / "live"), str(tmp_path / "cached")
  end_to_end.train_and_evaluate(config, live, "distill", DEFAULT, (conv_teacher,))
  end_to_end.train_and_evaluate(
      method_config("crd", train_size=192, **{"distill.cache_teacher": True}), cached,
      "distill", DEFAULT, (conv_teacher,))
  (train_file,) = [f for f in os.listdir(os.path.join(cached, "teacher_cache"))
                   if f.startswith("train-") and f.endswith(".npz")]
  with np.load(os.path.join(cached, "teacher_cache", train_file)) as f:
    assert f["feature_pooled"].shape == (192, 1, 32)
  diff = max(float(np.abs(a - b).max()) for a, b in zip(weights_of(live), weights_of(cached)))
  print(f"crd: live vs cached teacher max |dw| {diff:.2e}")
  assert diff < 1e-4
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match="feature maps"):
    run_spec.parse(method_config("crd", **{"distill.cache_teacher": True,
                                                "distill.crd.teacher_tap": "last_stage"}))


def test_crd_with_two_teachers_has_heads_and_banks_per_teacher(conv_teacher, tmp_path):
  results = end_to_end.train_and_evaluate(method_config("crd", train_size=192),
                                          str(tmp_path / "two"), "distill", DEFAULT,
                                          (conv_teacher, conv_teacher))
  assert results["extra_trainable_params"] == 2 * ((8 + 1) * 128 + (32 + 1) * 128)
  banks = [v for v in _objective_tensors(str(tmp_path / "two")).values() if v.shape == (192, 128)]
  assert len(banks) == 4  # A student and a teacher bank per teacher.
