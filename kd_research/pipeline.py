"""The seed's experiment as stages: teacher -> student baseline -> distilled student -> table.

Each stage is a normal run in its own sub-directory of the pipeline workdir, so
rerunning the pipeline skips finished stages and resumes an interrupted one.
"""

import os

from absl import logging
import ml_collections

from kd_research import config as config_lib
from kd_research import evaluate
from kd_research import io_utils
from kd_research import loop



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
  """(stage dir, label, config, teacher paths) of every distilled student to train."""
  student = f"student ({config.student.model})"
  if config.variants:
    return [(f"student_kd_{name}", f"{student}, KD {name}", config_lib.apply_variant(config, name),
             teacher_paths) for name in config.variants]
  if len(teacher_paths) == 1:
    return [("student_kd", f"{student}, distilled", config, teacher_paths)]
  return [("student_kd", f"{student}, KD single teacher", _single_teacher(config),
           teacher_paths[:1]),
          ("student_kd_multi", f"{student}, KD {len(teacher_paths)} teachers "
           f"({config.distill.combine})", config, teacher_paths)]


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
  """Runs every stage (or reports it when finished) and writes results.md / results.json."""
  paths, results, labels = train_teachers(config, workdir, strategy, overwrite)
  results["student_baseline"] = loop.train_and_evaluate(
      config, os.path.join(workdir, "student_baseline"), "student", strategy,
      overwrite=overwrite)
  labels["student_baseline"] = f"student ({config.student.model}), labels only"
  stages = kd_stages(config, paths)
  for stage, label, stage_config, stage_paths in stages:
    results[stage] = loop.train_and_evaluate(
        stage_config, os.path.join(workdir, stage), "distill", strategy,
        teacher_paths=tuple(stage_paths), overwrite=overwrite)
    labels[stage] = label
  if config.export_students:
    from kd_research import export  # pylint: disable=g-import-not-at-top
    for stage, _, stage_config, _ in stages:
      run_dir = os.path.join(workdir, stage)
      report_path = os.path.join(run_dir, "export", "export_report.json")
      if os.path.exists(report_path):  # Exported by an earlier run of this pipeline.
        report = io_utils.read_json(report_path)
      else:
        report = export.export_run(run_dir, export.splits_for_run(stage_config, run_dir))
      int8 = report["artifacts"]["tflite_int8"]
      results[stage]["deployed"] = {"int8_size_kb": int8["size_kb"],
                                    "int8_test_accuracy": int8["test_accuracy"],
                                    "int8_latency_ms_batch1": int8["latency_ms_batch1"]}
  last_kd = results[stages[-1][0]]
  report = last_kd.get("teachers", {})
  for k, name in enumerate(labels_of_teachers(config)):
    if name not in results:  # A given teacher: only its accuracy is known.
      results[name] = {"params": 0, "ms_per_batch_128": 0.0, "train_seconds": 0.0,
                       "test_accuracy": report["test"]["accuracy"][k]}
  if len(paths) > 1:
    teacher_rows = [results[n] for n in labels_of_teachers(config)]
    results["teacher_ensemble"] = {
        "params": sum(r["params"] for r in teacher_rows),
        "ms_per_batch_128": sum(r["ms_per_batch_128"] for r in teacher_rows),
        "train_seconds": sum(r["train_seconds"] for r in teacher_rows),
        "test_accuracy": report["test"]["ensemble_accuracy"],
        "test_ece": report["test"]["ensemble_ece"],
        "pairwise_agreement": report["test"]["pairwise_agreement"]}
    labels["teacher_ensemble"] = f"teacher ensemble ({len(paths)}, probability mean)"
  order = (labels_of_teachers(config) + (["teacher_ensemble"] if len(paths) > 1 else [])
           + ["student_baseline"] + [s[0] for s in stages])
  table = results_markdown(config, results, labels, order)
  io_utils.atomic_write_text(os.path.join(workdir, "results.md"), table)
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results, table


def labels_of_teachers(config):
  """Stage names of the teachers, primary first."""
  return ["teacher" if n == "teacher" else f"teacher_{n}"
          for n, _ in config_lib.teacher_entries(config)]


def results_markdown(config, results, labels, order):
  """The seed-style table: teachers (and ensemble), labels-only student, distilled students."""
  rows = [dict(results[stage], label=labels[stage]) for stage in order]
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
          f"combine={d.combine}; {results['student_baseline']['test_count']} test examples.\n")
