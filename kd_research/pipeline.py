"""The seed's experiment as stages: teacher -> student baseline -> distilled student -> table.

Each stage is a normal run in its own sub-directory of the pipeline workdir, so
rerunning the pipeline skips finished stages and resumes an interrupted one.
"""

import os

from absl import logging
import ml_collections
import numpy as np

from kd_research import config as config_lib
from kd_research import evaluate
from kd_research import io_utils
from kd_research import loop
from kd_research import schedules



def teacher_path(workdir):
  """Where the pipeline's teacher stage saves its model."""
  return os.path.join(workdir, "teacher", "model.keras")


def _single_teacher(config):
  """``config`` with only the primary teacher (extra teachers and weights dropped)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.extra_teachers = ml_collections.ConfigDict()
  copy.distill.teacher_weights = ""
  copy.lock()
  return copy


def kd_stages(config, teacher_paths):
  """(stage dir, label, config, teacher paths) of every distilled student to train.

  Without variants: one distilled student (and with several teachers, one from the
  primary teacher alone and one from all). With variants: one student per variant;
  a variant's ``teachers`` key ('all', the default, or 'primary') picks its teachers.
  """
  student = f"student ({config.student.model})"
  if config.variants:
    stages = []
    for name in config.variants:
      primary = config.variants[name].get("teachers", "all") == "primary"
      variant = config_lib.apply_variant(config, name)
      stages.append((f"student_kd_{name}", f"{student}, KD {name}",
                     _single_teacher(variant) if primary else variant,
                     teacher_paths[:1] if primary else teacher_paths))
    return stages
  if len(teacher_paths) == 1:
    return [("student_kd", f"{student}, distilled", config, teacher_paths)]
  return [("student_kd", f"{student}, KD single teacher", _single_teacher(config),
           teacher_paths[:1]),
          ("student_kd_multi", f"{student}, KD {len(teacher_paths)} teachers "
           f"({config.distill.combine})", config, teacher_paths)]


def _with_shared_cache(config, workdir):
  """All students of a pipeline share WORKDIR/teacher_cache (unless distill.cache_dir is set):
  the teachers' outputs are computed once per teacher set, not once per student run."""
  if config.distill.cache_dir:
    return config
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.distill.cache_dir = os.path.join(workdir, "teacher_cache")
  copy.lock()
  return copy


def student_seeds(config):
  """The student seeds to run: config.seeds (comma-separated), else the student's own seed."""
  seeds = [int(s) for s in schedules.parse_floats(config.seeds, "config.seeds")]
  return seeds or [config.student.seed]


def seed_runs(config, stage_dir):
  """[(config with that student seed, run dir)] of one student stage over student_seeds.

  With config.seeds set, every seed runs in STAGE/seed_K; otherwise the stage dir is
  the run dir (the layout of single-seed pipelines).
  """
  if not config.seeds:
    return [(config, stage_dir)]
  runs = []
  for seed in student_seeds(config):
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.student.seed = seed
    copy.lock()
    runs.append((copy, os.path.join(stage_dir, f"seed_{seed}")))
  return runs


def train_teachers(config, workdir, strategy, overwrite=False):
  """Trains every teacher without a path; returns (paths, {stage: results}, {stage: label})."""
  paths, results, labels = [], {}, {}
  for name, entry in config_lib.teacher_entries(config):
    stage = "teacher" if name == "teacher" else f"teacher_{name}"
    labels[stage] = f"teacher {name} ({entry.model})" if name != "teacher" else (
        f"teacher ({entry.model})")
    if entry.path:
      logging.info("Using the given teacher %s for %s.", entry.path, name)
      paths.append(entry.path)
      continue
    results[stage] = loop.train_and_evaluate(
        config_lib.with_teacher(config, entry), os.path.join(workdir, stage), "teacher",
        strategy, overwrite=overwrite)
    paths.append(teacher_path(workdir) if name == "teacher"
                 else os.path.join(workdir, stage, "model.keras"))
  return paths, results, labels


def run(config, workdir, strategy, overwrite=False):
  """Runs every stage (or reports it when finished) and writes results.md / results.json.

  Student stages run once per seed in config.seeds; their rows carry the mean test
  accuracy over seeds and its sample standard deviation.
  """
  paths, results, labels = train_teachers(config, workdir, strategy, overwrite)
  config = _with_shared_cache(config, workdir)
  student = f"student ({config.student.model})"
  stages = ([("student_baseline", f"{student}, labels only", config, [])]
            + kd_stages(config, paths))
  per_seed = {}
  for stage, label, stage_config, stage_paths in stages:
    role = "distill" if stage_paths else "student"
    per_seed[stage] = [
        (run_dir, run_config, loop.train_and_evaluate(
            run_config, run_dir, role, strategy, teacher_paths=tuple(stage_paths),
            overwrite=overwrite))
        for run_config, run_dir in seed_runs(stage_config, os.path.join(workdir, stage))]
    labels[stage] = label
  if config.export_students:
    for stage in [stage for stage, _, _, stage_paths in stages if stage_paths]:
      for run_dir, run_config, run_results in per_seed[stage]:
        run_results["deployed"] = _deployed(run_dir, run_config)
  for stage, runs in per_seed.items():
    results[stage] = aggregate_seeds([r for _, _, r in runs])
  # The teacher report of a stage that distils from every teacher (all are evaluated there).
  widest = max((s for s in stages if s[3]), key=lambda s: len(s[3]))[0]
  report = per_seed[widest][0][2].get("teachers", {})
  for k, name in enumerate(labels_of_teachers(config)):
    if name not in results:  # A given teacher: its own run dir's results when it has one.
      results[name] = given_teacher_results(paths[k], report["test"]["accuracy"][k])
  if len(paths) > 1:
    teacher_rows = [results[n] for n in labels_of_teachers(config)]
    results["teacher_ensemble"] = {
        "params": sum(r["params"] for r in teacher_rows),
        "ms_per_batch_128": _sum_or_none(r["ms_per_batch_128"] for r in teacher_rows),
        "train_seconds": _sum_or_none(r["train_seconds"] for r in teacher_rows),
        "test_accuracy": report["test"]["ensemble_accuracy"],
        "test_ece": report["test"]["ensemble_ece"],
        "pairwise_agreement": report["test"]["pairwise_agreement"]}
    labels["teacher_ensemble"] = f"teacher ensemble ({len(paths)}, probability mean)"
  order = (labels_of_teachers(config) + (["teacher_ensemble"] if len(paths) > 1 else [])
           + [stage for stage, _, _, _ in stages])
  table = results_markdown(config, results, labels, order)
  io_utils.atomic_write_text(os.path.join(workdir, "results.md"), table)
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results, table


def _deployed(run_dir, run_config):
  """int8 TFLite size/accuracy/latency of a finished student (exported once, then read)."""
  from kd_research import export  # pylint: disable=g-import-not-at-top
  report_path = os.path.join(run_dir, "export", "export_report.json")
  if os.path.exists(report_path):  # Exported by an earlier run of this pipeline.
    report = io_utils.read_json(report_path)
  else:
    report = export.export_run(run_dir, export.splits_for_run(run_config, run_dir))
  int8 = report["artifacts"]["tflite_int8"]
  return {"int8_size_kb": int8["size_kb"], "int8_test_accuracy": int8["test_accuracy"],
          "int8_latency_ms_batch1": int8["latency_ms_batch1"]}


def aggregate_seeds(runs):
  """One stage's results over seeds: the single run's, or means with the accuracy's std.

  test_accuracy is the mean, test_accuracy_std the sample standard deviation (n-1),
  ms_per_batch_128 the median, train_seconds the mean; 'seeds' lists every run.
  """
  if len(runs) == 1:
    return runs[0]
  out = dict(runs[0])
  acc = np.array([r["test_accuracy"] for r in runs], np.float64)
  out.update(test_accuracy=float(acc.mean()), test_accuracy_std=float(acc.std(ddof=1)),
             validation_accuracy=float(np.mean([r["validation_accuracy"] for r in runs])),
             ms_per_batch_128=float(np.median([r["ms_per_batch_128"] for r in runs])),
             train_seconds=float(np.mean([r["train_seconds"] for r in runs])),
             seeds=[{k: r[k] for k in ("seed", "test_accuracy", "validation_accuracy",
                                       "workdir")} for r in runs])
  if all("deployed" in r for r in runs):
    out["deployed"] = {k: float(np.mean([r["deployed"][k] for r in runs]))
                       for k in runs[0]["deployed"]}
  return out


def given_teacher_results(path, test_accuracy):
  """Row of a teacher given by path: its run dir's results.json when it was trained by
  kd_research (params, ms/batch, train time), else its parameter count only."""
  run_results = os.path.join(os.path.dirname(os.path.abspath(path)), "results.json")
  if os.path.exists(run_results):
    found = io_utils.read_json(run_results)
    return dict(found, test_accuracy=test_accuracy)
  import keras  # pylint: disable=g-import-not-at-top
  params = keras.models.load_model(path, compile=False, safe_mode=True).count_params()
  return {"params": params, "ms_per_batch_128": None, "train_seconds": None,
          "test_accuracy": test_accuracy}


def _sum_or_none(values):
  values = list(values)
  return None if any(v is None for v in values) else sum(values)


def labels_of_teachers(config):
  """Stage names of the teachers, primary first."""
  return ["teacher" if n == "teacher" else f"teacher_{n}"
          for n, _ in config_lib.teacher_entries(config)]


def results_markdown(config, results, labels, order):
  """The seed-style table: teachers (and ensemble), labels-only student, distilled students."""
  rows = [dict(results[stage], label=labels[stage]) for stage in order]
  seeds = len(student_seeds(config))
  reference = max(results[s]["test_accuracy"] for s in order if s.startswith("teacher"))
  baseline = results["student_baseline"]["test_accuracy"]
  kd = [s for s in order if s.startswith("student_kd")]
  gains = ", ".join(f"{labels[s]}: {100 * (results[s]['test_accuracy'] - baseline):+.2f}"
                    for s in kd)
  d = config.distill
  return (f"# {config.experiment or 'pipeline'} on {config.dataset}\n\n"
          + evaluate.results_table(rows, reference)
          + f"\nShare of teacher = accuracy / best teacher row. Distillation gain over the "
          f"labels-only student (points): {gains}. Defaults T={d.temperature} "
          f"({d.temperature_schedule}), alpha={d.alpha} ({d.alpha_schedule}), "
          f"combine={d.combine}; {results['student_baseline']['test_count']} test examples"
          + (f"; students: mean +- std over {seeds} seeds" if seeds > 1 else "") + ".\n")
