"""USKD against a float64 NumPy transcription of yzd-v/cls_KD mmcls/models/dis_losses/uskd.py
(per example: its means over the batch left out), with integer labels and with mixed label
distributions (the reference's two largest entries), and a labels-only run that trains with
it (``config.student.objective=uskd``): its terms logged, its weak head checkpointed and
left out of the saved model."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import uskd as uskd_lib
from conftest import check, read_scalars
from method_references import softmax


def reference_uskd(logit_s, w_fc, gt_label):
  """USKDLoss.forward per example, its fc's output given: (target, non-target, weak)."""
  n, c = logit_s.shape
  if gt_label.ndim > 1:
    order = np.argsort(-gt_label, axis=-1, kind="stable")[:, :2]
    label, value = order, np.take_along_axis(gt_label, order, 1)
  else:
    label, value = gt_label[:, None], np.ones((n, 1))
  s_i = softmax(logit_s)
  s_t = np.take_along_axis(s_i, label, 1)
  p_t = s_t ** 2
  p_t = p_t + value - p_t.mean(0, keepdims=True)
  p_t[value == 0] = 0
  s_i = np.log(softmax(logit_s))
  s_t = np.take_along_axis(s_i, label, 1)
  loss_t = -(p_t * s_t).sum(1)
  if gt_label.ndim > 1:
    target = gt_label * 0.9 + 0.1 / c
  else:
    target = np.zeros((n, c))
    target[np.arange(n), gt_label] = 0.9
    target += 0.1 / c
  w_i = np.log(softmax(w_fc))
  loss_weak = -(target * w_i).sum(1)
  w_i = softmax(w_fc)
  w_t = np.take_along_axis(w_i, label, 1)
  rank = w_i / (1 - w_t.sum(1, keepdims=True) + 1e-6) + s_i / (1 - s_t.sum(1, keepdims=True)
                                                                + 1e-6)
  rank = np.argsort(-rank, axis=-1, kind="stable")
  z_i = np.tile(1 / np.arange(1, c + 1), (n, 1))
  ids_sort = np.argsort(rank, axis=-1, kind="stable")
  z_i = np.take_along_axis(z_i, ids_sort, 1)
  mask = np.ones((n, c), bool)
  np.put_along_axis(mask, label, False, 1)
  ns_i = np.log(softmax(logit_s[mask].reshape(n, -1)))
  nz_i = z_i[mask].reshape(n, -1)
  nz_i = nz_i / nz_i.sum(1, keepdims=True)
  return loss_t, -(nz_i * ns_i).sum(1), loss_weak


@pytest.mark.parametrize("mixed", [False, True])
def test_uskd_matches_the_reference(mixed):
  rng = np.random.default_rng(int(mixed))
  s = rng.normal(0, 3, (12, 10)).astype(np.float32)
  w = rng.normal(0, 3, (12, 10)).astype(np.float32)
  y = rng.integers(0, 10, 12)
  labels = (0.6 * np.eye(10)[y] + 0.4 * np.eye(10)[(y + 3) % 10]).astype(np.float32) if mixed \
      else y.astype(np.int32)
  got = uskd_lib.uskd_terms(s, w, labels, lambda x: tf.reduce_mean(x, 0, keepdims=True))
  for name, g, want in zip(("target", "non_target", "weak"), got, reference_uskd(s, w, labels)):
    check("uskd", g, want, atol=2e-6)


def test_a_uskd_student_trains_the_same_on_one_and_two_replicas(tmp_path, strategy_factory):
  """``train --role=student`` with objective=uskd: no teacher; 1 vs 2 replicas (its target
  term reads the global batch's mean); the weak head trains, sits in the checkpoint and not
  in model.keras; every term in TensorBoard."""
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top
  from conftest import DEFAULT, tiny_config, weights_of  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"student.model": "cnn_article", "student.width": 4,
                          "student.epochs": 1, "student.objective": "uskd", "train_size": 192})
  for name, strategy in (("one", DEFAULT), ("two", strategy_factory(2))):
    end_to_end.train_and_evaluate(config, str(tmp_path / name), "student", strategy)
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "two"))))
  print(f"uskd: 1 vs 2 replicas max |dw| {diff:.2e}")
  assert diff < 1e-5
  scalars = read_scalars(str(tmp_path / "one"))
  for term in ("ce", "uskd_target", "uskd_non_target", "uskd_weak"):
    assert all(np.isfinite(v) for _, v in scalars[f"train/loss_{term}"]), term
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / "one" /
                                                                   "checkpoints")))
  head = [n for n in reader.get_variable_to_shape_map() if n.startswith("objective/")]
  assert len(head) == 2, head  # the weak head's kernel and bias
  saved = json.load(open(os.path.join(tmp_path, "one", "config.json")))
  assert saved["objective"]["mu"] == 0.1 and saved["model"]["objective"] == "uskd"
