"""A run's config validated and parsed once into typed values (``parse``).

``parse`` is the one validation of a config: every field a run depends on is checked here
(the per-section checks are config_checks.py's), and the strings are parsed once into the
``RunSpec`` the run's modules receive: the data spec, the augmentation ops and views, the
learning-rate schedule, the distillation's methods, sections and schedules, and the
teachers. The CLI, the Python API, the pipeline and every run call it; nothing downstream
parses ``augment.ops``, a schedule entry or ``distill.method`` again.
"""

import dataclasses

from kd_research import config as config_lib
from kd_research import config_checks as checks
from kd_research.common import schedules
from kd_research.data import augment
from kd_research.data import datasets
from kd_research.data import views as views_lib
from kd_research.methods import distill_spec


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """One teacher of the ensemble: its name ('teacher' or an extra teacher's) and entry."""
  name: str
  entry: object


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The typed parts of a validated config. ``config`` stays the run's record (its
  identity, config.json, the bookkeeping fields of config.run and config.distribution)."""
  config: object
  data: datasets.DataSpec
  augment: augment.AugmentSpec
  views: tuple                  # config.augment.views: ((name, ops), ...)
  stability_ops: tuple          # config.run.stability_ops, parsed
  learning_rate: schedules.ScheduleSpec
  distill: distill_spec.DistillSpec
  teachers: tuple               # TeacherSpec of each teacher, in the ensemble's order


def parse(config):
  """Checks every field a run depends on (UserError naming the field and the valid
  values) and returns the config's ``RunSpec``."""
  config_lib.check_schema(config)
  data = datasets.data_spec(config)
  checks.data_and_speed(config, data)
  checks.bookkeeping(config)
  for role, entry in config_lib.model_entries(config):
    checks.model_entry(role, entry)
  learning_rate = schedules.parse(config.optimizer.learning_rate,
                                  "config.optimizer.learning_rate")
  checks.learning_rate(learning_rate)
  stability_ops = augment.parse_ops(config.run.stability_ops)
  checks.stability_ops(stability_ops)
  augmentation = augment.parse(config.augment)
  checks.repeated_augmentation(config)
  spec = RunSpec(
      config=config, data=data, augment=augmentation,
      views=views_lib.parse(config.augment.views), stability_ops=stability_ops,
      learning_rate=learning_rate, distill=_distill(config, config.distill, augmentation),
      teachers=tuple(TeacherSpec(name, entry)
                     for name, entry in config_lib.teacher_entries(config)))
  for name in config.pipeline.variants:
    for candidate, extra in [(None, None)] + list(
        config.pipeline.candidates.get(name, {}).items()):
      variant = config_lib.apply_variant(config, name, extra)
      where = f"variant {name}" + (f", candidate {candidate}" if candidate else "")
      _distill(config, variant.distill, augmentation, where)
      checks.optimizer(variant, f"{where}: config.optimizer")
  for scheme in config_lib.campaign_schemes().values():
    scheme.validate(config)
  unknown = sorted(set(config.pipeline.candidates) - set(config.pipeline.variants))
  checks.need(not unknown, f"config.pipeline.candidates names {unknown}, which are not "
              f"variants; variants: {', '.join(config.pipeline.variants) or 'none'}.")
  return spec


def _distill(config, section, augmentation, where="config.distill"):
  """A distill section parsed and checked (for config.distill and each variant)."""
  parsed = distill_spec.parse(section, where)
  checks.distill_section(parsed, 1 + len(config.extra_teachers), config.student.epochs,
                         augmentation.mixing)
  return parsed
