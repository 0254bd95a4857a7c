"""Compares finished runs: scans a tree of run directories and writes a Markdown table.

    python -m kd_research.report --workdir=runs [--output=runs/report.md]

A run directory is one with config.json and results.json (train, distill or a
pipeline stage). Runs whose configs differ only in the model seed are grouped
into one row with the test accuracy as mean +- std (sample std, n-1) over seeds.
"""

import json
import os
import sys

import numpy as np

from kd_research import config as config_lib
from kd_research import io_utils


def find_runs(root):
  """Every run directory below ``root`` (sorted), with its config and results."""
  runs = []
  for directory, _, files in os.walk(root):
    if "config.json" in files and "results.json" in files:
      config = io_utils.read_json(os.path.join(directory, "config.json"))
      results = io_utils.read_json(os.path.join(directory, "results.json"))
      if "role" in config and "test_accuracy" in results:
        runs.append({"dir": directory, "config": config, "results": results,
                     "command": _command(directory, root)})
  return sorted(runs, key=lambda r: r["dir"])


def _command(directory, root):
  """The command that produced a run: command.txt in the run dir or an ancestor below root."""
  root = os.path.abspath(root)
  directory = os.path.abspath(directory)
  while True:
    path = os.path.join(directory, "command.txt")
    if os.path.exists(path):
      return open(path).read().strip()
    if directory == root or os.path.dirname(directory) == directory:
      return ""
    directory = os.path.dirname(directory)


def group_key(config):
  """The config without the model seed: runs with equal keys are seeds of one setting."""
  flat = config_lib.flatten(config)
  flat.pop("model.seed", None)
  return json.dumps(flat, sort_keys=True, default=str)


def describe(config):
  """A short label: role, model and the distillation settings that matter."""
  model = config["model"]
  label = f"{config['role']}: {model['model']}" + (f" w{model['width']}" if model["width"] else "")
  if config["role"] == "distill":
    d = config["distill"]
    label += (f", {len(config['teachers'])} teacher(s), alpha {d['alpha']}"
              + (f"->{d['alpha_end']} {d['alpha_schedule']}" if d["alpha_schedule"] != "constant"
                 else "")
              + f", T {d['temperature']}"
              + (f"->{d['temperature_end']} {d['temperature_schedule']}"
                 if d["temperature_schedule"] != "constant" else "")
              + (f", fine-tune {d['finetune_epochs']} ep" if d["finetune_epochs"] else ""))
  return label


def mean_std(values):
  """'mean +- std' in percent (std over n-1; '-' for one run)."""
  values = 100 * np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.2f}%"
  return f"{values.mean():.2f} +- {values.std(ddof=1):.2f}%"


def build_table(runs, root):
  """Markdown table of the grouped runs."""
  groups = {}
  for run in runs:
    groups.setdefault(group_key(run["config"]), []).append(run)
  lines = ["| setting | seeds | test accuracy | params | ms/batch (128) | train time | runs | command |",
           "|---|---|---|---|---|---|---|---|"]
  for members in groups.values():
    results = [m["results"] for m in members]
    dirs = ", ".join(os.path.relpath(m["dir"], root) for m in members)
    commands = sorted({m["command"] for m in members if m["command"]})
    lines.append(
        f"| {describe(members[0]['config'])} | {len(members)} | "
        f"{mean_std([r['test_accuracy'] for r in results])} | {results[0]['params']:,} | "
        f"{np.median([r['ms_per_batch_128'] for r in results]):.1f} | "
        f"{np.mean([r['train_seconds'] for r in results]):.0f} s | {dirs} | "
        f"{'<br>'.join(f'`{c}`' for c in commands) or '-'} |")
  return "\n".join(lines) + "\n"


def main(argv):
  workdir, output = None, None
  for arg in argv:
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg.startswith("--output="):
      output = arg.split("=", 1)[1]
    else:
      sys.stderr.write(f"error: unknown flag {arg}; usage: report --workdir=DIR "
                       "[--output=FILE]\n")
      return 2
  if not workdir or not os.path.isdir(workdir):
    sys.stderr.write(f"error: --workdir={workdir!r} is not a directory of runs.\n")
    return 2
  runs = find_runs(workdir)
  if not runs:
    sys.stderr.write(f"error: no finished runs (config.json + results.json) below {workdir}.\n")
    return 1
  table = f"# Runs below {workdir}\n\n" + build_table(runs, workdir)
  io_utils.atomic_write_text(output or os.path.join(workdir, "report.md"), table)
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
