"""MLKD against a float64 NumPy transcription of the reference's loss, its masks' medians
against np.percentile, and one step's gradient on 1 vs 2 replicas."""

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import mlkd
from conftest import check, gradients_on_one_and_two_replicas

TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)


def softmax(z, t=1.0):
  z = z / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def standardize(z):
  return (z - z.mean(-1, keepdims=True)) / (1e-7 + z.std(-1, ddof=1, keepdims=True))


def kd_rows(s, t, temp):
  p, q = softmax(t, temp), softmax(s, temp)
  return temp ** 2 * (p * (np.log(p) - np.log(q))).sum(-1)


def gram_diff(s, t, temp, classes):
  ps, pt = softmax(s, temp), softmax(t, temp)
  if classes:
    return pt.T @ pt - ps.T @ ps
  return pt @ pt.T - ps @ ps.T


def cross_entropy(z, y):
  return -np.log(softmax(z)[np.arange(len(y)), y])


def numpy_mlkd(sw, ss, tw, ts, y, mask, ls=False, ce_weight=0.1, weight=0.9,
               level_weights=(1.0, 1.0, 1.0)):
  """The reference's forward_train (KD_ours.py) as a scalar, strong view at every T.

  'reference': its masks multiply batch-averaged scalars; 'select': per row / class."""
  conf = softmax(tw).max(1)
  example = (conf <= np.percentile(conf, 50)).astype(float)
  class_conf = softmax(tw).sum(0)
  per_class = (class_conf <= np.percentile(class_conf, 50)).astype(float)
  if mask == "none":
    example, per_class = np.ones_like(example), np.ones_like(per_class)
  b, c = sw.shape
  isw, iss, itw, its = (standardize(z) if ls else z for z in (sw, ss, tw, ts))
  levels = {"instance": 0.0, "batch": 0.0, "class": 0.0}
  for temp in TEMPERATURES:
    weak = kd_rows(isw, itw, temp)
    bc_rows = (gram_diff(sw, tw, temp, False) ** 2).sum(1)
    cc_rows = (gram_diff(sw, tw, temp, True) ** 2).sum(1)
    if mask == "reference":  # (scalar * mask).mean() in the reference
      levels["instance"] += weak.mean() * example.mean()
      levels["batch"] += bc_rows.sum() / b * example.mean()
      levels["class"] += cc_rows.sum() / c * per_class.mean()
    else:
      levels["instance"] += (weak * example).mean()
      levels["batch"] += (bc_rows * example).sum() / b
      levels["class"] += (cc_rows * per_class).sum() / c
    levels["instance"] += kd_rows(iss, its, temp).mean()
  ce = cross_entropy(sw, y).mean() + cross_entropy(ss, y).mean()
  levels["total"] = ce_weight * ce + weight * sum(
      w * levels[k] for w, k in zip(level_weights, ("instance", "batch", "class")))
  return levels


def logits(seed, b=16, c=10, scale=3.0):
  return np.random.default_rng(seed).normal(0, scale, (b, c))


@pytest.mark.parametrize("b", [15, 16])
def test_median_is_numpys_percentile_50(b):
  x = np.random.default_rng(b).uniform(size=b).astype(np.float32)
  assert float(mlkd.median(tf.constant(x))) == pytest.approx(np.percentile(x, 50), rel=1e-6)


@pytest.mark.parametrize("mask", ["reference", "select", "none"])
@pytest.mark.parametrize("ls", [False, True], ids=["raw", "ls"])
def test_mlkd_matches_the_numpy_transcription(mask, ls):
  sw, ss, tw, ts = (logits(i) for i in range(4))
  y = np.random.default_rng(9).integers(0, 10, 16)
  method = mlkd.MLKD("strong", TEMPERATURES, 0.9, 0.1, [1.0], mask, ls)
  f32 = lambda a: tf.constant(a, tf.float32)  # noqa: E731
  terms = method.terms({"label": tf.constant(y, tf.int32)},
                       {"logits": f32(sw), "views": {"strong": {"logits": f32(ss)}}},
                       {"logits": f32(tw[None]), "views": {"strong": {"logits": f32(ts[None])}}},
                       tf.constant(0, tf.int64))
  want = numpy_mlkd(sw, ss, tw, ts, y, mask, ls)
  for name in ("instance", "batch", "class"):
    check(f"mlkd {name} ({mask}{', ls' if ls else ''})",
          float(tf.reduce_mean(terms[f"mlkd_{name}"])), want[name], rtol=2e-5)
  check(f"mlkd total ({mask}{', ls' if ls else ''})", float(tf.reduce_mean(terms["total"])),
        want["total"], rtol=2e-5)


def test_two_teachers_are_weighted():
  sw, ss, tw, ts, tw2, ts2 = (logits(i) for i in range(6))
  y = np.random.default_rng(9).integers(0, 10, 16)
  method = mlkd.MLKD("strong", TEMPERATURES, 0.9, 0.0, [0.25, 0.75])
  f32 = lambda a: tf.constant(a, tf.float32)  # noqa: E731
  terms = method.terms({"label": tf.constant(y, tf.int32)},
                       {"logits": f32(sw), "views": {"strong": {"logits": f32(ss)}}},
                       {"logits": f32(np.stack([tw, tw2])),
                        "views": {"strong": {"logits": f32(np.stack([ts, ts2]))}}},
                       tf.constant(0, tf.int64))
  want = sum(w * numpy_mlkd(sw, ss, t, s, y, "reference", ce_weight=0.0)["total"]
             for w, t, s in ((0.25, tw, ts), (0.75, tw2, ts2)))
  check("mlkd two teachers", float(tf.reduce_mean(terms["total"])), want, rtol=2e-5)


def test_level_weights_weigh_each_level():
  sw, ss, tw, ts = (logits(i) for i in range(4))
  y = np.random.default_rng(9).integers(0, 10, 16)
  weights = (0.7, 0.5, 0.0025)
  method = mlkd.MLKD("strong", TEMPERATURES, 0.9, 0.1, [1.0], level_weights=weights)
  f32 = lambda a: tf.constant(a, tf.float32)  # noqa: E731
  terms = method.terms({"label": tf.constant(y, tf.int32)},
                       {"logits": f32(sw), "views": {"strong": {"logits": f32(ss)}}},
                       {"logits": f32(tw[None]), "views": {"strong": {"logits": f32(ts[None])}}},
                       tf.constant(0, tf.int64))
  want = numpy_mlkd(sw, ss, tw, ts, y, "reference", level_weights=weights)["total"]
  check("mlkd level weights", float(tf.reduce_mean(terms["total"])), want, rtol=2e-5)


def test_one_step_gradient_matches_a_single_device(strategy_factory):
  """The global-batch levels and medians (all-gathered): one SGD step (learning rate 1) on
  2 replicas moves the student as on one device."""
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (16, 8, 8, 1)).astype(np.float32),
           "view_strong": rng.uniform(0, 255, (16, 8, 8, 1)).astype(np.float32),
           "label": rng.integers(0, 5, 16).astype(np.int32)}
  objective = mlkd.MLKD("strong", TEMPERATURES, 0.9, 0.1, [1.0], "select")
  diff, scale = gradients_on_one_and_two_replicas(objective, batch, strategy_factory(2))
  print(f"mlkd: gradient 1 vs 2 replicas max diff {diff:.2e} (max gradient {scale:.2e})")
  assert scale > 0 and diff <= 1e-5 * scale


@pytest.mark.parametrize("overrides,match", [
    ({"distill.cache_teacher": True}, "cache_teacher=true cannot serve mlkd"),
    ({"distill.mlkd.mask": "median"}, "valid: reference, select, none"),
    ({"distill.mlkd.temperatures": (4.0, -1.0)}, "temperatures > 0"),
    ({"distill.mlkd.class_weight": -1.0}, "weights must be >= 0"),
    ({"distill.mlkd.view_ops": "flip,cutmix"}, "mixes labels"),
    ({"distill.mlkd.view_ops": "flip,blur"}, "valid: flip"),
    ({"augment.views": "strong=flip,cutmix"}, "mixes labels"),
])
def test_mlkd_config_errors_name_the_field(overrides, match):
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  from conftest import method_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match=match):
    run_spec.parse(method_config("mlkd", **overrides))


def test_the_strong_view_comes_with_the_method_unless_configured():
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from kd_research.train import resolve  # pylint: disable=g-import-not-at-top
  from conftest import method_config  # pylint: disable=g-import-not-at-top
  spec = run_spec.parse(method_config("mlkd"))
  assert resolve.run_views(spec, "distill") == (("strong", ("flip", "crop", "randaugment")),)
  assert resolve.run_views(spec, "student") == ()  # labels-only runs read no views
  spec = run_spec.parse(method_config("mlkd", **{"augment.views": "strong=randaugment;extra=flip"}))
  assert resolve.run_views(spec, "distill") == (("strong", ("randaugment",)),
                                                ("extra", ("flip",)))


def test_run_identity_holds_the_strong_views_randaugment_layers():
  """A resumed run must not continue with other RandAugment layers: the field is part of
  the identity when MLKD's own view uses RandAugment, and out of it when nothing does."""
  from kd_research.train import workdir  # pylint: disable=g-import-not-at-top
  from conftest import method_config  # pylint: disable=g-import-not-at-top
  identity = workdir.run_identity(method_config("mlkd"), "distill", ())
  assert identity["augment"]["randaugment_layers"] == 2
  assert "views" not in identity["augment"]
  identity = workdir.run_identity(method_config("kd"), "distill", ())
  assert "randaugment_layers" not in identity["augment"]
  assert "mlkd" not in identity["distill"]
