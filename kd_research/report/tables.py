"""Tables of the tools around training runs: the benchmark, its per-method rows and op-time
profiles, and export verification. Reports of runs themselves are in report.py; between
them they render every table of the project."""


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
    lines.append(f"| ({r['row']}) | {r['name']} | {r['examples_per_second']:,.0f} | "
                 f"{r['ratio_to_a']:.2f}x | {r['gflops']:.1f} | {100 * r['peak_share']:.1f}% |")
  return "\n".join(lines)


def method_bench_table(rows):
  """Markdown table of the benchmark's per-method rows (examples/s relative to kd)."""
  lines = ["| method | examples/s | vs kd |", "|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['examples_per_second']:,.0f} | {r['ratio_to_kd']:.2f}x |")
  return "\n".join(lines)

