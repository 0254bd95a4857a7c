"""The seed's experiment as stages: teacher(s) -> labels-only student -> distilled student(s),
with a distillation chain between them when config.pipeline.chain names one (chains.py).

Each stage is a normal run in its own sub-directory of the pipeline workdir (once per
student seed in config.pipeline.seeds), so rerunning the pipeline skips finished
stages and resumes an interrupted one. The table (WORKDIR/results.md) is rendered by
``report`` from the run directories, like every other table of the project.
"""

import os
import shutil

from absl import logging
import ml_collections
import numpy as np

from kd_research import chains
from kd_research import config as config_lib
from kd_research.models import registry as model_registry
from kd_research.runtime import distribute
from kd_research.common import fileio
from kd_research.report import pages
from kd_research.train import runs
from kd_research.train import workdir as workdir_lib


def _copy(config, **changes):
  """A locked copy of ``config`` with nested fields changed ('a.b': value)."""
  return config_lib.replaced(config, **changes)


def _single_teacher(config):
  """``config`` with only the primary teacher (extra teachers and weights dropped)."""
  return _copy(config, extra_teachers=ml_collections.ConfigDict(),
               **{"distill.teacher_weights": ()})


def kd_stages(config, teacher_paths, chosen=None):
  """(stage dir, config, teacher paths) of every distilled student to train.

  ``chosen``: {variant: candidate overrides} picked on validation (``select_candidates``).
  Without variants: one distilled student (and with several teachers, one from the
  primary teacher alone and one from all). With variants: one student per variant;
  a variant's ``teachers`` key ('all', the default, or 'primary') picks its teachers.
  """
  if config.pipeline.variants:
    stages = []
    for name in config.pipeline.variants:
      primary = config.pipeline.variants[name].get("teachers", "all") == "primary"
      variant = config_lib.apply_variant(config, name, (chosen or {}).get(name))
      stages.append((f"student_kd_{name}", _single_teacher(variant) if primary else variant,
                     teacher_paths[:1] if primary else teacher_paths))
    return stages
  if len(teacher_paths) == 1:
    return [("student_kd", config, teacher_paths)]
  return [("student_kd", _single_teacher(config), teacher_paths[:1]),
          ("student_kd_multi", config, teacher_paths)]


def seed_runs(config, stage_dir):
  """[(config with that student seed, run dir)] of one student stage.

  With config.pipeline.seeds set, every seed runs in STAGE/seed_K; otherwise the stage
  dir is the run dir (the layout of single-seed pipelines).
  """
  if not config.pipeline.seeds:
    return [(config, stage_dir)]
  return [(_copy(config, **{"student.seed": seed}), os.path.join(stage_dir, f"seed_{seed}"))
          for seed in config.pipeline.seeds]


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


def train_teachers(config, workdir, strategy, overwrite=False):
  """Trains every teacher without a path; returns their model files, primary first."""
  paths = []
  for name, stage, path, teacher_config in teacher_runs(config, workdir):
    if stage is None:
      logging.info("Using the given teacher %s for %s.", path, name)
    else:
      runs.train_and_evaluate(teacher_config, stage, "teacher", strategy, overwrite=overwrite)
    paths.append(path)
  return paths


def train_chain(config, workdir, teacher_paths, strategy, overwrite=False):
  """Trains (or finds finished) every member of config.pipeline.chain (chains.py), each
  from the one before; returns {member stage: its results}."""
  results = {}
  for run_dir, run_config, paths in chains.member_runs(config, workdir, teacher_paths):
    results[os.path.basename(run_dir)] = runs.train_and_evaluate(
        run_config, run_dir, "distill", strategy, tuple(paths), overwrite)
  return results


def with_shared_cache(config, workdir):
  """The students share one teacher-output cache (WORKDIR/teacher_cache) unless one is set."""
  if config.run.cache_dir:
    return config
  return _copy(config, **{"run.cache_dir": os.path.join(workdir, "teacher_cache")})


def student_runs(config, workdir, paths, chosen=None):
  """[(stage, run config, run dir, role, teacher paths)] of every student run: the
  labels-only baseline's seeds, with config.pipeline.dml_cohort the deep-mutual-learning
  cohort's (labels only too, no teacher), then each distilled stage's (kd_stages)."""
  stages = [("student_baseline", config, [])]
  if config.pipeline.dml_cohort:
    stages.append(("student_dml", _copy(config, **{"student.cohort":
                                                   config.pipeline.dml_cohort}), []))
  stages += kd_stages(config, paths, chosen)
  return [(stage, run_config, run_dir, "distill" if stage_paths else "student", stage_paths)
          for stage, stage_config, stage_paths in stages
          for run_config, run_dir in seed_runs(stage_config, os.path.join(workdir, stage))]


def first_distilled_run(config, workdir, paths, chosen=None):
  """The run dir of the first distilled student (first kd stage, first seed), or None."""
  return next((run_dir for _, _, run_dir, role, _ in student_runs(config, workdir, paths, chosen)
               if role == "distill"), None)


def run_student(config, run_config, run_dir, role, stage_paths, strategy, chosen_dir=None,
                overwrite=False):
  """One student run of the pipeline (adopting the chosen candidate's identical run, and
  exporting a distilled student): its results."""
  if not overwrite and not distribute.is_multi_worker(strategy):  # Workers would race.
    adopt_candidate_run(chosen_dir, run_dir, run_config, role, stage_paths)
  result = runs.train_and_evaluate(run_config, run_dir, role, strategy, tuple(stage_paths),
                                   overwrite)
  if stage_paths and config.pipeline.export_students:
    export_once(run_dir, run_config)
  return result


def run(config, workdir, strategy, overwrite=False):
  """Runs every stage (or finds it finished), then writes results.md and results.json.

  Returns ({stage: results aggregated over seeds}, the results.md table).
  """
  chains.validate(config)
  teacher_paths = train_teachers(config, workdir, strategy, overwrite)
  chain_results = train_chain(config, workdir, teacher_paths, strategy, overwrite)
  paths = chains.last_teachers(config, workdir, teacher_paths)
  config = with_shared_cache(config, workdir)
  chosen, chosen_dirs = select_candidates(config, workdir, paths, strategy, overwrite)
  per_stage = {}
  for stage, run_config, run_dir, role, stage_paths in student_runs(config, workdir, paths,
                                                                    chosen):
    per_stage.setdefault(stage, (stage_paths, []))[1].append(run_student(
        config, run_config, run_dir, role, stage_paths, strategy,
        chosen_dirs.get(stage.removeprefix("student_kd_")), overwrite))
  results = {stage: aggregate(seeds) for stage, (_, seeds) in per_stage.items()}
  results.update(chain_results)
  generations = chains.ensemble_of_generations(config, workdir, teacher_paths,
                                               first_distilled_run(config, workdir, paths, chosen))
  for name, path in zip(_teacher_stages(config), teacher_paths):
    results[name] = teacher_results(path)
  if len(paths) > 1:
    widest = max(per_stage, key=lambda stage: len(per_stage[stage][0]))
    results["teacher_ensemble"] = ensemble_results(
        results[widest]["teachers"], [results[n] for n in _teacher_stages(config)])
  table = pages.render_pipeline(workdir, config.run.experiment or "pipeline", config.dataset,
                                 teacher_paths)
  if generations:
    results["chain_ensemble"] = generations
    table += chains.ensemble_summary(generations)
  fileio.atomic_write_text(os.path.join(workdir, "results.md"), table)
  fileio.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results, table


def sweep_dir(config, workdir):
  """Where the candidates run: config.pipeline.sweep_dir, or <parent>_sweep/<name>, a
  sibling tree, so that a report of the final runs does not include them."""
  if config.pipeline.sweep_dir:
    return config.pipeline.sweep_dir
  workdir = os.path.abspath(workdir)
  return os.path.join(os.path.dirname(workdir) + "_sweep", os.path.basename(workdir))


def select_candidates(config, workdir, paths, strategy, overwrite=False):
  """Runs every candidate of config.pipeline.candidates once (the first student seed) and
  returns {variant: the overrides of the candidate with the best validation accuracy}.

  Only validation accuracy decides (ties: the first candidate in name order); the choice
  is written to <sweep dir>/selection.json with every candidate's validation accuracy.
  Also returns {variant: the chosen candidate's run dir} (see ``adopt_candidate_run``).
  """
  if not config.pipeline.candidates:
    return {}, {}
  root = sweep_dir(config, workdir)
  command = os.path.join(workdir, "command.txt")
  if os.path.exists(command):  # The sweep's runs were made by the pipeline's command.
    os.makedirs(root, exist_ok=True)
    with open(command) as f:
      fileio.atomic_write_text(os.path.join(root, "command.txt"), f.read())
  chosen, chosen_dirs, record = {}, {}, {}
  for variant, candidates in config.pipeline.candidates.items():
    scores = {}
    for _, name, run_config, run_dir, run_paths in candidate_runs(config, workdir, paths,
                                                                  variant):
      result = runs.train_and_evaluate(run_config, run_dir, "distill", strategy,
                                       tuple(run_paths), overwrite)
      scores[name] = result["validation_accuracy"]
    best = max(sorted(scores), key=lambda n: scores[n])  # max keeps the first of ties.
    chosen[variant] = candidates[best].to_dict()
    chosen_dirs[variant] = os.path.join(root, f"{variant}_{best}")
    record[variant] = {"chosen": best, "overrides": chosen[variant], "validation": scores}
    logging.info("Variant %s: candidate %s chosen on validation (%s).", variant, best, scores)
  fileio.atomic_write_json(os.path.join(root, "selection.json"), record)
  return chosen, chosen_dirs


def candidate_runs(config, workdir, paths, variant=None):
  """[(variant, candidate, run config, run dir, teacher paths)] of the sweep: every
  candidate of ``variant`` (None: of every variant), once, with the first student seed."""
  seed = (config.pipeline.seeds or (config.student.seed,))[0]
  out = []
  for name in ([variant] if variant else list(config.pipeline.candidates)):
    for candidate, extra in sorted(config.pipeline.candidates[name].items()):
      stage = kd_stages(config, paths, {name: extra.to_dict()})
      _, run_config, run_paths = next(s for s in stage if s[0] == f"student_kd_{name}")
      out.append((name, candidate, _copy(run_config, **{"student.seed": seed}),
                  os.path.join(sweep_dir(config, workdir), f"{name}_{candidate}"), run_paths))
  return out


def adopt_candidate_run(candidate_dir, run_dir, run_config, role, teacher_paths):
  """Copies the chosen candidate's finished run to ``run_dir`` when it is the same run.

  The candidate ran with the first seed; the variant's first seed has exactly its config
  (config.json identities equal), so training it again would only repeat it. The copy
  (without checkpoints or lock) records ``copied_from`` in its results.json and is made
  under a temporary name, then renamed: a stop leaves either no run or the whole one.
  Returns whether it copied.
  """
  results_file = workdir_lib.RESULTS_FILE
  if (not candidate_dir or os.path.exists(run_dir)
      or not os.path.exists(os.path.join(candidate_dir, results_file))
      or workdir_lib.diff(workdir_lib.read_identity(candidate_dir),
                          workdir_lib.run_identity(run_config, role, teacher_paths))):
    return False
  staging = run_dir + ".copying"
  shutil.rmtree(staging, ignore_errors=True)
  shutil.copytree(candidate_dir, staging,
                  ignore=shutil.ignore_patterns(workdir_lib.LOCK_FILE, "checkpoints"))
  results = fileio.read_json(os.path.join(staging, results_file))
  results.update(workdir=os.path.abspath(run_dir), copied_from=os.path.abspath(candidate_dir))
  fileio.atomic_write_json(os.path.join(staging, results_file), results)
  os.replace(staging, run_dir)
  logging.info("%s: the same run as the chosen candidate %s; copied.", run_dir, candidate_dir)
  return True


def _teacher_stages(config):
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
