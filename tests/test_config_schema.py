"""Every field that reaches a config (an experiment module, a variant, a candidate, an API
override) is checked against base_config(): an unknown one is refused with the valid names,
never written beside the real field (a variant's ``dist.tau`` once sat next to
``dist.temperature`` and the run used tau 4)."""

import ml_collections
import pytest

from conftest import tiny_config
from kd_research import api
from kd_research import config as config_lib
from kd_research import run_spec
from kd_research.common.errors import UserError


def _with_variant(**variant):
  config = tiny_config()
  with config.unlocked():
    config.pipeline.variants = ml_collections.ConfigDict({"v": variant})
  return config


def test_a_misspelt_nested_variant_field_is_refused_with_the_valid_names():
  with pytest.raises(UserError, match=r"variant v: config.distill.dist has no field 'tau'; "
                     r"valid: beta, gamma, temperature, weight"):
    run_spec.parse(_with_variant(method="dist", dist=dict(tau=1.0)))
  with pytest.raises(UserError, match=r"config.distill has no field 'temprature'"):
    run_spec.parse(_with_variant(method="kd", temprature=2.0))
  with pytest.raises(UserError, match=r"config.distill.dist has no field 'weights'"):
    run_spec.parse(_with_variant(method="dist", dist=dict(weights=2.0)))
  with pytest.raises(UserError, match=r"config.distill.dkd is a section"):
    run_spec.parse(_with_variant(method="dkd", dkd=8.0))


def test_variant_fields_and_schedules_still_apply():
  config = _with_variant(method="dist", dist=dict(temperature=1.0), alpha=0.5,
                         temperature=dict(start=8.0, end=2.0, kind="linear"))
  run_spec.parse(config)
  variant = config_lib.apply_variant(config, "v")
  assert variant.distill.dist.temperature == 1.0 and variant.distill.dist.weight == 2.0
  assert (variant.distill.alpha.start, variant.distill.alpha.end) == (0.5, 0.5)
  assert variant.distill.temperature.kind == "linear" and variant.distill.temperature.end == 2.0


def test_a_variant_sets_its_own_optimizer_checked_like_the_run_s():
  """DOT's variants: ``optimizer=dict(...)`` sets config.optimizer of that variant's runs
  only, by the same field rule, and the optimizer checks run on it before any run."""
  config = _with_variant(method="kd", optimizer=dict(name="sgd", dot_delta=0.075,
                                                     learning_rate=dict(start=0.05)))
  run_spec.parse(config)
  variant = config_lib.apply_variant(config, "v")
  assert variant.optimizer.dot_delta == 0.075 and variant.optimizer.learning_rate.start == 0.05
  assert config.optimizer.name == "adam" and variant.distill.method == "kd"
  with pytest.raises(UserError, match=r"variant v: config.optimizer.dot_delta=0.075 needs "
                     r"variant v: config.optimizer.name=sgd \(got 'adam'\)"):
    run_spec.parse(_with_variant(method="kd", optimizer=dict(dot_delta=0.075)))
  with pytest.raises(UserError, match=r"config.optimizer has no field 'delta'"):
    run_spec.parse(_with_variant(method="kd", optimizer=dict(delta=0.075)))


def test_a_candidate_with_an_unknown_field_is_refused():
  config = _with_variant(method="dist")
  with config.unlocked():
    config.pipeline.candidates = ml_collections.ConfigDict(
        {"v": {"c1": {"dist": {"gama": 2.0}}}})
  with pytest.raises(UserError, match=r"variant v \(with its candidate\): config.distill.dist "
                     r"has no field 'gama'"):
    run_spec.parse(config)


def test_an_experiment_module_that_adds_a_field_is_refused_at_finalize():
  config = config_lib.base_config()
  config.distill.dist.tau = 1.0  # Unlocked, as an experiment module builds its config.
  with pytest.raises(UserError, match=r"config.distill.dist.tau is not a config field; valid "
                     r"fields of config.distill.dist: beta, gamma, temperature, weight"):
    config_lib.finalize(config)
  config = config_lib.base_config()
  config.extra_teachers.t2 = config_lib.model_config("mlp")
  config.extra_teachers.t2.widht = 3
  with pytest.raises(UserError, match=r"config.extra_teachers.t2.widht is not a config field"):
    config_lib.finalize(config)


def test_api_overrides_of_unknown_nested_fields_are_refused():
  with pytest.raises(UserError, match=r"override 'distill.dist.tau'"):
    api.make_config("fashion_mnist:tiny", {"distill.dist.tau": 1.0})
  with pytest.raises(UserError, match=r"config.distill.dist.tau is not a config field"):
    run_spec.parse(api.make_config("fashion_mnist:tiny", {"distill.dist": {"tau": 1.0}}))


def test_every_experiment_and_preset_passes_the_schema():
  from kd_research import main  # pylint: disable=g-import-not-at-top
  for name in main.experiment_names():
    for preset in main.experiment_presets(name) or (None,):
      config_lib.check_schema(api.load_experiment(name, preset))
