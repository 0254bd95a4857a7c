"""The campaign run in this process: teacher(s) [-> the schemes' stages] -> labels-only
student(s) -> distilled student(s), then results.md and results.json.

The stages come from stages.campaign_stages, the same list that ``--plan`` writes for Slurm
(plan.py), and each is run by ``run_stage``, which a plan's job calls too: the pipeline and
the jobs train exactly the same runs in the same directories. A rerun skips finished stages
and resumes an interrupted one. The table (WORKDIR/results.md) is rendered by ``report``
from the run directories, like every other table of the project.
"""

import os

import numpy as np

from kd_research import config as config_lib
from kd_research.campaign import candidates
from kd_research.campaign import schemes as schemes_lib
from kd_research.campaign import stages as stages_lib
from kd_research.common import fileio
from kd_research.models import registry as model_registry
from kd_research.report import pages
from kd_research.runtime import distribute
from kd_research.train import end_to_end
from kd_research.train import workdir as workdir_lib


def run(config, workdir, strategy, overwrite=False):
  """Runs every stage (or finds it finished), then writes results.md and results.json.

  Returns ({stage: results aggregated over seeds}, the results.md table).
  """
  stages = stages_lib.campaign_stages(config, workdir)
  report = stages[-1]
  done = {stage.id: run_stage(stage, strategy, overwrite=overwrite) for stage in stages
          if stage.group not in ("sweep", "students", "report")}
  chosen, chosen_dirs = candidates.select(report.config, workdir, list(report.teachers),
                                          strategy, overwrite)
  for stage in stages_lib.campaign_stages(config, workdir, chosen):
    if stage.group == "students":
      done[stage.id] = run_stage(stage, strategy, chosen_dirs, overwrite)
  return write_results(config, workdir, stages, done)


def run_stage(stage, strategy, chosen_dirs=None, overwrite=False):
  """Runs one stage of the campaign (or finds it finished): its results. A distilled
  student adopts its variant's chosen candidate run when it is the same run, and is
  exported when config.pipeline.export_students says so."""
  role = stage.role
  if stage.group == "students" and not overwrite and not distribute.is_multi_worker(strategy):
    candidates.adopt_candidate_run((chosen_dirs or {}).get(stage.variant), stage.run_dir,
                                   stage.config, role, stage.teachers)  # Workers would race.
  result = end_to_end.train_and_evaluate(stage.config, stage.run_dir, role, strategy,
                                         stage.teachers, overwrite)
  if stage.group == "students" and stage.config.pipeline.export_students:
    export_once(stage.run_dir, stage.config)
  return result


def write_results(config, workdir, stages, done):
  """results.json and results.md of the campaign from its finished stages' results."""
  per_stage, scheme_runs = {}, {}
  for stage in stages:
    if stage.group in ("baseline", "students"):
      per_stage.setdefault(stage.stage_name, []).append(done[stage.id])
    elif stage.group not in ("teachers", "sweep", "report"):
      scheme_runs[os.path.basename(stage.run_dir)] = done[stage.id]
  results = {name: aggregate(seeds) for name, seeds in per_stage.items()}
  results.update(scheme_runs)
  teacher_paths = [path for _, _, path, _ in stages_lib.teacher_runs(config, workdir)]
  for name, path in zip(teacher_stages(config), teacher_paths):
    results[name] = teacher_results(path)
  student_teachers = stages_lib.students_teachers(stages)
  if len(student_teachers) > 1:
    widest = max((s for s in stages if s.group == "students"), key=lambda s: len(s.teachers))
    results["teacher_ensemble"] = ensemble_results(
        results[widest.stage_name]["teachers"], [results[n] for n in teacher_stages(config)])
  table = pages.render_pipeline(workdir, config.run.experiment or "pipeline", config.dataset,
                                teacher_paths)
  first_distilled = next((s.run_dir for s in stages if s.group == "students"), None)
  for scheme in schemes_lib.active(config):
    entries, paragraph = scheme.results(config, workdir, teacher_paths, first_distilled)
    results.update(entries)
    table += paragraph
  fileio.atomic_write_text(os.path.join(workdir, "results.md"), table)
  fileio.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results, table


def teacher_stages(config):
  """The teachers' names in results: teacher, teacher_NAME for each extra teacher."""
  return ["teacher" if n == "teacher" else f"teacher_{n}"
          for n, _ in config_lib.teacher_entries(config)]


def export_once(run_dir, run_config):
  """SavedModel + TFLite of a finished student (skipped when its export report exists)."""
  from kd_research.tools import export  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(run_dir, "export", "export_report.json")):
    export.export_run(run_dir, workdir_lib.splits_of_run(run_config, run_dir))


def aggregate(results):
  """One setting's results over seeds: the single run's, or means with the accuracy's std.

  test_accuracy is the mean, test_accuracy_std the sample standard deviation (n-1),
  ms_per_batch_128 the median, train_seconds the mean; 'seeds' lists every run.
  """
  if len(results) == 1:
    return results[0]
  out = dict(results[0])
  acc = np.array([r["test_accuracy"] for r in results], np.float64)
  out.update(test_accuracy=float(acc.mean()), test_accuracy_std=float(acc.std(ddof=1)),
             validation_accuracy=float(np.mean([r["validation_accuracy"] for r in results])),
             ms_per_batch_128=float(np.median([r["ms_per_batch_128"] for r in results])),
             train_seconds=float(np.mean([r["train_seconds"] for r in results])),
             seeds=[{k: r[k] for k in ("seed", "test_accuracy", "validation_accuracy",
                                       "workdir")} for r in results])
  return out


def teacher_results(path):
  """A teacher's results: its run directory's results.json, or its parameter count alone
  for a .keras file that kd_research did not train."""
  run_results = os.path.join(os.path.dirname(os.path.abspath(path)), "results.json")
  if os.path.exists(run_results):
    return fileio.read_json(run_results)
  params = model_registry.load_keras(path).count_params()
  return {"params": params, "ms_per_batch_128": None, "train_seconds": None}


def ensemble_results(teacher_report, teachers):
  """The teacher ensemble's row: accuracy from a distillation run's teacher report, size
  and time summed over the teachers (unknown when any teacher's is)."""
  def total(key):
    values = [t.get(key) for t in teachers]
    return None if any(v is None for v in values) else sum(values)
  return {"params": total("params"), "ms_per_batch_128": total("ms_per_batch_128"),
          "train_seconds": total("train_seconds"),
          "test_accuracy": teacher_report["test"]["ensemble_accuracy"],
          "test_ece": teacher_report["test"]["ensemble_ece"],
          "pairwise_agreement": teacher_report["test"]["pairwise_agreement"]}
