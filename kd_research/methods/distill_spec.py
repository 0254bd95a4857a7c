"""config.distill parsed once into typed values: the method list, each method's section,
the alpha and temperature schedules and the views the methods read.

``parse`` is called by the run's config parsing (kd_research/run_spec.py) for config.distill
and for every pipeline variant; the checks, the objective's construction and the run's
views then read the ``DistillSpec``, never the method string again.
"""

import dataclasses
import types
from typing import Mapping

from kd_research.common import schedules
from kd_research.data import augment
from kd_research.methods import registry


@dataclasses.dataclass(frozen=True)
class DistillSpec:
  """A distill section (config.distill or a variant's), parsed; ``where`` names it in errors."""
  where: str
  method: str                # as written ('kd,at'), for messages
  methods: tuple             # the method names, in combination order
  sections: Mapping          # {name: config.distill.<name>} of every method and modifier
  alpha: schedules.ScheduleSpec
  temperature: schedules.ScheduleSpec
  views: Mapping             # {view: ((methods reading it), the first one's default ops)}
  ce_weight: float
  logit_standardization: bool
  combine: str
  teacher_weights: tuple
  finetune_epochs: int
  finetune_lr_factor: float
  cache_teacher: bool
  cache_dtype: str
  cache_topk: int

  def section(self, name):
    """config.distill.<name>: a method's (or the CTKD modifier's) own fields."""
    return self.sections[name]


def parse(section, where="config.distill"):
  """The ``DistillSpec`` of a distill section; UserError for an unknown method or a bad
  schedule (the remaining checks are config_checks.distill_section's)."""
  methods = registry.parse(section.method)
  sections = types.MappingProxyType({
      name: section[name] for name in section if name in registry.section_names()})
  return DistillSpec(
      where=where, method=section.method, methods=methods, sections=sections,
      alpha=schedules.parse(section.alpha, f"{where}.alpha"),
      temperature=schedules.parse(section.temperature, f"{where}.temperature"),
      views=types.MappingProxyType({
          view: (tuple(readers), augment.parse_ops(ops))
          for view, (readers, ops) in registry.views_read(methods, sections).items()}),
      ce_weight=section.ce_weight, logit_standardization=section.logit_standardization,
      combine=section.combine, teacher_weights=tuple(section.teacher_weights),
      finetune_epochs=section.finetune_epochs, finetune_lr_factor=section.finetune_lr_factor,
      cache_teacher=section.cache_teacher, cache_dtype=section.cache_dtype,
      cache_topk=section.cache_topk)
