"""Learning curves of the labels-only students: is the budget a converged one?

A method benchmark's gains mean little if the labels-only student is still learning when its
budget ends. Each run's TensorBoard events hold the validation accuracy of every evaluation
(``eval/accuracy``, every config.run.eval_every_epochs); this module reads them back and
tabulates them per epoch, mean +- std over the seeds of a setting, one column per setting
(e.g. the benchmark's budget and twice it).
"""

import glob
import os

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.util import tensor_util

from kd_research.report import rows as rows_lib

TAG = "eval/accuracy"


def validation_curve(run_dir):
  """{epoch: validation accuracy} from the run's event files ({} when there are none)."""
  points = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))):
    for event in event_file_loader.EventFileLoader(path).Load():
      for value in event.summary.value:
        if value.tag == TAG:
          points[event.step] = float(tensor_util.make_ndarray(value.tensor))
  return points


def _steps_per_epoch(run):
  results = run["results"]
  return max(1, int(results.get("steps", 0)) // max(1, int(results.get("epochs", 1))))


def section(groups):
  """The report's learning-curve section: validation accuracy (%) per epoch for each
  labels-only student setting in ``groups`` (lists of runs that are seeds of one setting);
  '' if none has a curve."""
  columns = []
  for runs in groups:
    if runs[0]["config"]["role"] != "student":
      continue
    curves = []
    for run in runs:
      per_step = validation_curve(run["dir"])
      spe = _steps_per_epoch(run)
      if per_step:
        curves.append({step // spe: acc for step, acc in per_step.items()})
    if curves:
      config, n = runs[0]["config"], len(curves)
      label = f"{rows_lib.describe(config)}{rows_lib.budget(config)} ({n} seed{'s' * (n > 1)})"
      columns.append((label, curves))
  if not columns:
    return ""
  all_epochs = sorted({e for _, curves in columns for c in curves for e in c})
  lines = ["| epoch | " + " | ".join(name for name, _ in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  for epoch in all_epochs:
    cells = []
    for _, curves in columns:
      values = [c[epoch] for c in curves if epoch in c]
      cells.append(rows_lib.mean_std(values).rstrip("%") if len(values) == len(curves) else "")
    lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
  return ("\n## Learning curves of the labels-only students\n\n"
          "Validation accuracy (%) at each evaluation, mean +- std over seeds, from the runs' "
          f"TensorBoard events ({TAG}). A run with twice the epochs decays its learning rate "
          "twice as slowly: compare the end of each column.\n\n" + "\n".join(lines) + "\n")
