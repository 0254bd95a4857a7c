"""Per teacher -> student pair: the method tables and the figure's panels of a report.

Distilled runs with the same student (dataset, model entry without the seed) and the same
teachers form a pair; each is compared with the labels-only student of that model.
"""

import os

import numpy as np

from kd_research.report import rows as rows_lib
from kd_research.train import workdir as workdir_lib


def _pair_key(row):
  """(student key, teachers) of a distilled row: rows with equal keys form one panel."""
  return (rows_lib.student_key(row["config"]), tuple(row["config"].get("teachers", ())))


def _method_label(config):
  """The method with its modifiers ('dkd + ctkd + ls', 'kd, views strong=...', ...)."""
  label = rows_lib.method_name(config) + rows_lib.input_form(config)
  trainer = config.get("trainer", "")
  return label + (", Keras Distiller" + (" + KLDivergence()" if "KLDivergence" in trainer else "")
                  + " (fit)" if trainer else "")


def method_pairs(runs, root):
  """Per teacher -> student pair: {'title', 'baseline' row, 'rows' (distilled, best first)}."""
  rows = rows_lib.rows(runs, root)
  order = rows_lib.ROLE_ORDER
  baselines = {rows_lib.student_key(r["config"]): r for r in rows if r["order"] == order["student"]}
  teacher_accuracy = {}
  for run in runs:
    if run["config"]["role"] == "distill" and "teacher_test_accuracy" in run["results"]:
      teacher_accuracy[tuple(run["config"]["teachers"])] = run["results"]["teacher_test_accuracy"]
  teacher_models = {os.path.realpath(r["dir"]): _model_name(r["config"]["model"])
                    for r in runs if r["config"]["role"] == "teacher"}
  pairs = {}
  for row in rows:
    if row["order"] != order["distill"] or rows_lib.student_key(row["config"]) not in baselines:
      continue
    pairs.setdefault(_pair_key(row), []).append(row)
  out = []
  for (student_key, teachers), members in pairs.items():
    config = members[0]["config"]
    names = " + ".join(_teacher_name(p, root, teacher_models) for p in teachers)
    accuracy = teacher_accuracy.get(teachers)
    out.append({
        "title": f"{config['dataset']}: {names} -> {_model_name(config['model'])}, "
                 f"{config['model']['epochs']} epochs"
                 + (f" (teacher {100 * accuracy:.2f}%)" if accuracy is not None else ""),
        "baseline": baselines[student_key],
        "rows": sorted(members, key=lambda r: -np.mean(r["test"]))})
  return out


def _teacher_name(path, root, known):
  """'resnet_article w16 (teacher)': a teacher's model and run directory (relative to root),
  from the runs below root or the config.json next to its file."""
  directory = os.path.dirname(os.path.realpath(path))
  where = os.path.relpath(directory, os.path.realpath(root))
  if directory in known:
    return f"{known[directory]} ({where})"
  if os.path.exists(os.path.join(directory, workdir_lib.CONFIG_FILE)):
    return f"{_model_name(workdir_lib.read_identity(directory)['model'])} ({where})"
  return where


def _model_name(model):
  return model["model"] + (f" w{model['width']}" if model["width"] else "")


def method_tables(runs, root):
  """One table per pair: every method's test accuracy, its gain over labels only, and the
  hyper-parameters it ran with (chosen on validation where the campaign swept them)."""
  parts = []
  for pair in method_pairs(runs, root):
    base = pair["baseline"]
    lines = [f"**{pair['title']}**\n", "| method | seeds | test accuracy | gain over labels only "
             "(points) | combined std | \\|gain\\| > combined std | hyper-parameters |",
             "|---|---|---|---|---|---|---|",
             f"| labels only | {base['seeds']} | {rows_lib.mean_std(base['test'])} | - | - | - "
             "| - |"]
    for row in pair["rows"]:
      gain = 100 * (np.mean(row["test"]) - np.mean(base["test"]))
      spread = rows_lib.combined_spread(row["test"], base["test"])
      spread_cells = ("- (one seed) | -" if spread is None else
                      f"{spread:.2f} | {'yes' if abs(gain) > spread else 'no'}")
      lines.append(f"| {_method_label(row['config'])} | {row['seeds']} | "
                   f"{rows_lib.mean_std(row['test'])} "
                   f"| {gain:+.2f} | {spread_cells} | "
                   f"{rows_lib.hyper_parameters(row['config'])} |")
    parts.append("\n".join(lines) + "\n")
  return "\n".join(parts)


def method_panels(runs, root):
  """The figure's panels (figure.method_figure) in percent."""
  return [{"title": pair["title"],
           "baseline": (100 * np.mean(pair["baseline"]["test"]),
                        100 * rows_lib.std(pair["baseline"]["test"])),
           "rows": [(f"{_method_label(r['config'])} (n={r['seeds']})", 100 * np.mean(r["test"]),
                     100 * rows_lib.std(r["test"])) for r in pair["rows"]]}
          for pair in method_pairs(runs, root)]
