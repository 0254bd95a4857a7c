"""The distillation methods together: every method trains in a whole run independent of the
replica count, the relational gradients match a single device, and bad combinations are
refused. Each method's own loss and runs are in its own file, tests/methods/test_NAME.py."""

import numpy as np
import pytest

from kd_research import run_spec
from kd_research.methods import registry as method_registry
from kd_research.train import end_to_end
from kd_research.common.errors import UserError
from conftest import DEFAULT, gradients_on_one_and_two_replicas
from conftest import method_config, read_scalars, weights_of

# CRD's replica test, banks included, is tests/methods/test_crd.py's.
# DeiT's (with OFA-KD on a ViT student) is tests/methods/test_deit.py's.
# Every method in a whole run on 1 and 2 replicas, several per run (their terms add up in one
# objective, each logged under its own name): four pairs of runs instead of twenty-one.
# USKD's (a labels-only objective) is tests/methods/test_uskd.py's.
METHOD_GROUPS = ("kd,at,fitnets,sp,rkd,sdd", "dkd,nkd,pkt,nst,cc,vid", "dist,wttm,reviewkd,ofa",
                 "mlkd,crld,ofd")


# SGD with momentum, not Adam, for OFD: Adam divides a gradient by its own magnitude, so
# float32 rounding noise in a gradient that is zero in exact arithmetic becomes a full
# step. OFD has one: its connector's BatchNorm removes any per-channel shift, so the OFD
# gradient on the student's last conv bias is exactly 0; 3 Adam steps put 1 and 2
# replicas 8e-5 apart on that bias while every other weight agrees to 2e-7 (SGD: 6e-8).
# That group trains with DOT's SGD (train/dot.py), whose two momenta cross replicas in the
# step's one all-reduce.
SGD_METHODS = ("ofd",)


@pytest.mark.parametrize("method", METHOD_GROUPS)
def test_method_is_replica_independent(method, conv_teacher, tmp_path, strategy_factory):
  """1 vs 2 replicas after 3 Adam steps (a 192-example epoch), every method of the group in
  one objective. Over 28 steps Adam turns float32 rounding noise in near-zero gradients into
  weight differences of 1e-5 to 3e-5 for DIST and RKD, while one step's gradients agree to
  float32 precision (next test)."""
  sgd = {"optimizer.name": "sgd", "optimizer.learning_rate.start": 0.01,
         "optimizer.dot_delta": 0.075}
  uses_sgd = set(method.split(",")) & set(SGD_METHODS)
  config = method_config(method, train_size=192, **(sgd if uses_sgd else {}))
  one = end_to_end.train_and_evaluate(config, str(tmp_path / "one"), "distill", DEFAULT,
                                      (conv_teacher,))
  two = end_to_end.train_and_evaluate(config, str(tmp_path / "two"), "distill", strategy_factory(2),
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


def test_methods_refuse_what_they_cannot_do(conv_teacher, tmp_path):
  with pytest.raises(UserError, match="unknown method"):
    run_spec.parse(method_config("crd2"))
  with pytest.raises(UserError, match=r"cannot serve method\(s\) at"):
    run_spec.parse(method_config("at", **{"distill.cache_teacher": True}))
  with pytest.raises(UserError, match="pick one"):
    method_registry.parse("kd,dkd")
  with pytest.raises(UserError, match="needs feature maps"):
    end_to_end.train_and_evaluate(method_config("at", **{"student.model": "mlp"}),
                                  str(tmp_path / "mlp"), "distill", DEFAULT, (conv_teacher,))
  for name in ("ofd", "reviewkd", "vid", "nst"):  # They read teacher maps: no cache.
    assert method_registry.methods()[name].reads_teacher_maps(None)
    with pytest.raises(UserError, match=r"cannot serve method\(s\) " + name):
      run_spec.parse(method_config(name, **{"distill.cache_teacher": True}))
  with pytest.raises(UserError, match="method=ofd needs feature maps"):
    end_to_end.train_and_evaluate(method_config("ofd", **{"student.model": "mlp"}),
                                  str(tmp_path / "ofd_mlp"), "distill", DEFAULT, (conv_teacher,))
  with pytest.raises(UserError, match="vid.init_variance=1e-06 must exceed"):
    run_spec.parse(method_config("vid", **{"distill.vid.init_variance": 1e-6}))
  with pytest.raises(UserError, match="cc.taylor_order=-1 must be a whole number"):
    run_spec.parse(method_config("cc", **{"distill.cc.taylor_order": -1}))
  with pytest.raises(UserError, match="has no layer 'nope'"):
    end_to_end.train_and_evaluate(method_config("pkt", **{"distill.pkt.student_tap": "nope"}),
                                  str(tmp_path / "tap"), "distill", DEFAULT, (conv_teacher,))


def test_capabilities_are_class_attributes_read_by_the_checks():
  """What a method can do is an attribute of its class; the config checks and their messages
  read it (no list of names kept beside the registry)."""
  assert method_registry.having("ctkd_modifies") == ["kd", "dkd"]
  assert method_registry.having("standardizes_logits") == ["kd", "dkd", "mlkd"]
  assert method_registry.having("splits_target_class") == ["dkd", "sdd"]
  assert [n for n, c in method_registry.methods().items() if c.bank_field] == ["crd"]
  with pytest.raises(UserError, match="ctkd.enabled=true modifies kd or dkd"):
    run_spec.parse(method_config("dist", **{"distill.ctkd.enabled": True}))
  with pytest.raises(UserError, match="logit_standardization modifies kd, dkd, mlkd"):
    run_spec.parse(method_config("dist", **{"distill.logit_standardization": True}))
  with pytest.raises(UserError, match="dkd split.s. the target class"):
    run_spec.parse(method_config("dkd", **{"augment.ops": ("mixup",)}))
