"""The ``teacher_free`` scheme: labels-only students trained by teacher-free objectives
(self-distillation) beside the labels-only baseline.

``config.pipeline.teacher_free=('uskd',)`` adds the stage ``student_uskd``: the student's
architecture trained with ``student.objective=uskd`` (methods/uskd.py), once per student
seed, planned in the ``baseline`` group since it waits for nothing. It answers how much of
a distilled student's gain a student gets with no teacher at all.
"""

from kd_research import config as config_lib
from kd_research.campaign import schemes
from kd_research.common.errors import UserError
from kd_research.methods import registry as methods_lib


@schemes.register
class TeacherFree(schemes.Scheme):
  """One labels-only stage per named teacher-free objective."""

  name = "teacher_free"
  fields = {"teacher_free": ((), "teacher-free objectives (uskd), each also trained as a "
                                 "labels-only student: stage student_<name>")}

  def validate(self, config):
    names, valid = tuple(config.pipeline.teacher_free), methods_lib.teacher_free()
    bad = [n for n in names if n not in valid]
    if bad or len(set(names)) != len(names):
      raise UserError(f"config.pipeline.teacher_free={names!r}: each once, from "
                      f"{', '.join(valid)}.")

  def student_stages(self, config):
    return [(f"student_{name}", config_lib.replaced(config, **{"student.objective": name}))
            for name in config.pipeline.teacher_free]
