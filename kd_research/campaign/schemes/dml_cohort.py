"""The ``dml_cohort`` scheme: a deep-mutual-learning cohort beside the labels-only baseline.

``config.pipeline.dml_cohort=N`` (N >= 2) adds the stage ``student_dml``: N students of the
student's architecture trained together with no teacher (Zhang et al., CVPR 2018;
``student.cohort``, models/cohort.py, methods/mutual.py), once per student seed, planned in
the ``baseline`` group since it waits for nothing. Its row in the report is member 0's.
"""

from kd_research import config as config_lib
from kd_research.campaign import schemes
from kd_research.common.errors import UserError


@schemes.register
class DmlCohort(schemes.Scheme):
  """One labels-only cohort stage per campaign."""

  name = "dml_cohort"
  fields = {"dml_cohort": (0, "> 1: also a student_dml stage, a labels-only cohort of this "
                              "many students by deep mutual learning")}

  def validate(self, config):
    cohort = config.pipeline.dml_cohort
    if not (isinstance(cohort, int) and (cohort == 0 or cohort >= 2)):
      raise UserError(f"config.pipeline.dml_cohort={cohort!r}: 0 (none) or a cohort of 2 or "
                      "more students.")

  def student_stages(self, config):
    return [("student_dml", config_lib.replaced(
        config, **{"student.cohort": config.pipeline.dml_cohort}))]
