"""Schedules against NumPy formulas, traced once, and their validation."""

import math

import numpy as np
import pytest
import tensorflow as tf

from kd_research.common import schedules
from kd_research.common.errors import UserError

STEPS = np.array([0, 1, 17, 50, 99, 100, 150])
TOTAL = 100


def reference(name, step, start=0.9, end=0.3):
  p = np.clip(step / TOTAL, 0, 1)
  return {"constant": start + 0 * p, "linear": start + (end - start) * p,
          "cosine": end + (start - end) * 0.5 * (1 + np.cos(math.pi * p)),
          "exponential": start * (end / start) ** p}[name]


@pytest.mark.parametrize("name", ["constant", "linear", "cosine", "exponential"])
def test_schedule_matches_numpy(name):
  sched = schedules.Schedule(name, TOTAL, 0.9, 0.3)
  for step in STEPS:
    assert float(sched(step)) == pytest.approx(reference(name, step), rel=1e-5, abs=1e-6)
  np.testing.assert_allclose(sched(tf.constant(STEPS)).numpy(), reference(name, STEPS), rtol=1e-5)


def test_piecewise_matches_numpy():
  sched = schedules.Schedule("piecewise", TOTAL, 0, boundaries="0.25,0.5", values="3,2,1")
  want = np.select([STEPS / TOTAL < 0.25, STEPS / TOTAL < 0.5], [3, 2], 1)
  np.testing.assert_allclose(sched(tf.constant(STEPS)).numpy(), want)


def test_warmup_then_cosine():
  sched = schedules.Schedule("cosine", TOTAL, 1.0, 0.0, warmup_steps=10, warmup_from=0.0)
  for step in STEPS:
    want = step / 10 * reference("cosine", step, 1.0, 0.0) if step < 10 else reference(
        "cosine", step, 1.0, 0.0)
    assert float(sched(step)) == pytest.approx(want, abs=1e-6)


def test_traced_once_as_step_advances():
  sched = schedules.Schedule("cosine", TOTAL, 0.9, 0.1)
  fn = tf.function(lambda step: sched(step))
  values = [float(fn(tf.constant(s, tf.int64))) for s in range(0, 100, 7)]
  assert fn.experimental_get_tracing_count() == 1
  np.testing.assert_allclose(values, reference("cosine", np.arange(0, 100, 7), 0.9, 0.1),
                             rtol=1e-5)


def test_numpy_values_over_run_agree_with_tf():
  sched = schedules.Schedule("exponential", 40, 8.0, 2.0, warmup_steps=5, warmup_from=1.0)
  np.testing.assert_allclose(sched.values_over_run(), sched(tf.range(41)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(name="sawtooth"), "valid schedules"),
    (dict(name="piecewise", boundaries="0.5,0.2", values="1,2,3"), "strictly increasing"),
    (dict(name="piecewise", boundaries="0.5", values="1"), "one more value"),
    (dict(name="exponential", start=0.0), "start > 0"),
    (dict(name="piecewise", boundaries="a,b", values="1,2,3"), "comma-separated"),
])
def test_bad_schedules_raise(kwargs, match):
  args = dict(name="linear", total_steps=10, start=0.5, end=0.1)
  args.update(kwargs)
  with pytest.raises(UserError, match=match):
    schedules.Schedule(**args)


def test_range_check_over_the_whole_run():
  with pytest.raises(UserError, match="leaves"):
    schedules.Schedule("linear", 10, 0.9, 1.2, what="alpha").check_range(0.0, 1.0)
  with pytest.raises(UserError, match="T > 0"):
    schedules.Schedule("linear", 10, 4.0, 0.0, what="T").check_range(
        0.0, float("inf"), low_inclusive=False, what_range="T > 0")
  schedules.Schedule("cosine", 10, 0.9, 0.3).check_range(0.0, 1.0)
