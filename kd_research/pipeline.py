"""The seed's experiment as stages: teacher -> student baseline -> distilled student -> table.

Each stage is a normal run in its own sub-directory of the pipeline workdir, so
rerunning the pipeline skips finished stages and resumes an interrupted one.
"""

import os

from absl import logging

from kd_research import config as config_lib
from kd_research import evaluate
from kd_research import io_utils
from kd_research import loop



def teacher_path(workdir):
  """Where the pipeline's teacher stage saves its model."""
  return os.path.join(workdir, "teacher", "model.keras")


def kd_stages(config):
  """(stage dir, label, config) of every distilled student the pipeline trains."""
  if not config.variants:
    return [("student_kd", f"student ({config.student.model}), distilled", config)]
  return [(f"student_kd_{name}", f"student ({config.student.model}), KD {name}",
           config_lib.apply_variant(config, name)) for name in config.variants]


def run(config, workdir, strategy, overwrite=False):
  """Runs every stage (or reports it when finished) and writes results.md / results.json."""
  teacher = config.teacher.path or teacher_path(workdir)
  results, labels = {}, {}
  if config.teacher.path:
    logging.info("Using the given teacher %s; skipping teacher training.", teacher)
  else:
    results["teacher"] = loop.train_and_evaluate(
        config, os.path.join(workdir, "teacher"), "teacher", strategy, overwrite=overwrite)
  labels["teacher"] = f"teacher ({config.teacher.model})"
  results["student_baseline"] = loop.train_and_evaluate(
      config, os.path.join(workdir, "student_baseline"), "student", strategy,
      overwrite=overwrite)
  labels["student_baseline"] = f"student ({config.student.model}), labels only"
  for stage, label, stage_config in kd_stages(config):
    results[stage] = loop.train_and_evaluate(
        stage_config, os.path.join(workdir, stage), "distill", strategy,
        teacher_paths=(teacher,), overwrite=overwrite)
    labels[stage] = label
  if "teacher" not in results:
    first_kd = results[kd_stages(config)[0][0]]
    results["teacher"] = {"model": "given teacher", "params": 0, "ms_per_batch_128": 0.0,
                          "train_seconds": 0.0, "test_accuracy": first_kd["teacher_test_accuracy"]}
  table = results_markdown(config, results, labels)
  io_utils.atomic_write_text(os.path.join(workdir, "results.md"), table)
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results, table


def results_markdown(config, results, labels):
  """The seed-style table: teacher, labels-only student, every distilled student."""
  order = ["teacher", "student_baseline"] + [s for s, _, _ in kd_stages(config)]
  rows = [dict(results[stage], label=labels[stage]) for stage in order]
  teacher_accuracy = results["teacher"]["test_accuracy"]
  baseline = results["student_baseline"]["test_accuracy"]
  gains = ", ".join(f"{labels[s]}: {100 * (results[s]['test_accuracy'] - baseline):+.2f}"
                    for s in order[2:])
  d = config.distill
  return (f"# {config.experiment or 'pipeline'} on {config.dataset}\n\n"
          + evaluate.results_table(rows, teacher_accuracy)
          + f"\nDistillation gain over the labels-only student (points): {gains}. "
          f"Defaults T={d.temperature} ({d.temperature_schedule}), alpha={d.alpha} "
          f"({d.alpha_schedule}); {results['student_baseline']['test_count']} test examples.\n")
