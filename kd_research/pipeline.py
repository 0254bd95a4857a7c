"""The seed's experiment as stages: teacher -> student baseline -> distilled student -> table.

Each stage is a normal run in its own sub-directory of the pipeline workdir, so
rerunning the pipeline skips finished stages and resumes an interrupted one.
"""

import os

from absl import logging

from kd_research import evaluate
from kd_research import io_utils
from kd_research import loop

STAGES = (("teacher", "teacher"), ("student_baseline", "student"), ("student_kd", "distill"))


def teacher_path(workdir):
  """Where the pipeline's teacher stage saves its model."""
  return os.path.join(workdir, "teacher", "model.keras")


def run(config, workdir, strategy, overwrite=False):
  """Runs every stage (or reports it when finished) and writes results.md / results.json."""
  teacher = config.teacher.path or teacher_path(workdir)
  results = {}
  for stage, role in STAGES:
    if stage == "teacher" and config.teacher.path:
      logging.info("Using the given teacher %s; skipping teacher training.", teacher)
      continue
    results[stage] = loop.train_and_evaluate(
        config, os.path.join(workdir, stage), role, strategy,
        teacher_paths=(teacher,) if role == "distill" else (), overwrite=overwrite)
  if "teacher" not in results:
    kd = results["student_kd"]
    results["teacher"] = {"model": "given teacher", "params": 0, "ms_per_batch_128": 0.0,
                          "train_seconds": 0.0, "test_accuracy": kd["teacher_test_accuracy"]}
  table = results_markdown(config, results)
  io_utils.atomic_write_text(os.path.join(workdir, "results.md"), table)
  io_utils.atomic_write_json(os.path.join(workdir, "results.json"), results)
  return results, table


def results_markdown(config, results):
  """The seed-style table for the pipeline's three models."""
  labels = {"teacher": f"teacher ({config.teacher.model})",
            "student_baseline": f"student ({config.student.model}), labels only",
            "student_kd": f"student ({config.student.model}), distilled"}
  rows = [dict(results[stage], label=labels[stage]) for stage, _ in STAGES]
  teacher_accuracy = results["teacher"]["test_accuracy"]
  gain = results["student_kd"]["test_accuracy"] - results["student_baseline"]["test_accuracy"]
  return (f"# {config.experiment or 'pipeline'} on {config.dataset}\n\n"
          + evaluate.results_table(rows, teacher_accuracy)
          + f"\nDistillation gain over the labels-only student: {100 * gain:+.2f} points "
          f"(T={config.distill.temperature}, alpha={config.distill.alpha}, "
          f"{results['student_kd']['test_count']} test examples).\n")
