"""The distillation methods end to end: every method trains, is independent of the replica
count, resumes exactly with its connectors, and refuses what it cannot do."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research import config as config_lib
from kd_research.methods import registry as method_registry
from kd_research.train import runs
from kd_research.common.errors import UserError
from conftest import DEFAULT, gradients_on_one_and_two_replicas, interrupt_then_resume
from conftest import method_config, read_scalars, weights_of

# CRD's replica test, banks included, is tests/methods/test_crd.py's.
# Every method in a whole run on 1 and 2 replicas, several per run (their terms add up in one
# objective, each logged under its own name): four pairs of runs instead of fifteen, one per
# logit method (kd, dkd, dist and mlkd each distil the logits: one per objective).
METHOD_GROUPS = ("kd,at,fitnets,sp,rkd", "dkd,pkt,nst,cc,vid", "dist,reviewkd", "mlkd,ofd")


# SGD with momentum, not Adam, for OFD: Adam divides a gradient by its own magnitude, so
# float32 rounding noise in a gradient that is zero in exact arithmetic becomes a full
# step. OFD has one: its connector's BatchNorm removes any per-channel shift, so the OFD
# gradient on the student's last conv bias is exactly 0; 3 Adam steps put 1 and 2
# replicas 8e-5 apart on that bias while every other weight agrees to 2e-7 (SGD: 6e-8).
SGD_METHODS = ("ofd",)


@pytest.mark.parametrize("method", METHOD_GROUPS)
def test_method_is_replica_independent(method, conv_teacher, tmp_path, strategy_factory):
  """1 vs 2 replicas after 3 Adam steps (a 192-example epoch), every method of the group in
  one objective. Over 28 steps Adam turns float32 rounding noise in near-zero gradients into
  weight differences of 1e-5 to 3e-5 for DIST and RKD, while one step's gradients agree to
  float32 precision (next test)."""
  sgd = {"optimizer.name": "sgd", "optimizer.learning_rate.start": 0.01}
  uses_sgd = set(method.split(",")) & set(SGD_METHODS)
  config = method_config(method, train_size=192, **(sgd if uses_sgd else {}))
  one = runs.train_and_evaluate(config, str(tmp_path / "one"), "distill", DEFAULT,
                                (conv_teacher,))
  two = runs.train_and_evaluate(config, str(tmp_path / "two"), "distill", strategy_factory(2),
                                (conv_teacher,))
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "two"))))
  print(f"{method}: 1 vs 2 replicas max |dw| {diff:.2e}; extra params {one['extra_params']}")
  assert diff < 1e-5
  assert one["method"] == method and two["replicas"] == 2
  scalars = read_scalars(str(tmp_path / "one"))
  for name in method_registry.parse(method):
    term = "distill" if name == "kd" else name
    assert f"train/loss_{term}" in scalars, (method, sorted(scalars))
  assert all(np.isfinite(v) for _, v in scalars["train/loss_total"])


@pytest.mark.parametrize("method", ["dist", "rkd", "pkt", "sp", "cc"])
def test_relational_gradients_match_a_single_device(method, strategy_factory):
  """The global-batch (all-gathered) losses: one step's gradient on 2 replicas equals the
  single-device gradient to float32 precision (SGD with learning rate 1: the weight
  change is the gradient)."""
  from kd_research.methods import cc, dist, rkd, pkt, sp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 5, 16).astype(np.int32)}
  pairs = [("pooled", "pooled")]
  objective = (dist.DIST(1.0, 1.0, 1.0, 4.0, 0.0, [1.0]) if method == "dist" else
               {"rkd": rkd.RKD, "pkt": pkt.PKT, "sp": sp.SP, "cc": cc.CC}[method](
                   1.0, 0.0, [1.0], pairs))
  diff, scale = gradients_on_one_and_two_replicas(objective, batch, strategy_factory(2))
  print(f"{method}: gradient 1 vs 2 replicas max diff {diff:.2e} (max gradient {scale:.2e})")
  assert scale > 0 and diff <= 1e-5 * scale


def test_fitnets_connector_trains_resumes_exactly_and_is_not_exported(conv_teacher, tmp_path,
                                                                       monkeypatch):
  config = method_config("fitnets", **{"student.epochs": 2})
  full = str(tmp_path / "full")
  results = runs.train_and_evaluate(config, full, "distill", DEFAULT, (conv_teacher,))
  # Connector: 1x1 conv 8 -> 16 channels (student stage1 to teacher stage2) + BatchNorm.
  assert results["extra_params"] == 8 * 16 + 4 * 16
  exported = keras.models.load_model(os.path.join(full, "model.keras"), compile=False)
  assert exported.count_params() == results["params"]
  ckpt = tf.train.latest_checkpoint(os.path.join(full, "checkpoints"))
  names = [n for n, _ in tf.train.list_variables(ckpt)]
  assert any(n.startswith("objective/") for n in names)  # Connectors are checkpointed.
  cut = str(tmp_path / "cut")
  interrupt_then_resume(config, cut, conv_teacher, monkeypatch, stop_after=35,
                        expected_checkpoint=20)
  for a, b in zip(weights_of(full), weights_of(cut)):
    np.testing.assert_array_equal(a, b)
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(cut, "checkpoints")))
  for name in [n for n in names if n.startswith("objective/") and "OPTIMIZER" not in n]:
    np.testing.assert_array_equal(tf.train.load_checkpoint(ckpt).get_tensor(name),
                                  reader.get_tensor(name))


def test_fitnets_hint_stage_and_two_teachers(conv_teacher, tmp_path):
  config = method_config("fitnets", **{"student.epochs": 2, "distill.fitnets.hint_epochs": 1})
  results = runs.train_and_evaluate(config, str(tmp_path / "hint"), "distill", DEFAULT,
                                    (conv_teacher, conv_teacher))
  assert results["extra_params"] == 2 * (8 * 16 + 4 * 16)  # One connector per teacher.
  scalars = read_scalars(str(tmp_path / "hint"))
  ce = dict(scalars["train/loss_ce"])
  assert ce[10] == 0.0 and ce[max(ce)] > 0  # The hint stage has no CE term.


def test_methods_refuse_what_they_cannot_do(conv_teacher, tmp_path):
  with pytest.raises(UserError, match="unknown method"):
    config_lib.validate(method_config("crd2"))
  with pytest.raises(UserError, match=r"cannot serve method\(s\) at"):
    config_lib.validate(method_config("at", **{"distill.cache_teacher": True}))
  with pytest.raises(UserError, match="pick one"):
    method_registry.parse("kd,dkd")
  with pytest.raises(UserError, match="needs feature maps"):
    runs.train_and_evaluate(method_config("at", **{"student.model": "mlp"}),
                            str(tmp_path / "mlp"), "distill", DEFAULT, (conv_teacher,))
  for name in ("ofd", "reviewkd", "vid", "nst"):  # They read teacher maps: no cache.
    with pytest.raises(UserError, match=r"cannot serve method\(s\) " + name):
      config_lib.validate(method_config(name, **{"distill.cache_teacher": True}))
  with pytest.raises(UserError, match="method=ofd needs feature maps"):
    runs.train_and_evaluate(method_config("ofd", **{"student.model": "mlp"}),
                            str(tmp_path / "ofd_mlp"), "distill", DEFAULT, (conv_teacher,))
  with pytest.raises(UserError, match="vid.init_variance=1e-06 must exceed"):
    config_lib.validate(method_config("vid", **{"distill.vid.init_variance": 1e-6}))
  with pytest.raises(UserError, match="cc.taylor_order=-1 must be a whole number"):
    config_lib.validate(method_config("cc", **{"distill.cc.taylor_order": -1}))
  with pytest.raises(UserError, match="has no layer 'nope'"):
    runs.train_and_evaluate(method_config("pkt", **{"distill.pkt.student_tap": "nope"}),
                            str(tmp_path / "tap"), "distill", DEFAULT, (conv_teacher,))


def test_logit_standardization_run_records_only_the_active_method(conv_teacher, tmp_path):
  """A run with logit standardization records it, and trains (values checked in NumPy)."""
  config = method_config("kd", **{"distill.logit_standardization": True})
  runs.train_and_evaluate(config, str(tmp_path / "ls"), "distill", DEFAULT, (conv_teacher,))
  identity = json.load(open(tmp_path / "ls" / "config.json"))
  assert identity["distill"]["logit_standardization"] is True
  assert "at" not in identity["distill"] and "dkd" not in identity["distill"]


@pytest.mark.parametrize("method", ["kd", "dkd"])
def test_ctkd_temperature_trains_is_replica_independent_and_logged(method, conv_teacher,
                                                                   tmp_path, strategy_factory):
  """CTKD on kd and dkd (a 1-epoch curriculum: full reversal from the first step): 1 vs 2
  replicas agree on the student and on the learnt temperature; T and lambda are logged."""
  config = method_config(method, train_size=192, **{"distill.ctkd.enabled": True,
                                                    "distill.ctkd.decay_epochs": 1})
  temperatures = []
  for name, strategy in (("one", DEFAULT), ("two", strategy_factory(2))):
    runs.train_and_evaluate(config, str(tmp_path / name), "distill", strategy, (conv_teacher,))
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
        str(tmp_path / name / "checkpoints")))
    (key,) = [n for n in reader.get_variable_to_shape_map()
              if n.startswith("objective/") and "OPTIMIZER" not in n]
    temperatures.append(float(reader.get_tensor(key)))
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "two"))))
  print(f"ctkd on {method}: 1 vs 2 replicas max |dw| {diff:.2e}; v {temperatures}")
  assert diff < 1e-5 and abs(temperatures[0] - temperatures[1]) < 1e-5
  assert temperatures[0] != 1.0  # v moved from its initial value
  scalars = read_scalars(str(tmp_path / "one"))
  assert scalars["train/ctkd_lambda"][-1][1] == pytest.approx(1.0)
  logged_t = scalars["train/temperature"][-1][1]
  assert 1.0 < logged_t < 21.0
  identity = json.load(open(tmp_path / "one" / "config.json"))
  assert identity["distill"]["ctkd"]["enabled"] is True
