"""Every Markdown table of the project: runs (from report/rows.py's grouped rows), sweeps,
machines, and the tools' benchmark, per-method, op-time and export tables."""

import collections
import os

import numpy as np

from kd_research.common import machine as machine_lib
from kd_research.report import rows as rows_lib



def export_table(report):
  """Markdown table of an export report (export_report.json)."""
  lines = [f"Keras model: {100 * report['keras_test_accuracy']:.2f}% on "
           f"{report['test_examples']} test images", "",
           "| artifact | size (KB) | test accuracy | agreement with Keras | batch-1 latency (ms) |",
           "|---|---|---|---|---|"]
  for name, a in report["artifacts"].items():
    lines.append(f"| {name} | {a['size_kb']:.1f} | {100 * a['test_accuracy']:.2f}% | "
                 f"{100 * a['agreement_with_keras']:.2f}% | {a['latency_ms_batch1']:.3f} |")
  return "\n".join(lines) + "\n"


def op_time_table(families, top=12):
  """Markdown: op family | seconds | share of op time | kernels, the ``top`` largest first.

  ``families`` is profiling.family_times(...): {family: (seconds, kernel names)}.
  """
  total = sum(s for s, _ in families.values()) or 1.0
  lines = ["| op family | seconds | share of op time | kernels |", "|---|---|---|---|"]
  ranked = sorted(families.items(), key=lambda kv: -kv[1][0])
  for name, (seconds, kernels) in ranked[:top]:
    lines.append(f"| {name} | {seconds:.3f} | {100 * seconds / total:.1f}% | "
                 f"{', '.join(kernels)} |")
  rest = sum(s for _, (s, _) in ranked[top:])
  if rest:
    lines.append(f"| (other {len(ranked) - top} op families) | {rest:.3f} | "
                 f"{100 * rest / total:.1f}% | |")
  return "\n".join(lines) + "\n"


def bench_table(rows):
  """Markdown table of the benchmark's rows (bench.py)."""
  lines = ["| row | configuration | examples/s | vs (a) | GFLOP/s | share of matmul peak |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    ratio = r["ratio_to_a"]  # NaN when row (a) was not run
    vs_a = "-" if ratio != ratio else f"{ratio:.2f}x"
    lines.append(f"| ({r['row']}) | {r['name']} | {r['examples_per_second']:,.0f} | "
                 f"{vs_a} | {r['gflops']:.1f} | {100 * r['peak_share']:.1f}% |")
  return "\n".join(lines)


def method_bench_table(rows):
  """Markdown table of the benchmark's per-method rows (examples/s relative to kd)."""
  lines = ["| method | examples/s | vs kd |", "|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['examples_per_second']:,.0f} | {r['ratio_to_kd']:.2f}x |")
  return "\n".join(lines)

def data_bench_table(data):
  """Markdown tables of the input-pipeline benchmark (tools/bench_data.py)."""
  lines = ["| source | examples/s on one core |", "|---|---|"]
  lines += [f"| {r['source']} | {r['examples_per_second_per_core']:,.0f} |"
            for r in data["sources"]]
  lines += ["", "| training | examples/s |", "|---|---|"]
  lines += [f"| {name} | {rate:,.0f} |" for name, rate in data["training"].items()]
  lines += [f"| {role}: streamed / in memory | {ratio:.3f} |"
            for role, ratio in data["training_ratio"].items()]
  jpeg = data["jpeg"]
  lines += ["", f"| JPEG pipeline ({jpeg['image']}), one core | images/s |", "|---|---|",
            f"| raw tf.io.decode_jpeg | {jpeg['raw_decode_per_core']:,.1f} |",
            f"| decode + inception crop + flip + resize 224 | "
            f"{jpeg['training_pipeline_per_core']:,.1f} |",
            f"| ratio | {jpeg['ratio']:.2f} |",
            f"| cores to feed ResNet-18 at 3,000 images/s | "
            f"{jpeg['cores_for_resnet18_at_3000']:.1f} |"]
  return "\n".join(lines)


def memory_table(memory):
  """Resident memory over one streamed epoch (tools/bench_data.memory_curve)."""
  lines = [f"{memory['examples']:,} examples of {memory['image']}: "
           f"{memory['shard_bytes'] / 1e6:,.0f} MB in shards, "
           f"{memory['decoded_bytes'] / 1e6:,.0f} MB decoded; {memory['steps']:,} steps in "
           f"{memory['seconds']:.0f} s ({memory['examples_per_second']:,.0f} examples/s); "
           f"RSS before the run {memory['rss_before_mb']:,.0f} MB, peak "
           f"{memory['rss_peak_mb']:,.0f} MB", "", "| seconds | RSS MB |", "|---|---|"]
  lines += [f"| {t:.0f} | {r:,} |" for t, r in memory["rss_curve_mb"]]
  return "\n".join(lines)


def _extra(row):
  """' (+192 extra)': parameters of connectors, trained but not exported."""
  return f" (+{row['extra']:,} extra)" if row.get("extra") else ""


def _reference(rows):
  """The best single teacher's mean test accuracy (the 'share of teacher' base), or None."""
  teachers = [np.mean(r["test"]) for r in rows if r["order"] == rows_lib.ROLE_ORDER["teacher"]]
  return max(teachers) if teachers else None


def _fmt(value, spec, unit=""):
  return "-" if value is None else f"{value:{spec}}{unit}"


def build_table(runs, root, commands=True):
  """Markdown table of the grouped runs (and teacher ensembles), teachers first; with
  ``commands``, each row's commands in a last column (a page lists them once instead)."""
  rows = rows_lib.rows(runs, root)
  reference = _reference(rows)
  deployed = any(row.get("deployed") for row in rows)
  lines = ["| setting | seeds | test accuracy | validation accuracy | params | share of teacher "
           "| ms/batch (128) | train time | " + ("int8 TFLite KB | int8 accuracy | "
                                                 "int8 ms (batch 1) | " if deployed else "")
           + "runs |" + (" command |" if commands else ""),
           "|---|---|---|---|---|---|---|---|" + ("---|---|---|" if deployed else "") + "---|"
           + ("---|" if commands else "")]
  for row in rows:
    share = (f"{100 * np.mean(row['test']) / reference:.1f}%" if reference else "-")
    validation = ("-" if None in row["validation"] else rows_lib.mean_std(row["validation"]))
    int8 = row.get("deployed")
    tail = ((f"{int8[0]:.1f} | {100 * int8[1]:.2f}% | {int8[2]:.3f} | " if int8 else
             "- | - | - | ") if deployed else "")
    lines.append(
        f"| {row['label']} | {row['seeds']} | {rows_lib.mean_std(row['test'])} | {validation} | "
        f"{_fmt(row['params'], ',')}{_extra(row)} | {share} | {_fmt(row['ms'], '.1f')} | "
        f"{_fmt(row['train'], '.0f', ' s')} | {tail}{row['dirs']} |"
        + (f" {_commands(row)} |" if commands else ""))
  return "\n".join(lines) + "\n"


def campaign_commands(runs):
  """The distinct commands of the runs as a Markdown list, in first-seen order (a pipeline's
  one command stands for every run it made)."""
  seen = []
  for row in rows_lib.rows(runs, "."):
    for command in row["commands"]:
      if command not in seen:
        seen.append(command)
  return "".join(f"- `{c}`\n" for c in seen) or "- (no command recorded)\n"


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
  rows = rows_lib.rows(runs, root)
  reference = _reference(rows)
  students = [r for r in rows if r["order"] == rows_lib.ROLE_ORDER["student"]]
  baselines = {rows_lib.student_key(r["config"]): r for r in students}
  lines = ["| distilled setting | gain over labels only (points) | combined std (points) "
           "| gain >= 0.5 and > combined std | share of teacher | >= 98% of teacher |",
           "|---|---|---|---|---|---|"]
  found = False
  for row in rows:
    base = baselines.get(rows_lib.student_key(row["config"])) if "config" in row else None
    if row["order"] != rows_lib.ROLE_ORDER["distill"] or base is None:
      continue
    found = True
    gain = 100 * (np.mean(row["test"]) - np.mean(base["test"]))
    spread = rows_lib.combined_spread(row["test"], base["test"])
    share = 100 * np.mean(row["test"]) / reference if reference else None
    if spread is None:  # One seed on a side: no spread to compare the gain with.
      beats, spread_text = "- (one seed: no std)", "- (one seed)"
    else:
      beats, spread_text = ("yes" if gain >= 0.5 and gain > spread else "no"), f"{spread:.2f}"
    lines.append(f"| {row['label']} | {gain:+.2f} | {spread_text} | {beats} | "
                 f"{_fmt(share, '.1f', '%')} | "
                 f"{'-' if share is None else ('yes' if share >= 98 else 'no')} |")
  return "\n".join(lines) + "\n" if found else ""


def machines(runs):
  """The distinct machines of the runs (one line each) and how many runs record none."""
  infos = [run["results"].get("machine") for run in runs]
  seen = collections.Counter(machine_lib.summary(info) for info in infos if info is not None)
  missing = infos.count(None)
  lines = [f"- {line}: {n} run(s)" for line, n in seen.items()]
  if missing:
    lines.append(f"- not recorded (runs from before machine recording): {missing} run(s)")
  return "\n".join(lines) + "\n"


def sweep_table(runs, root, commands=True):
  """Validation-only table of a hyper-parameter sweep, best validation accuracy first (with
  ``commands``, each row's commands in a last column)."""
  lines = ["| setting | seeds | validation accuracy | runs |" + (" command |" if commands else ""),
           "|---|---|---|---|" + ("---|" if commands else "")]
  groups = sorted(rows_lib.groups(runs), key=lambda g: -np.mean(
      [m["results"]["validation_accuracy"] for m in g]))
  for members in groups:
    listed = sorted({m["command"] for m in members if m["command"]})
    lines.append(
        f"| {rows_lib.describe(members[0]['config'])}{rows_lib.budget(members[0]['config'])} "
        f"| {len(members)} "
        f"| {rows_lib.mean_std([m['results']['validation_accuracy'] for m in members])} "
        f"| {', '.join(os.path.relpath(m['dir'], root) for m in members)} |"
        + (f" {'<br>'.join(f'`{c}`' for c in listed) or '-'} |" if commands else ""))
  return "\n".join(lines) + "\n"


def terminal_summary(results):
  """The pipeline's result for a terminal (results.md holds the full table): one row per
  stage, 80 columns wide: test accuracy (mean +- std over seeds), parameters, and for a
  distilled stage its gain over the labels-only student."""
  baseline = results.get("student_baseline", {}).get("test_accuracy")
  lines = [f"{'run':<26} {'test accuracy':>16} {'params':>12}  vs labels only",
           "-" * 78]
  for stage in sorted(results, key=lambda s: (not s.startswith("teacher"), s)):
    row = results[stage]
    if row.get("test_accuracy") is None:
      continue
    std = row.get("test_accuracy_std")
    accuracy = f"{100 * row['test_accuracy']:.2f}%" + (f" +- {100 * std:.2f}" if std else "")
    gain = ""
    if stage.startswith("student_kd") and baseline is not None:
      gain = f"{100 * (row['test_accuracy'] - baseline):+.2f} points"
    lines.append(f"{stage:<26} {accuracy:>16} {row.get('params') or 0:>12,}  {gain}")
  return "\n".join(lines)
