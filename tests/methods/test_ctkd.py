"""CTKD's learnable temperature against float64 NumPy: the loss at T = t_start + t_range *
sigmoid(v), the reversed gradient on v, the student's gradient left as plain KD's, the
reference's cosine curriculum; config checks and run identities."""

import json
import math

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.methods import ctkd
from kd_research.methods import dkd as dkd_lib
from kd_research.methods import hinton_kd as kd_lib
from kd_research.methods import registry as method_registry
from kd_research.train import end_to_end
from conftest import DEFAULT, check, method_config, read_scalars, weights_of

SECTION = ml_collections.ConfigDict(dict(ctkd.DEFAULTS, enabled=True))


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _numpy_kd(student, teacher, labels, t, alpha):
  """Per-example alpha T^2 KL(p_T || q_T) + (1 - alpha) CE, float64."""
  p, q = _softmax(teacher / t), _softmax(student / t)
  kl = np.sum(p * (np.log(p) - np.log(q)), -1)
  ce = -np.log(_softmax(student)[np.arange(len(labels)), labels])
  return alpha * t * t * kl + (1 - alpha) * ce, t * t * kl


def _reference_lambda(epoch, loops=10):
  """The reference's CosineDecay(max_value=0, min_value=-1, num_loops=10).get_value(epoch),
  the GRL's multiplier (negative: reversal); its strength is minus it."""
  i = min(max(epoch, 0), loops)
  value = (math.cos(i * math.pi / loops) + 1.0) * 0.5
  return value * (0.0 - (-1.0)) + (-1.0)


def test_curriculum_follows_the_reference_schedule():
  for epoch in range(1, 14):
    step = (epoch - 1) * 7 + 3  # 7 steps per epoch, mid-epoch
    got = float(ctkd.curriculum(step, 7, 1.0, 10))
    assert abs(got - (-_reference_lambda(epoch))) < 1e-6, epoch


def _batch(seed=0, n=6, classes=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, classes)) * 2, rng.normal(size=(n, classes)) * 3,
          rng.integers(0, classes, n))


def test_kd_with_learnable_temperature_matches_numpy_and_reverses_its_gradient():
  student, teacher, labels = _batch()
  temperature = ctkd.LearnableTemperature(SECTION, steps_per_epoch=5)
  method = kd_lib.HintonKD(lambda step: 0.9, temperature, weights=[1.0])
  method.build({}, [{}])
  assert method.trainable_variables == [temperature.logit]
  step = 12  # epoch index 2 -> e = 3
  strength = -_reference_lambda(3)
  logits = tf.Variable(student, dtype=tf.float32)
  with tf.GradientTape(persistent=True) as tape:
    terms = method.terms({"label": tf.constant(labels)}, {"logits": logits},
                         {"logits": tf.constant(teacher[None], tf.float32)}, step)
    mean = tf.reduce_mean(terms["total"])
  sig = 1 / (1 + math.exp(-1.0))
  t = 1.0 + 20.0 * sig  # v starts at 1: T = 15.62
  total, distill = _numpy_kd(student, teacher, labels, t, 0.9)
  check("ctkd kd loss", terms["total"].numpy(), total)
  check("ctkd kd distill", terms["distill"].numpy(), distill)
  # d mean / dv through the reversal: -strength * alpha * d mean(distill) / dT * dT / dv.
  h = 1e-5
  slope = (_numpy_kd(student, teacher, labels, t + h, 0.9)[1].mean()
           - _numpy_kd(student, teacher, labels, t - h, 0.9)[1].mean()) / (2 * h)
  want = -strength * 0.9 * slope * 20.0 * sig * (1 - sig)
  check("ctkd reversed gradient", tape.gradient(mean, temperature.logit).numpy(), want,
        rtol=1e-3)
  # The student's gradient is plain KD's at the same T.
  fixed = kd_lib.HintonKD(lambda step: 0.9, lambda step: tf.constant(t, tf.float32),
                          weights=[1.0])
  with tf.GradientTape() as plain_tape:
    plain = tf.reduce_mean(fixed.terms({"label": tf.constant(labels)}, {"logits": logits},
                                       {"logits": tf.constant(teacher[None], tf.float32)},
                                       step)["total"])
  np.testing.assert_allclose(tape.gradient(mean, logits).numpy(),
                             plain_tape.gradient(plain, logits).numpy(), rtol=1e-5, atol=1e-7)
  scalars = method.scalars(step)
  assert abs(scalars["temperature"] - t) < 1e-5 and abs(scalars["ctkd_lambda"] - strength) < 1e-6


def test_dkd_with_learnable_temperature_matches_its_terms_at_that_temperature():
  student, teacher, labels = _batch(1)
  temperature = ctkd.LearnableTemperature(SECTION, steps_per_epoch=5)
  method = dkd_lib.DKD(1.0, 8.0, temperature, 0, 1.0, [1.0])
  method.build({}, [{}])
  temperature.logit.assign(-0.5)
  t = 1.0 + 20.0 / (1 + math.exp(0.5))
  got = method.method_loss({"label": tf.constant(labels)}, {"logits": tf.constant(student,
                                                                                 tf.float32)},
                           {"logits": tf.constant(teacher[None], tf.float32)}, 0, 100)
  tckd, nckd = dkd_lib.dkd_terms(student, teacher, labels, t)
  check("ctkd dkd loss", got.numpy(), (1.0 * tckd + 8.0 * nckd).numpy(), rtol=1e-5)
  assert method.trainable_variables == [temperature.logit]


def test_ctkd_config_is_checked_and_left_out_of_identities_when_off():
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from kd_research.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  assert "ctkd" not in workdir_lib.run_identity(config, "distill", ())["distill"]
  on = tiny_config(**{"distill.ctkd.enabled": True})
  assert workdir_lib.run_identity(on, "distill", ())["distill"]["ctkd"]["enabled"] is True
  for overrides, message in (({"distill.method": "at"}, "modifies kd or dkd"),
                             ({"distill.ctkd.t_range": 0.0}, "t_range must be > 0"),
                             ({"distill.ctkd.decay_epochs": 0}, "decay_epochs must be")):
    bad = tiny_config(**{"distill.ctkd.enabled": True, **overrides})
    with pytest.raises(UserError, match=message):
      run_spec.parse(bad)


def test_bench_rows_take_the_ctkd_modifier():
  from kd_research.tools import bench_runs  # pylint: disable=g-import-not-at-top
  assert bench_runs.method_overrides("dkd+ctkd") == {"distill.method": "dkd",
                                                     "distill.ctkd.enabled": True}
  with pytest.raises(UserError, match="unknown modifier.*valid: ctkd, ls"):
    bench_runs.method_overrides("kd+nope")
  with pytest.raises(UserError, match="unknown method"):
    bench_runs.method_overrides("nope+ctkd")


def _numpy_dkd(student, teacher, labels, t, alpha=1.0, beta=8.0):
  """mdistiller's dkd_loss in float64, with the non-target distributions over the other
  classes only (its softmax of logits - 1000 * gt_mask, whose target entry is exactly 0)."""
  mask = np.eye(student.shape[1])[labels].astype(bool)
  p_s, p_t = _softmax(student / t), _softmax(teacher / t)
  b_s = np.stack([p_s[mask], 1 - p_s[mask]], -1)
  b_t = np.stack([p_t[mask], 1 - p_t[mask]], -1)
  tckd = np.sum(b_t * (np.log(b_t) - np.log(b_s)), -1)
  rest = lambda z: z[~mask].reshape(len(z), -1)
  q_s, q_t = _softmax(rest(student) / t), _softmax(rest(teacher) / t)
  nckd = np.sum(q_t * (np.log(q_t) - np.log(q_s)), -1)
  return (alpha * tckd + beta * nckd) * t * t


def test_dkd_temperature_gradient_is_finite_and_matches_central_differences():
  """CTKD + DKD: the reference's temperature gradient is NaN (F.kl_div meets a target of
  exactly 0 at the true class, whose d/dT is 0 * log 0); ours is finite and agrees with
  float64 central differences of mdistiller's dkd_loss."""
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(0, 3, (16, 10)), rng.normal(0, 3, (16, 10))
  labels = rng.integers(0, 10, 16)
  for t0 in (1.5, 4.0, 9.0):
    t = tf.Variable(t0, dtype=tf.float32)
    with tf.GradientTape() as tape:
      tckd, nckd = dkd_lib.dkd_terms(student.astype(np.float32), teacher.astype(np.float32),
                                     labels, t)
      loss = tf.reduce_mean(1.0 * tckd + 8.0 * nckd)
    grad = float(tape.gradient(loss, t))
    check(f"dkd_value_T{t0}", float(loss), np.mean(_numpy_dkd(student, teacher, labels, t0)),
          rtol=1e-4)
    h = 1e-4
    central = (np.mean(_numpy_dkd(student, teacher, labels, t0 + h))
               - np.mean(_numpy_dkd(student, teacher, labels, t0 - h))) / (2 * h)
    assert np.isfinite(grad)
    check(f"dkd_dT_T{t0}", grad, central, rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize("method", method_registry.having("ctkd_modifies"))
def test_ctkd_temperature_trains_is_replica_independent_and_logged(method, conv_teacher,
                                                                   tmp_path, strategy_factory):
  """CTKD on kd and dkd (a 1-epoch curriculum: full reversal from the first step): 1 vs 2
  replicas agree on the student and on the learnt temperature; T and lambda are logged."""
  config = method_config(method, train_size=192, **{"distill.ctkd.enabled": True,
                                                    "distill.ctkd.decay_epochs": 1})
  temperatures = []
  for name, strategy in (("one", DEFAULT), ("two", strategy_factory(2))):
    end_to_end.train_and_evaluate(config, str(tmp_path / name), "distill", strategy, (conv_teacher,))
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
