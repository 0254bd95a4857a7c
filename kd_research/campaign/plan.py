"""A campaign as a plan of independent jobs, for a scheduler to run.

``write_plan(config, workdir)`` writes WORKDIR/plan.json: the campaign's stages
(stages.campaign_stages: teachers, the schemes' stages, sweep candidates, labels-only and
distilled students per seed, the report) as jobs with their run directories and
dependencies, grouped so that jobs with the same dependencies form one group (one Slurm job
array, slurm.py):

    teachers  [-> chain1 -> chain2 ...] -> sweep (candidates) -> students (distilled) -> report
    baseline  (labels only, a DML cohort: depend on nothing)                           -/

``run_job(plan, job_id)`` runs one job in its own process with pipeline.run_stage, so a job
trains exactly the run the sequential ``pipeline`` command would, in the same run
directory: a finished run is skipped, an interrupted one resumes, and ``pipeline`` on the
same WORKDIR afterwards finds every run finished. The report job is ``pipeline.run`` over
finished runs: it writes results.md and results.json.
"""

import dataclasses
import os

import ml_collections

from kd_research import run_spec
from kd_research.campaign import candidates
from kd_research.campaign import pipeline
from kd_research.campaign import stages as stages_lib
from kd_research.common import fileio
from kd_research.common.errors import UserError
from kd_research.runtime import distribute
from kd_research.train import results as results_lib

FORMAT = "kd_research.plan/1"
PLAN_FILE = "plan.json"


@dataclasses.dataclass(frozen=True)
class Job:
  """One run of the campaign: where it runs and which jobs must finish first."""
  id: str
  group: str
  run_dir: str
  after: tuple


def jobs(config, workdir):
  """Every job of the campaign of ``config`` in ``workdir``, in run order."""
  return [Job(s.id, s.group, s.run_dir, s.after)
          for s in stages_lib.campaign_stages(config, workdir)]


def group_order(all_jobs):
  """The groups in plan order: teachers, the schemes' groups as they come, then the rest."""
  fixed = stages_lib.GROUPS
  extra = [g for g in dict.fromkeys(j.group for j in all_jobs) if g not in fixed]
  return fixed[:1] + tuple(extra) + fixed[1:]


def write_plan(config, workdir, command=""):
  """Writes WORKDIR/plan.json (the config, the jobs, their groups); returns its path."""
  run_spec.parse(config)
  all_jobs = jobs(config, workdir)
  groups = []
  for name in group_order(all_jobs):
    members = [j for j in all_jobs if j.group == name]
    if members:
      needs = {d for j in members for d in j.after}
      groups.append({"name": name, "jobs": [j.id for j in members],
                     "after": [g["name"] for g in groups if needs & set(g["jobs"])]})
  plan = {"format": FORMAT, "workdir": os.path.abspath(workdir), "command": command,
          "config": config.to_dict(), "jobs": [dataclasses.asdict(j) for j in all_jobs],
          "groups": groups}
  path = os.path.join(workdir, PLAN_FILE)
  fileio.atomic_write_json(path, plan)
  return path


def read_plan(path):
  """The plan at ``path`` (a plan.json, or the WORKDIR holding one), checked."""
  if os.path.isdir(path):
    path = os.path.join(path, PLAN_FILE)
  if not os.path.isfile(path):
    where = os.path.dirname(path) or "."
    raise UserError(f"--plan={where}: no {PLAN_FILE} there. Write the campaign's plan first: "
                    f"./launch.sh pipeline --experiment=NAME --workdir={where} --plan, then "
                    f"./launch.sh slurm --plan={where}.")
  plan = fileio.read_json(path)
  if plan.get("format") != FORMAT:
    raise UserError(f"{path} is not a kd_research plan (format {plan.get('format')!r}; "
                    f"expected {FORMAT}); write one with `pipeline --plan`.")
  return plan


def plan_config(plan):
  """The plan's config, locked, with JSON lists back as the tuples the config declares."""
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    return tuple(tuples(v) for v in value) if isinstance(value, list) else value
  config = ml_collections.ConfigDict(tuples(plan["config"]))
  config.lock()
  return config


def finished(job):
  """Whether the job's run (or, for the report, the campaign's results.md) exists."""
  if job["group"] == "report":
    return os.path.exists(os.path.join(job["run_dir"], "results.md"))
  return results_lib.exists(job["run_dir"])


def run_job(plan, job_id, overwrite=False):
  """Runs one job of ``plan`` in this process (dependencies must have finished)."""
  by_id = {j["id"]: j for j in plan["jobs"]}
  if job_id not in by_id:
    raise UserError(f"the plan has no job {job_id!r}; its jobs: {', '.join(by_id)}.")
  job = by_id[job_id]
  missing = [d for d in job["after"] if not finished(by_id[d])]
  if missing:
    raise UserError(f"job {job_id} needs {', '.join(missing)} to finish first.")
  config, workdir = plan_config(plan), plan["workdir"]
  strategy = distribute.make_strategy(config.distribution)
  if job["group"] == "report":
    return pipeline.run(config, workdir, strategy)[1]
  stages = stages_lib.campaign_stages(config, workdir)
  chosen_dirs = {}
  if job["group"] == "students":  # Its variant's choice, from the finished sweep.
    report = stages[-1]
    chosen, chosen_dirs = candidates.select(report.config, workdir, list(report.teachers),
                                            strategy)
    stages = stages_lib.campaign_stages(config, workdir, chosen)
  for stage in stages:
    if stage.run_dir == job["run_dir"]:
      return pipeline.run_stage(stage, strategy, chosen_dirs, overwrite)
  raise UserError(f"job {job_id}: its run {job['run_dir']} is no longer in the campaign.")


def summary(plan):
  """One line per group: its jobs and what it waits for."""
  by_id = {j["id"]: j for j in plan["jobs"]}
  lines = []
  for group in plan["groups"]:
    done = sum(finished(by_id[j]) for j in group["jobs"])
    lines.append(f"{group['name']:<9} {len(group['jobs'])} job(s), {done} finished"
                 + (f"; after {', '.join(group['after'])}" if group["after"] else "")
                 + f": {', '.join(group['jobs'][:4])}{' ...' if len(group['jobs']) > 4 else ''}")
  return "\n".join(lines)


def job_of_task(plan, group_name, task_index):
  """The job id of task ``task_index`` of group ``group_name`` (a Slurm array task)."""
  groups = {g["name"]: g for g in plan["groups"]}
  if group_name not in groups:
    raise UserError(f"the plan has no group {group_name!r}; its groups: {', '.join(groups)}.")
  members = groups[group_name]["jobs"]
  if not 0 <= task_index < len(members):
    raise UserError(f"group {group_name} has {len(members)} job(s); task {task_index} is none.")
  return members[task_index]
