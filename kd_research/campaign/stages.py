"""The one list of a campaign's stages: what the pipeline runs, ``--plan`` writes and the Slurm
arrays submit.

    teachers [-> the schemes' teacher stages (chain1 -> chain2 ...)]
      -> sweep (candidates) -> students (distilled, per variant and seed) -> report
    baseline (labels only) [+ the schemes' student stages (student_dml)]   -/

Each stage is one run in its own directory below the campaign's WORKDIR (the students once
per seed of config.pipeline.seeds, in STAGE/seed_K), so a rerun skips finished stages and
resumes an interrupted one. What a stage runs after follows from its teachers: the stages
that write their model files; a distilled student also waits for its variant's candidates.
"""

import dataclasses
import os
from typing import Any

import ml_collections

from kd_research import config as config_lib
from kd_research.campaign import schemes as schemes_lib

# Groups in plan order; the schemes' teacher-stage groups (chain1, ...) follow "teachers".
GROUPS = ("teachers", "baseline", "sweep", "students", "report")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One run of the campaign. ``role``: teacher, student (labels only), distill or report;
  ``teachers``: its teachers' model files; ``after``: the ids of the stages it waits for;
  ``variant``: the pipeline variant of a sweep candidate or a distilled student."""
  id: str
  group: str
  run_dir: str
  role: str
  config: Any
  teachers: tuple = ()
  after: tuple = ()
  variant: str = ""

  @property
  def stage_name(self):
    """The stage's name in results and tables: its id without the seed."""
    return self.id.split("/")[0]


def campaign_stages(config, workdir, chosen=None):
  """Every stage of the campaign of ``config`` in ``workdir``, in run order.

  ``chosen``: {variant: overrides} of the candidates picked on validation
  (candidates.select): the distilled students' configs include them. Without it the
  students' run directories and dependencies are the same, their configs the variants'."""
  workdir = os.path.abspath(workdir)
  out, producers = [], {}

  def add(stage, also_after=()):
    after = [producers[p] for p in stage.teachers if p in producers] + list(also_after)
    out.append(dataclasses.replace(stage, after=tuple(dict.fromkeys(after))))
    producers[os.path.join(stage.run_dir, "model.keras")] = stage.id

  teachers = teacher_runs(config, workdir)
  for _, stage_dir, _, teacher_config in teachers:
    if stage_dir:
      add(Stage(os.path.basename(stage_dir), "teachers", stage_dir, "teacher", teacher_config))
  paths = [path for _, _, path, _ in teachers]
  for scheme in schemes_lib.active(config):
    scheme_stages, paths = scheme.teacher_stages(config, workdir, paths)
    for stage in scheme_stages:
      add(stage)
  config = with_shared_cache(config, workdir)
  labels_only = [("student_baseline", config)]
  for scheme in schemes_lib.active(config):
    labels_only += scheme.student_stages(config)
  for name, stage_config in labels_only:
    for run_config, run_dir in seed_runs(stage_config, os.path.join(workdir, name)):
      add(Stage(os.path.relpath(run_dir, workdir), "baseline", run_dir, "student", run_config))
  sweep = {}
  for variant, name, run_config, run_dir, run_paths in candidate_runs(config, workdir, paths):
    add(Stage(f"sweep/{variant}_{name}", "sweep", run_dir, "distill", run_config,
              tuple(run_paths), variant=variant))
    sweep.setdefault(variant, []).append(out[-1].id)
  for name, stage_config, stage_paths in kd_stages(config, paths, chosen):
    variant = name.removeprefix("student_kd_") if config.pipeline.variants else ""
    for run_config, run_dir in seed_runs(stage_config, os.path.join(workdir, name)):
      add(Stage(os.path.relpath(run_dir, workdir), "students", run_dir, "distill", run_config,
                tuple(stage_paths), variant=variant), sweep.get(variant, ()))
  out.append(Stage("report", "report", workdir, "report", config, tuple(paths),
                   tuple(s.id for s in out)))
  return out


def students_teachers(stages):
  """The teacher files of the campaign's students (the report stage records them)."""
  return list(stages[-1].teachers)


def teacher_runs(config, workdir):
  """[(name, stage dir or None, model file, config)] of every teacher, primary first: a
  given file (config path) has no stage; the others train in WORKDIR/teacher[_NAME]."""
  out = []
  for name, entry in config_lib.teacher_entries(config):
    if entry.path:
      out.append((name, None, entry.path, None))
      continue
    stage = os.path.join(workdir, "teacher" if name == "teacher" else f"teacher_{name}")
    out.append((name, stage, os.path.join(stage, "model.keras"),
                config_lib.with_teacher(config, entry)))
  return out


def single_teacher(config):
  """``config`` with only the primary teacher (extra teachers and weights dropped)."""
  return config_lib.replaced(config, extra_teachers=ml_collections.ConfigDict(),
                             **{"distill.teacher_weights": ()})


def kd_stages(config, teacher_paths, chosen=None):
  """(stage name, config, teacher paths) of every distilled student stage.

  ``chosen``: {variant: candidate overrides} picked on validation. Without variants: one
  distilled student (and with several teachers, one from the primary teacher alone and
  one from all). With variants: one student per variant; a variant's ``teachers`` key
  ('all', the default, or 'primary') picks its teachers.
  """
  if config.pipeline.variants:
    stages = []
    for name in config.pipeline.variants:
      primary = config.pipeline.variants[name].get("teachers", "all") == "primary"
      variant = config_lib.apply_variant(config, name, (chosen or {}).get(name))
      stages.append((f"student_kd_{name}", single_teacher(variant) if primary else variant,
                     teacher_paths[:1] if primary else teacher_paths))
    return stages
  if len(teacher_paths) == 1:
    return [("student_kd", config, teacher_paths)]
  return [("student_kd", single_teacher(config), teacher_paths[:1]),
          ("student_kd_multi", config, teacher_paths)]


def seed_runs(config, stage_dir):
  """[(config with that student seed, run dir)] of one student stage: every seed of
  config.pipeline.seeds in STAGE/seed_K, or (none set) the stage dir itself."""
  if not config.pipeline.seeds:
    return [(config, stage_dir)]
  return [(config_lib.replaced(config, **{"student.seed": seed}),
           os.path.join(stage_dir, f"seed_{seed}")) for seed in config.pipeline.seeds]


def with_shared_cache(config, workdir):
  """The students share one teacher-output cache (WORKDIR/teacher_cache) unless one is set."""
  if config.run.cache_dir:
    return config
  return config_lib.replaced(config, **{"run.cache_dir": os.path.join(workdir, "teacher_cache")})


def sweep_dir(config, workdir):
  """Where the candidates run: config.pipeline.sweep_dir, or <parent>_sweep/<name>, a
  sibling tree, so that a report of the final runs does not include them."""
  if config.pipeline.sweep_dir:
    return config.pipeline.sweep_dir
  workdir = os.path.abspath(workdir)
  return os.path.join(os.path.dirname(workdir) + "_sweep", os.path.basename(workdir))


def candidate_runs(config, workdir, paths, variant=None):
  """[(variant, candidate, run config, run dir, teacher paths)] of the sweep: every
  candidate of ``variant`` (None: of every variant), once, with the first student seed."""
  seed = (config.pipeline.seeds or (config.student.seed,))[0]
  out = []
  for name in ([variant] if variant else list(config.pipeline.candidates)):
    for candidate, extra in sorted(config.pipeline.candidates[name].items()):
      stage = kd_stages(config, paths, {name: extra.to_dict()})
      _, run_config, run_paths = next(s for s in stage if s[0] == f"student_kd_{name}")
      out.append((name, candidate, config_lib.replaced(run_config, **{"student.seed": seed}),
                  os.path.join(sweep_dir(config, workdir), f"{name}_{candidate}"), run_paths))
  return out
