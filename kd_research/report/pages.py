"""Compares finished runs: scans a tree of run directories and writes a Markdown report.

    ./launch.sh report --workdir=runs/benchmark [--output=RESULTS.md] [--figure=F.svg]
        [--sweep=runs/results_sweep] [--claims=cifar10_seed]

A run directory is one with config.json and results.json (train, distill or a
pipeline stage). Runs whose configs differ only in the model seed are grouped
into one row with the test accuracy as mean +- std (sample std, n-1) over seeds.
Rows: teachers, teacher ensembles (from multi-teacher distillation runs), labels-only
students, distilled students; then, per distilled setting, its gain over the
labels-only student of the same model with the combined standard deviation. The
machine(s) every number came from are listed (from each run's results.json).
``--sweep`` adds a validation-only table of a hyper-parameter sweep (no test
numbers: the test split is not used for selection); ``--claims`` quotes an
experiment module's CLAIMED_TABLE, marked as a claim and not a measurement.

Every table of the project is built here, from run directories: the pipeline's
results.md is ``render_pipeline`` over the pipeline's workdir.
"""

import collections
import importlib
import json
import os

import numpy as np

from kd_research import config as config_lib
from kd_research.common import fileio
from kd_research.common import machine as machine_lib
from kd_research.report import curves
from kd_research.common import schedules
from kd_research import workdir as workdir_lib

ROLE_ORDER = {"teacher": 0, "ensemble": 1, "student": 2, "distill": 3}


def find_runs(root, extra_dirs=()):
  """Every run directory below ``root`` (sorted), and ``extra_dirs`` that are runs."""
  runs = []
  walked = [(d, files) for d, _, files in os.walk(root)]
  walked += [(d, os.listdir(d)) for d in extra_dirs if os.path.isdir(d)
             and os.path.realpath(d) not in {os.path.realpath(w) for w, _ in walked}]
  for directory, files in walked:
    if "config.json" in files and "results.json" in files:
      config = workdir_lib.read_identity(directory)
      results = fileio.read_json(os.path.join(directory, "results.json"))
      if "role" in config and "test_accuracy" in results:
        export = os.path.join(directory, "export", "export_report.json")
        runs.append({"dir": directory, "config": config, "results": results,
                     "command": _command(directory, root),
                     "export": fileio.read_json(export) if os.path.exists(export) else None})
  return sorted(runs, key=lambda r: r["dir"])


def _command(directory, root):
  """The command that produced a run: command.txt in the run dir or an ancestor below root."""
  root = os.path.abspath(root)
  directory = os.path.abspath(directory)
  while True:
    path = os.path.join(directory, "command.txt")
    if os.path.exists(path):
      with open(path) as f:  # Runs recorded before paths were made portable, too.
        return fileio.portable_command(f.read().strip())
    if directory == root or os.path.dirname(directory) == directory:
      return ""
    directory = os.path.dirname(directory)


def group_key(config):
  """The config without the student's seed: student runs with equal keys are seeds of one
  setting. Teachers keep their seed: each teacher is its own row (students learn from a
  particular teacher, not from a seed average)."""
  flat = config_lib.flatten(config)
  if config["role"] != "teacher":
    flat.pop("model.seed", None)
  return json.dumps(flat, sort_keys=True, default=str)


def describe(config):
  """A short label: role, model and the distillation settings that matter."""
  model = config["model"]
  label = f"{config['role']}: {model['model']}" + (f" w{model['width']}" if model["width"] else "")
  if config["role"] == "teacher":
    label += f" (seed {model['seed']})"
  if config.get("labels"):
    labels = config["labels"]
    share = labels["count"] or f"{100 * labels['fraction']:g}%"
    label += f", {share} labels"
  if config["role"] == "distill":
    d = config["distill"]
    method = d.get("method", "kd")
    label += f", {len(config['teachers'])} teacher(s)"
    if method != "kd":
      label += f", {method}" + (" + ls" if d.get("logit_standardization") else "")
    if "kd" in method.split(","):
      label += (f", alpha {schedules.describe(d['alpha'])}"
                f", T {schedules.describe(d['temperature'])}"
                + (" + ls" if d.get("logit_standardization") and method == "kd" else ""))
    label += f", fine-tune {d['finetune_epochs']} ep" if d["finetune_epochs"] else ""
    label += f", {config['trainer']} Distiller (fit)" if config.get("trainer") else ""
  return label


def mean_std(values):
  """'mean +- std' in percent (std over n-1; '-' for one run)."""
  values = 100 * np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.2f}%"
  return f"{values.mean():.2f} +- {values.std(ddof=1):.2f}%"


def _groups(runs):
  """Runs grouped by config without the model seed, in first-seen order. A seed counts once
  per group: the same configuration and seed in another directory (e.g. the labels-only
  student of two pipelines that differ only in their teachers) is the same run repeated,
  not another sample."""
  groups, seen = {}, set()
  for run in runs:
    key = group_key(run["config"])
    seed = (key, run["config"]["model"].get("seed"))
    if seed in seen:
      continue
    seen.add(seed)
    groups.setdefault(key, []).append(run)
  return list(groups.values())


def _student_key(config):
  """What makes two student runs comparable: dataset and model entry without the seed."""
  model = dict(config["model"], seed=None)
  return json.dumps([config["dataset"], model, config.get("augment")], sort_keys=True)


def _ensemble_rows(runs):
  """One row per distinct teacher set of multi-teacher distillation runs.

  Accuracy comes from the distillation run's teacher report (the ensemble is
  evaluated on the same test split); params, ms/batch and train time are the sums of
  the teachers' own runs when they are below the report root, else unknown.
  """
  by_dir = {os.path.realpath(r["dir"]): r for r in runs if r["config"]["role"] == "teacher"}
  rows = {}
  for run in runs:
    teachers = run["config"].get("teachers", [])
    if run["config"]["role"] != "distill" or len(teachers) < 2 or "teachers" not in run["results"]:
      continue
    key = tuple(teachers)
    if key in rows:
      continue
    own = [by_dir.get(os.path.dirname(os.path.realpath(p))) for p in teachers]
    known = all(own)
    report = run["results"]["teachers"]
    rows[key] = {
        "label": f"teacher ensemble ({len(teachers)}: "
                 + ", ".join(os.path.basename(os.path.dirname(p)) for p in teachers)
                 + f"; {run['config']['distill']['combine']})",
        "seeds": 1, "test": [report["test"]["ensemble_accuracy"]],
        "validation": [report["validation"]["ensemble_accuracy"]],
        "params": sum(o["results"]["params"] for o in own) if known else None,
        "ms": sum(o["results"]["ms_per_batch_128"] for o in own) if known else None,
        "train": sum(o["results"]["train_seconds"] for o in own) if known else None,
        "dirs": "-", "commands": [], "command_text": "see the teachers' rows",
        "order": ROLE_ORDER["ensemble"]}
  return list(rows.values())


def _rows(runs, root):
  """Table rows (dicts) of every group and ensemble, teachers first."""
  rows = []
  for members in _groups(runs):
    results = [m["results"] for m in members]
    config = members[0]["config"]
    rows.append({
        "label": describe(config) + curves.budget(config), "seeds": len(members),
        "config": config,
        "test": [r["test_accuracy"] for r in results],
        "validation": [r.get("validation_accuracy") for r in results],
        "params": results[0]["params"], "extra": results[0].get("extra_params", 0),
        "ms": float(np.median([r["ms_per_batch_128"] for r in results])),
        "train": float(np.mean([r["train_seconds"] for r in results])),
        "dirs": ", ".join(os.path.relpath(m["dir"], root) for m in members),
        "commands": sorted({m["command"] for m in members if m["command"]}),
        "deployed": _deployed([m.get("export") for m in members]),
        "order": ROLE_ORDER[config["role"]]})
  rows += _ensemble_rows(runs)
  return sorted(rows, key=lambda r: r["order"])


def _deployed(exports):
  """Mean int8 TFLite size (KB), test accuracy and batch-1 latency (ms), or None."""
  if not exports or any(e is None for e in exports):
    return None
  int8 = [e["artifacts"]["tflite_int8"] for e in exports]
  return [float(np.mean([a[k] for a in int8]))
          for k in ("size_kb", "test_accuracy", "latency_ms_batch1")]


def _extra(row):
  """' (+192 extra)': parameters of connectors, trained but not exported."""
  return f" (+{row['extra']:,} extra)" if row.get("extra") else ""


def _reference(rows):
  """The best single teacher's mean test accuracy (the 'share of teacher' base), or None."""
  teachers = [np.mean(r["test"]) for r in rows if r["order"] == ROLE_ORDER["teacher"]]
  return max(teachers) if teachers else None


def _fmt(value, spec, unit=""):
  return "-" if value is None else f"{value:{spec}}{unit}"


def build_table(runs, root):
  """Markdown table of the grouped runs (and teacher ensembles), teachers first."""
  rows = _rows(runs, root)
  reference = _reference(rows)
  deployed = any(row.get("deployed") for row in rows)
  lines = ["| setting | seeds | test accuracy | validation accuracy | params | share of teacher "
           "| ms/batch (128) | train time | " + ("int8 TFLite KB | int8 accuracy | "
                                                 "int8 ms (batch 1) | " if deployed else "")
           + "runs | command |",
           "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if deployed else "") + "---|---|"]
  for row in rows:
    share = (f"{100 * np.mean(row['test']) / reference:.1f}%" if reference else "-")
    validation = ("-" if None in row["validation"] else mean_std(row["validation"]))
    int8 = row.get("deployed")
    tail = ((f"{int8[0]:.1f} | {100 * int8[1]:.2f}% | {int8[2]:.3f} | " if int8 else
             "- | - | - | ") if deployed else "")
    lines.append(
        f"| {row['label']} | {row['seeds']} | {mean_std(row['test'])} | {validation} | "
        f"{_fmt(row['params'], ',')}{_extra(row)} | {share} | {_fmt(row['ms'], '.1f')} | "
        f"{_fmt(row['train'], '.0f', ' s')} | {tail}{row['dirs']} | "
        f"{_commands(row)} |")
  return "\n".join(lines) + "\n"


def _commands(row):
  """The row's commands as code spans (one per line), or its note, or '-'."""
  return "<br>".join(f"`{c}`" for c in row["commands"]) or row.get("command_text", "-")


def comparison(runs, root):
  """Per distilled setting: gain over the labels-only student of the same model.

  The gain is the difference of mean test accuracies; the combined standard
  deviation is sqrt(std_kd^2 + std_labels^2) over seeds. The target columns are the
  results issue's: gain >= 0.5 points and larger than the combined std; the student
  at >= 98% of the best teacher's accuracy.
  """
  rows = _rows(runs, root)
  reference = _reference(rows)
  baselines = {_student_key(r["config"]): r for r in rows if r["order"] == ROLE_ORDER["student"]}
  lines = ["| distilled setting | gain over labels only (points) | combined std (points) "
           "| gain >= 0.5 and > combined std | share of teacher | >= 98% of teacher |",
           "|---|---|---|---|---|---|"]
  found = False
  for row in rows:
    base = baselines.get(_student_key(row["config"])) if "config" in row else None
    if row["order"] != ROLE_ORDER["distill"] or base is None:
      continue
    found = True
    gain = 100 * (np.mean(row["test"]) - np.mean(base["test"]))
    spread = 100 * np.hypot(_std(row["test"]), _std(base["test"]))
    share = 100 * np.mean(row["test"]) / reference if reference else None
    beats = "yes" if gain >= 0.5 and gain > spread else "no"
    lines.append(f"| {row['label']} | {gain:+.2f} | {spread:.2f} | {beats} | "
                 f"{_fmt(share, '.1f', '%')} | "
                 f"{'-' if share is None else ('yes' if share >= 98 else 'no')} |")
  return "\n".join(lines) + "\n" if found else ""


def _std(values):
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def machines(runs):
  """The distinct machines of the runs (one line each) and how many runs record none."""
  infos = [run["results"].get("machine") for run in runs]
  seen = collections.Counter(machine_lib.summary(info) for info in infos if info is not None)
  missing = infos.count(None)
  lines = [f"- {line}: {n} run(s)" for line, n in seen.items()]
  if missing:
    lines.append(f"- not recorded (runs from before machine recording): {missing} run(s)")
  return "\n".join(lines) + "\n"


def sweep_table(runs, root):
  """Validation-only table of a hyper-parameter sweep, best validation accuracy first."""
  lines = ["| setting | seeds | validation accuracy | runs | command |", "|---|---|---|---|---|"]
  groups = sorted(_groups(runs), key=lambda g: -np.mean(
      [m["results"]["validation_accuracy"] for m in g]))
  for members in groups:
    commands = sorted({m["command"] for m in members if m["command"]})
    lines.append(
        f"| {describe(members[0]['config'])}{curves.budget(members[0]['config'])} "
        f"| {len(members)} | {mean_std([m['results']['validation_accuracy'] for m in members])} "
        f"| {', '.join(os.path.relpath(m['dir'], root) for m in members)} "
        f"| {'<br>'.join(f'`{c}`' for c in commands) or '-'} |")
  return "\n".join(lines) + "\n"


def claims(module_name):
  """The CLAIMED_TABLE of experiments/<module_name>.py (Markdown), or raises ValueError."""
  try:
    module = importlib.import_module(f"experiments.{module_name}")
  except ImportError as e:
    raise ValueError(f"--claims={module_name}: cannot import experiments/{module_name}.py ({e}).")
  table = getattr(module, "CLAIMED_TABLE", None)
  if table is None:
    raise ValueError(f"--claims={module_name}: experiments/{module_name}.py has no CLAIMED_TABLE.")
  return table


def render_pipeline(workdir, title, dataset, teacher_paths=()):
  """A pipeline's results.md: its runs (and teachers given by path) with the gains."""
  runs = find_runs(workdir, [os.path.dirname(os.path.abspath(p)) for p in teacher_paths])
  seeds = max(len(g) for g in _groups(runs))
  parts = [f"# {title} on {dataset}\n\n", build_table(runs, workdir)]
  versus = comparison(runs, workdir)
  if versus:
    parts += ["\nDistillation against the labels-only student (test accuracy, points):\n\n",
              versus]
  parts.append(f"\nTest accuracy over {runs[0]['results']['test_count']} test examples"
               + (f"; mean +- std over {seeds} seeds" if seeds > 1 else "") + ".\n")
  return "".join(parts)


def render(root, runs, command, sweep_root=None, sweep_runs=(), claims_module=None,
           figure_link=None):
  """The whole report as Markdown (``figure_link``: the method figure's relative path)."""
  parts = [f"# Results: runs below {root}\n\n",
           f"Generated by `{command}` from the run directories (config.json, results.json, "
           "command.txt of each run); do not edit by hand.\n\n",
           "Test accuracy is on the full test split, evaluated once at the end of each run; "
           "`mean +- std` is over seeds (sample std, n-1). Share of teacher = mean test "
           "accuracy / the best single teacher's. ms/batch = median inference time of a "
           "batch of 128 after warm-up; train time = wall-clock seconds of the run "
           "(mean over seeds).\n\n",
           "## Measured\n\n", build_table(runs, root)]
  versus = comparison(runs, root)
  if versus:
    parts += ["\n## Distillation against the labels-only student\n\n", versus]
  from kd_research.report import methods as report_methods  # pylint: disable=g-import-not-at-top
  tables = report_methods.method_tables(runs, root)
  if tables:
    parts += ["\n## Methods per teacher -> student pair\n\n"
              "Gain = mean test accuracy minus the labels-only student's (same model, data and "
              "budget); combined std = sqrt(std_method^2 + std_labels^2) over seeds.\n\n", tables]
    if figure_link:
      parts.append(f"\n![Test accuracy per method, mean +- std over seeds; dashed: labels "
                   f"only]({figure_link})\n")
  parts += [curves.section(_groups(runs)),
            "\n## Machine\n\n", machines(list(runs) + list(sweep_runs))]
  if sweep_root:
    parts += [f"\n## Hyper-parameter selection on the validation split ({sweep_root})\n\n"
              "Only validation accuracy is shown: the choice of the final settings used "
              "nothing else. The setting column is each run's recorded config (config.json); "
              "a command resolves its --experiment against the experiment file as it was when "
              "the run was made.\n\n", sweep_table(sweep_runs, sweep_root)]
  if claims_module:
    parts += [f"\n## Claimed by the article, NOT measured here (experiments/{claims_module}.py)"
              "\n\n", claims(claims_module)]
  return "".join(parts)


def generate(workdir, output=None, sweep=None, claims_module=None, command="", figure=None):
  """Writes the report of the runs below ``workdir`` (default WORKDIR/report.md); returns it.

  ``figure``: also write the method figure (SVG) there and link it from the report.
  Raises UserError for a missing directory, no finished runs, or unknown claims.
  """
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  for name, value in (("workdir", workdir), ("sweep", sweep)):
    if value is not None and not os.path.isdir(value):
      raise UserError(f"--{name}={value!r} is not a directory of runs.")
  runs = find_runs(workdir)
  if not runs:
    raise UserError(f"no finished runs (config.json + results.json) below {workdir}.")
  sweep_runs = find_runs(sweep) if sweep else []
  if sweep and not sweep_runs:
    raise UserError(f"no finished runs below --sweep={sweep}.")
  output = output or os.path.join(workdir, "report.md")
  link = None
  if figure:
    from kd_research.report import figure  # pylint: disable=g-import-not-at-top
    from kd_research.report import methods as report_methods  # pylint: disable=g-import-not-at-top
    panels = report_methods.method_panels(runs, workdir)
    if not panels:
      raise UserError(f"--figure: no distilled runs with a labels-only student below {workdir}.")
    fileio.atomic_write_text(figure, figure.method_figure(panels))
    link = os.path.relpath(os.path.abspath(figure), os.path.dirname(os.path.abspath(output)))
  try:
    text = render(workdir, runs, command, sweep, sweep_runs, claims_module, link)
  except ValueError as e:
    raise UserError(str(e))
  fileio.atomic_write_text(output, text)
  return text
