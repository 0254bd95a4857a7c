"""The scheme seam: a training scheme is one file. A throwaway scheme, registered here and
nowhere else, gets its config field, its validation, its stages in the campaign (what they
run after follows from their teachers), its group in the plan and its line in
docs/config.md's generator, with no other module touched."""

import os

import pytest

from conftest import tiny_config
from kd_research import config as config_lib
from kd_research import run_spec
from kd_research.campaign import plan as plan_lib
from kd_research.campaign import schemes
from kd_research.campaign import stages as stages_lib
from kd_research.common import plugins
from kd_research.common.errors import UserError
from kd_research.tools import config_reference


class SelfDistill(schemes.Scheme):
  """Throwaway: one student-architecture model distilled from the teacher, which then
  teaches the students; and a labels-only stage beside the baseline."""

  name = "self_distill"
  fields = {"self_distill": (0, "throwaway: 1 adds a self-distillation stage")}

  def validate(self, config):
    if config.pipeline.self_distill not in (0, 1):
      raise UserError(f"config.pipeline.self_distill={config.pipeline.self_distill!r}: 0 or 1.")

  def teacher_stages(self, config, workdir, teacher_paths):
    run_dir = os.path.join(workdir, "self")
    stage = stages_lib.Stage("self", "self", run_dir, "distill", config, tuple(teacher_paths))
    return [stage], [os.path.join(run_dir, "model.keras")]

  def student_stages(self, config):
    return [("student_wide", config_lib.replaced(config, **{"student.width": 32}))]


@pytest.fixture
def throwaway(monkeypatch):
  real = plugins.registered

  def with_throwaway(kind, package):
    found = real(kind, package)
    return dict(found, self_distill=SelfDistill()) if kind == schemes.KIND else found
  monkeypatch.setattr(plugins, "registered", with_throwaway)


def test_the_registered_schemes_declare_their_fields():
  found = schemes.schemes()
  assert list(found) == ["chain", "dml_cohort", "teacher_free"]
  pipeline = config_lib.base_config().pipeline
  assert pipeline.chain == () and pipeline.dml_cohort == 0 and pipeline.teacher_free == ()
  with pytest.raises(UserError, match=r"teacher_free=\('nope',\): each once, from uskd"):
    run_spec.parse(tiny_config(**{"pipeline.teacher_free": ("nope",)}))
  config = tiny_config(**{"pipeline.teacher_free": ("uskd",)})
  run_spec.parse(config)
  (name, uskd), = found["teacher_free"].student_stages(config)
  assert name == "student_uskd" and uskd.student.objective == "uskd"
  with pytest.raises(UserError, match="dml_cohort=1: 0 .none. or a cohort of 2 or more"):
    run_spec.parse(tiny_config(**{"pipeline.dml_cohort": 1}))
  with pytest.raises(UserError, match="unknown model 'nope'"):
    run_spec.parse(tiny_config(**{"pipeline.chain": ("nope",)}))


def test_a_new_scheme_is_one_file(throwaway, tmp_path):
  assert config_lib.base_config().pipeline.self_distill == 0
  with pytest.raises(UserError, match="self_distill=2: 0 or 1"):
    run_spec.parse(tiny_config(**{"pipeline.self_distill": 2}))
  config = tiny_config(**{"pipeline.self_distill": 1, "pipeline.seeds": (0, 1)})
  workdir = str(tmp_path / "c")
  stages = {s.id: s for s in stages_lib.campaign_stages(config, workdir)}
  assert list(stages) == ["teacher", "self", "student_baseline/seed_0",
                          "student_baseline/seed_1", "student_wide/seed_0",
                          "student_wide/seed_1", "student_kd/seed_0", "student_kd/seed_1",
                          "report"]
  assert stages["self"].after == ("teacher",)
  assert stages["student_kd/seed_0"].after == ("self",)
  assert stages["student_kd/seed_0"].teachers == (os.path.join(workdir, "self", "model.keras"),)
  assert stages["student_wide/seed_1"].config.student.width == 32
  wide = stages["student_wide/seed_1"]
  assert wide.after == () and wide.role == "student"
  plan = plan_lib.read_plan(plan_lib.write_plan(config, workdir))
  assert [(g["name"], g["after"]) for g in plan["groups"]] == [
      ("teachers", []), ("self", ["teachers"]), ("baseline", []), ("students", ["self"]),
      ("report", ["teachers", "self", "baseline", "students"])]
  assert "| `pipeline.self_distill` | `0` | throwaway: 1 adds a self-distillation stage |" in (
      config_reference.markdown())


def test_without_the_scheme_the_campaign_is_unchanged(tmp_path):
  config = tiny_config()
  ids = [s.id for s in stages_lib.campaign_stages(config, str(tmp_path))]
  assert ids == ["teacher", "student_baseline", "student_kd", "report"]
