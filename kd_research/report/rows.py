"""Run directories -> grouped rows: the one source every table, figure and curve reads.

A run directory is one with config.json and results.json (train, distill, keras_peer or a
pipeline stage). Runs whose configs differ only in the model seed are one group (seeds of
one setting); a row is a group's accuracies, size, speed, directories and commands.
"""

import json
import os

import numpy as np

from kd_research import config as config_lib
from kd_research.train import workdir as workdir_lib
from kd_research.common import fileio
from kd_research.common import schedules
from kd_research.methods import registry as methods_lib
from kd_research.train import results as results_lib

ROLE_ORDER = {"teacher": 0, "ensemble": 1, "student": 2, "distill": 3}


def find_runs(root, extra_dirs=()):
  """Every run directory below ``root`` (sorted), and ``extra_dirs`` that are runs."""
  runs = []
  walked = [(d, files) for d, _, files in os.walk(root)]
  walked += [(d, os.listdir(d)) for d in extra_dirs if os.path.isdir(d)
             and os.path.realpath(d) not in {os.path.realpath(w) for w, _ in walked}]
  for directory, files in walked:
    if workdir_lib.CONFIG_FILE in files and results_lib.FILE in files:
      config = workdir_lib.read_identity(directory)
      results = results_lib.read_if_run(directory)
      if "role" in config and results is not None:
        export = os.path.join(directory, "export", "export_report.json")
        runs.append({"dir": directory, "config": config, "results": results,
                     "command": run_command(directory, root),
                     "export": fileio.read_json(export) if os.path.exists(export) else None})
  return sorted(runs, key=lambda r: r["dir"])


def run_command(directory, root):
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
  if model.get("cohort"):  # Deep mutual learning: the row's accuracy is member 0's.
    label += f", DML cohort of {model['cohort']} (member 0)"
  if model.get("objective") and config["role"] != "distill":  # Teacher-free (USKD).
    label += f", {model['objective']} (no teacher)"
  if config.get("labels"):
    labels = config["labels"]
    share = labels["count"] or f"{100 * labels['fraction']:g}%"
    label += f", {share} labels"
  if config["role"] == "distill":
    label += _distill_settings(config)
  return label


# Method fields that choose what the loss is, not how large it is: part of the method's name.
_KIND_FIELDS = {"deit": "type", "sdd": "type"}


def method_name(config):
  """'dkd + ctkd + ls', 'deit (soft)', 'kd + dot': a distilled run's method(s), each with its
  kind, the modifiers of its loss, and DOT's optimizer (or SGD) when it trains with one."""
  d = config["distill"]
  methods = []
  for method in d.get("method", "kd").split(","):
    kind = d.get(method, {}).get(_KIND_FIELDS.get(method, ""))
    methods.append(f"{method} ({kind})" if kind else method)
  optimizer = config.get("optimizer", {})
  trainer = (" + dot" if optimizer.get("dot_delta") else
             " + sgd" if optimizer.get("name") == "sgd" else "")
  return (",".join(methods) + (" + ctkd" if _learns_temperature(d) else "")
          + (" + ls" if d.get("logit_standardization") else "") + trainer)


def input_form(config):
  """', views strong=..., cached views (float16)': how the run's images and teacher outputs
  differ from plain ones ('' when they do not)."""
  views = config.get("augment", {}).get("views")
  return (f", views {views}" if views else "") + cache_form(config)


def _learns_temperature(distill):
  return bool(distill.get("ctkd", {}).get("enabled"))


def _distill_settings(config):
  """', 1 teacher(s), dkd + ctkd + ls, ...': the method and every modifier a distilled row
  differs by (CTKD's learned temperature, logit standardization, extra views, fine-tuning,
  a Keras peer, the teacher-output cache's form), so that no two settings read alike."""
  d = config["distill"]
  label = f", {len(config['teachers'])} teacher(s), {method_name(config)}"
  if "kd" in d.get("method", "kd").split(","):
    label += f", alpha {_kd_settings(d)}"
  label += f", fine-tune {d['finetune_epochs']} ep" if d["finetune_epochs"] else ""
  label += f", {config['trainer']} Distiller (fit)" if config.get("trainer") else ""
  return label + input_form(config)


def _kd_settings(distill):
  """'0.9, T 4' (T 'learned' under CTKD): kd's alpha and temperature."""
  temperature = ("learned" if _learns_temperature(distill)
                 else schedules.describe(distill["temperature"]))
  return f"{schedules.describe(distill['alpha'])}, T {temperature}"


def cache_form(config):
  """', cached views (float16, top 3)': how a run got its teacher outputs when the form can
  change them ('' for a live teacher, and for the exact float32 cache of unaugmented
  images, which gives the live teacher's numbers)."""
  d = config["distill"]
  views = config.get("augment", {}).get("ops") or config.get("data", {}).get(
      "train_view", "center") != "center"
  lossy = d.get("cache_teacher") and d.get("cache_dtype", "float32") != "float32"
  if not (d.get("cache_teacher") and (views or lossy)) and not d.get("cache_topk"):
    return ""
  form = [d.get("cache_dtype", "float32")] + ([f"top {d['cache_topk']}"]
                                               if d.get("cache_topk") else [])
  return f", cached {'views' if views else 'outputs'} ({', '.join(form)})"


def hyper_parameters(config):
  """'alpha 0.9, T 4; dkd beta 2': the distillation settings of a distilled run that are
  not its methods' defaults (alpha and T for kd always, CE weight when not 1), or
  'defaults'; '' for a run that is not distilled."""
  if config["role"] != "distill":
    return ""
  d = config["distill"]
  method = d.get("method", "kd")
  parts = []
  if "kd" in method.split(","):
    parts.append(f"alpha {_kd_settings(d)}")
  if d.get("ce_weight", 1.0) != 1.0 and method != "kd":
    parts.append(f"CE weight {d['ce_weight']:g}")
  defaults = methods_lib.defaults()
  for name in method.split(","):
    changed = [f"{field} {_short(value)}" for field, value in sorted(d.get(name, {}).items())
               if name in defaults and _as_json(defaults[name].get(field)) != value]
    if changed:
      parts.append(f"{name} " + ", ".join(changed))
  return "; ".join(parts) or "defaults"


def _as_json(value):
  """A default as config.json holds it (tuples become lists), to compare with a run's."""
  return list(value) if isinstance(value, tuple) else value


def _short(value):
  return f"{value:g}" if isinstance(value, float) else str(value)


def budget(config):
  """', 40 epochs, lr 0.01': a run's epochs and initial learning rate ('' if unrecorded)."""
  epochs = config.get("model", {}).get("epochs")
  lr = config.get("optimizer", {}).get("learning_rate", {}).get("start")
  return (f", {epochs} epochs" if epochs else "") + (f", lr {lr:g}" if lr else "")


def std(values):
  """Sample standard deviation (n - 1); 0.0 for a single run (no spread measured)."""
  return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def combined_spread(a, b):
  """sqrt(std_a^2 + std_b^2) in points, or None when either side has one run (no std)."""
  if len(a) < 2 or len(b) < 2:
    return None
  return 100 * float(np.hypot(std(a), std(b)))


def mean_std(values):
  """'mean +- std' in percent (std over n-1; '-' for one run)."""
  values = 100 * np.asarray(values, np.float64)
  if len(values) == 1:
    return f"{values[0]:.2f}%"
  return f"{values.mean():.2f} +- {values.std(ddof=1):.2f}%"


def groups(runs):
  """Runs grouped by config without the model seed, in first-seen order. A seed counts once
  per group: the same configuration and seed in another directory (e.g. the labels-only
  student of two pipelines that differ only in their teachers) is the same run repeated,
  not another sample."""
  grouped, seen = {}, set()
  for run in runs:
    key = group_key(run["config"])
    seed = (key, run["config"]["model"].get("seed"))
    if seed in seen:
      continue
    seen.add(seed)
    grouped.setdefault(key, []).append(run)
  return list(grouped.values())


def student_key(config):
  """What makes two student runs comparable: dataset, model entry without the seed, and the
  main view's augmentation (the fields a method's own extra views bring in, MLKD's and
  CRLD's RandAugment, do not set a distilled run apart from its labels-only baseline)."""
  model = dict(config["model"], seed=None)
  augment = dict(config.get("augment") or {})
  main = list(augment.get("ops", ())) + [augment.get("views", "")]
  for field, op in (("randaugment_layers", "randaugment"), ("erase_prob", "erase")):
    if not any(op in ops for ops in main):
      augment.pop(field, None)
  return json.dumps([config["dataset"], model, augment], sort_keys=True)


def ensemble_rows(runs):
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


def rows(runs, root):
  """Table rows (dicts) of every group and ensemble, teachers first."""
  out = []
  for members in groups(runs):
    results = [m["results"] for m in members]
    config = members[0]["config"]
    out.append({
        "label": describe(config) + budget(config), "seeds": len(members),
        "config": config,
        "test": [r["test_accuracy"] for r in results],
        "validation": [r.get("validation_accuracy") for r in results],
        "params": results[0]["params"], "extra": results[0].get("extra_params", 0),
        "ms": float(np.median([r["ms_per_batch_128"] for r in results])),
        "train": float(np.mean([r["train_seconds"] for r in results])),
        "dirs": ", ".join(os.path.relpath(m["dir"], root) for m in members),
        "commands": sorted({m["command"] for m in members if m["command"]}),
        "deployed": deployed([m.get("export") for m in members]),
        "order": ROLE_ORDER[config["role"]]})
  out += ensemble_rows(runs)
  return sorted(out, key=lambda r: r["order"])


def deployed(exports):
  """Mean int8 TFLite size (KB), test accuracy and batch-1 latency (ms), or None."""
  if not exports or any(e is None for e in exports):
    return None
  int8 = [e["artifacts"]["tflite_int8"] for e in exports]
  return [float(np.mean([a[k] for a in int8]))
          for k in ("size_kb", "test_accuracy", "latency_ms_batch1")]
