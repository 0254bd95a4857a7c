"""run_spec.parse: a config validated once and parsed into typed values that the run's
modules receive, and nothing parsed again downstream."""

import dataclasses

import pytest

from kd_research import run_spec
from kd_research.common import schedules
from kd_research.data import augment
from kd_research.methods import distill_spec
from kd_research.train import end_to_end
from kd_research.common.errors import UserError
from conftest import DEFAULT, tiny_config


def test_the_typed_values_of_a_config():
  config = tiny_config(**{
      "augment.ops": ("flip", "crop"), "augment.views": "strong=flip,randaugment",
      "distill.method": "at,kd", "run.stability_ops": ("flip",),
      "distill.alpha": dict(kind="linear", start=0.9, end=0.3, warmup_steps=0,
                            warmup_from=0.0, boundaries=(), values=())})
  with config.unlocked():
    config.extra_teachers.second = config.teacher.copy_and_resolve_references()
  spec = run_spec.parse(config)
  assert spec.augment.ops == ("flip", "crop") and spec.augment.mixing == ()
  assert spec.augment.crop_padding == config.augment.crop_padding
  assert spec.views == (("strong", ("flip", "randaugment")),)
  assert spec.stability_ops == ("flip",)
  assert spec.distill.methods == ("kd", "at")  # combination order: the logit method first
  assert spec.distill.section("at") is config.distill.at
  assert (spec.distill.alpha.kind, spec.distill.alpha.start, spec.distill.alpha.end) == (
      "linear", 0.9, 0.3)
  assert float(spec.distill.alpha.over(10)(10)) == pytest.approx(0.3)
  assert spec.learning_rate.what == "config.optimizer.learning_rate"
  assert [t.name for t in spec.teachers] == ["teacher", "second"]
  assert spec.data.source is None and spec.data.dataset == config.dataset
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.distill.methods = ("dkd",)


def test_a_variant_is_parsed_and_checked_with_the_config():
  config = tiny_config(**{"pipeline.variants": {"bad": {"alpha": 1.5}}})
  with pytest.raises(UserError, match=r"variant bad\.alpha .* leaves \[0\.0, 1\.0\]"):
    run_spec.parse(config)


def test_a_run_parses_its_config_once(tmp_path, teacher_file, monkeypatch):
  """A distillation run (teachers checked once, Hinton KD built, augmentation and views
  made, a cache off) parses the ops, the schedules and the distill section exactly as
  often as one run_spec.parse does: no module parses them again."""
  counts = {}

  def counted(module, name):
    original = getattr(module, name)

    key = f"{module.__name__.rsplit('.', 1)[-1]}.{name}"

    def wrapper(*args, **kwargs):
      counts[key] = counts.get(key, 0) + 1
      return original(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapper)

  for module, name in ((augment, "parse_ops"), (schedules, "parse"),
                       (distill_spec, "parse")):
    counted(module, name)
  config = tiny_config(**{"student.epochs": 1, "augment.ops": ("flip", "crop"),
                          "augment.views": "plain=flip"})
  run_spec.parse(config)
  once = dict(counts)
  # The main ops, the stability ops, the view's ops, MLKD's and CRLD's section checks of
  # their own views' ops (every method's section is checked, active or not); lr, alpha, T;
  # config.distill.
  assert once == {"augment.parse_ops": 5, "schedules.parse": 3, "distill_spec.parse": 1}
  counts.clear()
  end_to_end.train_and_evaluate(config, str(tmp_path / "kd"), "distill", DEFAULT,
                                (teacher_file,))
  assert counts == once, (counts, once)
