"""Hyper-parameters chosen on validation: the sweep's candidates, the choice, and the
chosen candidate's run adopted as the variant's first seed.

Each candidate of ``config.pipeline.candidates`` runs once (the first student seed) in the
sweep directory (stages.sweep_dir); only validation accuracy decides, ties going to the
first candidate in name order; the choice and every candidate's score are written to
<sweep dir>/selection.json.
"""

import os
import shutil

from absl import logging

from kd_research.campaign import stages as stages_lib
from kd_research.common import fileio
from kd_research.train import end_to_end
from kd_research.train import workdir as workdir_lib


def select(config, workdir, paths, strategy, overwrite=False):
  """Runs (or finds finished) every candidate and returns ({variant: the chosen
  candidate's overrides}, {variant: the chosen candidate's run dir})."""
  if not config.pipeline.candidates:
    return {}, {}
  root = stages_lib.sweep_dir(config, workdir)
  command = os.path.join(workdir, "command.txt")
  if os.path.exists(command):  # The sweep's runs were made by the pipeline's command.
    os.makedirs(root, exist_ok=True)
    with open(command) as f:
      fileio.atomic_write_text(os.path.join(root, "command.txt"), f.read())
  chosen, chosen_dirs, record = {}, {}, {}
  for variant, candidates in config.pipeline.candidates.items():
    scores = {}
    for _, name, run_config, run_dir, run_paths in stages_lib.candidate_runs(
        config, workdir, paths, variant):
      result = end_to_end.train_and_evaluate(run_config, run_dir, "distill", strategy,
                                             tuple(run_paths), overwrite)
      scores[name] = result["validation_accuracy"]
    best = max(sorted(scores), key=lambda n: scores[n])  # max keeps the first of ties.
    chosen[variant] = candidates[best].to_dict()
    chosen_dirs[variant] = os.path.join(root, f"{variant}_{best}")
    record[variant] = {"chosen": best, "overrides": chosen[variant], "validation": scores}
    logging.info("Variant %s: candidate %s chosen on validation (%s).", variant, best, scores)
  fileio.atomic_write_json(os.path.join(root, "selection.json"), record)
  return chosen, chosen_dirs


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
