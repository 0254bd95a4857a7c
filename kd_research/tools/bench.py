"""Distillation throughput benchmark: the seed's Keras-fit Distiller vs our loop, one process.

    python -m kd_research.tools.bench [--quick] [--rows=a,b,...] [--batch=128] [--steps=N] ...

Rows (same models, data and batch): (a) keras.Model Distiller with overridden train_step,
trained by fit (the reference); (b) our loop, float32, live teacher; (c) (b) + XLA;
(d) (b) + mixed bfloat16; (e) (b) + teacher-output cache; (f) the best combination;
(g) student-only training; (h) 3 teachers live; (i) 3 teachers cached; (j) Keras' own
keras.distillation.Distiller with LogitsDistillation (Keras >= 3.12), trained by fit;
(k) (b) with flip + crop augmentation; (l) (k) from the teacher cache of its augmented views
(its one-off build time is printed apart); (m) (g) with flip + crop.
Each figure is the median examples/second over several timed windows after warm-up.
GFLOP/s counts convolution and dense FLOPs per example (student forward + backward = 3x
forward, plus the teachers' forward when live) against a measured 2048^2 matmul peak.
"""

import os
import sys

from absl import app
from absl import flags

from kd_research.common import machine
from kd_research.tools import bench_runs

flags.DEFINE_bool("quick", False, "Fewer and shorter windows: about a minute in total.")
flags.DEFINE_string("rows", "a,b,c,d,e,f,g,h,i,j", "Which rows to run.")
flags.DEFINE_string("teacher", "resnet_article", "Teacher model.")
flags.DEFINE_integer("teacher_width", 32, "Teacher width.")
flags.DEFINE_string("student", "cnn_article", "Student model.")
flags.DEFINE_integer("student_width", 32, "Student width.")
flags.DEFINE_integer("batch", 128, "Batch size.")
flags.DEFINE_integer("window", 20, "Steps per timed window.")
flags.DEFINE_integer("windows", 5, "Timed windows per row (median taken).")
flags.DEFINE_string("dataset", "fashion_mnist", "fashion_mnist or synthetic.")
flags.DEFINE_integer("examples", 0, "Use only this many training examples (0 = all; --quick: "
                     "2048). The teacher cache is computed over them.")
flags.DEFINE_string("output", "runs/bench.json", "Where the JSON goes.")
flags.DEFINE_integer("replicas", 1, "Replicas for our loop's rows: > 1 runs them under "
                     "MirroredStrategy over that many logical CPU devices (GPUs when present); "
                     "the batch stays global.")
flags.DEFINE_string("methods", "", "Also one row per distillation method (comma-separated, e.g. "
                    "kd,dkd,dist,fitnets,at,rkd,pkt,sp): examples/s with a live teacher, "
                    "relative to kd, same models; a row may add modifiers: kd+ctkd, dkd+ls, "
                    "kd+sgd, kd+dot (DOT's SGD); uskd: a teacher-free student row; "
                    "--profile=NAME traces that method's window.")
flags.DEFINE_bool("data", False, "Also the input-pipeline rows: each source's examples/s on "
                  "one core, streamed vs in-memory training, the JPEG pipeline vs raw decode "
                  "(tools/bench_data.py); --rows= (empty) runs them alone.")
flags.DEFINE_integer("memory_examples", 0, "Also train one epoch on this many generated "
                     "records streamed from TFRecord shards and print the resident memory over "
                     "the run (the data issue asks for >= 1,000,000).")
flags.DEFINE_string("profile", "", "Also trace one window of this row (b-i) with the TF profiler "
                    "and print where the time goes per op type (trace kept next to --output).")

ROW_NAMES = {
    "a": "Keras fit Distiller (seed), fp32", "b": "our loop, fp32, live teacher",
    "c": "our loop + XLA jit", "d": "our loop + mixed bf16", "e": "our loop + teacher cache",
    "f": "best combination", "g": "student only (floor)", "h": "our loop, 3 teachers live",
    "i": "our loop, 3 teachers cached", "j": "keras.distillation Distiller (fit), fp32",
    "k": "augmented (flip, crop), live teacher", "l": "augmented, cached views",
    "m": "augmented, student only (floor)",
    "n": "DML cohort of 2 students (no teacher; vs g)",
}


def _measure_methods(opts, strategy, profile_dir, profiles):
  """[{'method', 'examples_per_second', 'ratio_to_kd'}] for --methods (kd measured too)."""
  names = [m.strip() for m in opts.methods.split(",") if m.strip()]
  for name in names:
    bench_runs.method_overrides(name)  # Unknown names fail before any measurement.
  x, y, classes = bench_runs.training_arrays(opts, opts.batch)
  rates = {}
  for name in (["kd"] if "kd" not in names else []) + names:
    rates[name], table = bench_runs.run_method(opts, x, y, classes, name, strategy,
                                    profile_dir if name == opts.profile else None)
    if table:
      profiles[name] = table
    print(f"  measured method {name}: {rates[name]:.0f} examples/s", flush=True)
  return [{"method": n, "examples_per_second": rates[n], "ratio_to_kd": rates[n] / rates["kd"]}
          for n in rates]


OPTIONS = {"b": {}, "c": {"jit": True}, "d": {"precision": "bf16"}, "e": {"cache": True},
           "g": {"student_only": True}, "h": {"teachers": 3},
           "i": {"teachers": 3, "cache": True}, "k": {"augment": True},
           "l": {"augment": True, "cache": True}, "m": {"augment": True, "student_only": True},
           "n": {"student_only": True, "cohort": 2}}


def _check_rows(opts):
  """The rows to run, or None after printing a usage error."""
  rows = [r.strip() for r in opts.rows.split(",") if r.strip()]
  unknown = [r for r in rows if r not in ROW_NAMES]
  if unknown:
    sys.stderr.write(f"error: unknown rows {unknown}; valid: {', '.join(ROW_NAMES)}.\n")
    return None
  method_rows = [m.strip() for m in opts.methods.split(",") if m.strip()]
  if opts.profile and opts.profile not in method_rows and (
      opts.profile not in rows or opts.profile in "afj"):
    sys.stderr.write(f"error: --profile={opts.profile!r} must be one of the measured rows of our "
                     f"loop ({', '.join(r for r in rows if r not in 'afj')}) or of --methods.\n")
    return None
  return rows


def _measure(opts, rows, strategy, profile_dir):
  """{row: (examples/s, student FLOPs, teacher FLOPs, options)} and {row: op-time table}."""
  x, y, classes = bench_runs.training_arrays(opts, opts.batch)
  measured, profiles = {}, {}
  for row in [r for r in rows if r != "f"]:
    if row in "aj":
      fit_row = bench_runs.run_fit_distiller if row == "a" else bench_runs.run_keras_distiller
      rate, s_flops, t_flops = fit_row(opts, x, y, classes)
    else:
      rate, s_flops, t_flops, table = bench_runs.run_our_loop(
          opts, x, y, classes, profile_dir=profile_dir if row == opts.profile else None,
          strategy=strategy, **OPTIONS[row])
      if table:
        profiles[row] = table
    measured[row] = (rate, s_flops, t_flops, OPTIONS.get(row, {}))
    print(f"  measured ({row}) {ROW_NAMES[row]}: {rate:.0f} examples/s", flush=True)
  if "f" in rows:
    best = {"cache": True}
    if "c" in measured and "b" in measured and measured["c"][0] > measured["b"][0]:
      best["jit"] = True
    if "d" in measured and "b" in measured and measured["d"][0] > measured["b"][0]:
      best["precision"] = "bf16"
    rate, s_flops, t_flops, _ = bench_runs.run_our_loop(opts, x, y, classes, strategy=strategy, **best)
    measured["f"] = (rate, s_flops, t_flops, best)
  return measured, profiles


def _rows(measured, peaks):
  """One dict per measured row: examples/s, ratio to (a), GFLOP/s and share of the peak."""
  reference = measured.get("a", (None,))[0]
  rows = []
  for row in [r for r in ROW_NAMES if r in measured]:
    rate, s_flops, t_flops, row_opts = measured[row]
    live_teacher = not row_opts.get("cache") and not row_opts.get("student_only")
    gflops = rate * (3 * s_flops + (t_flops if live_teacher else 0)) / 1e9
    peak = peaks["bfloat16" if row_opts.get("precision") == "bf16" else "float32"]
    rows.append({"row": row, "name": ROW_NAMES[row] + (f" {row_opts}" if row == "f" else ""),
                 "examples_per_second": rate,
                 "ratio_to_a": rate / reference if reference else float("nan"),
                 "gflops": gflops, "peak_share": gflops / peak})
  return rows


def main(argv):
  del argv
  opts = flags.FLAGS  # The one place this command reads its flags; helpers get ``opts``.
  if opts.quick:
    opts.window, opts.windows = 4, 2
    opts.examples = opts.examples or 2048
  rows = _check_rows(opts)
  if rows is None:
    return 2
  strategy = None
  if opts.replicas > 1:  # Before any other TF op: logical devices are fixed at start-up.
    import ml_collections  # pylint: disable=g-import-not-at-top
    from kd_research.runtime import distribute  # pylint: disable=g-import-not-at-top
    strategy = distribute.make_strategy(ml_collections.ConfigDict(dict(
        strategy="mirrored", num_cpu_devices=opts.replicas, cross_device_ops="auto")))
  from kd_research.common import fileio  # pylint: disable=g-import-not-at-top
  from kd_research.runtime import precision  # pylint: disable=g-import-not-at-top
  from kd_research.report import tables  # pylint: disable=g-import-not-at-top
  auto = precision.choose("auto")
  print(f"mixed_precision=auto would use {auto.used} on this machine: {auto.reason}.", flush=True)
  peaks = {"float32": bench_runs.matmul_peak("float32"), "bfloat16": bench_runs.matmul_peak("bfloat16")}
  profile_dir = os.path.join(os.path.dirname(os.path.abspath(opts.output)), "bench_profile")
  measured, profiles = _measure(opts, rows, strategy, profile_dir)
  report = {"batch": opts.batch, "teacher": f"{opts.teacher} w{opts.teacher_width}",
            "student": f"{opts.student} w{opts.student_width}", "replicas": opts.replicas,
            "matmul_peak_gflops": peaks, "auto_precision": auto.as_dict(),
            "machine": machine.describe(), "profiles": profiles}
  report["rows"] = _rows(measured, peaks)
  report["table"] = tables.bench_table(report["rows"])
  if opts.methods:
    report["methods"] = _measure_methods(opts, strategy, profile_dir, profiles)
    report["methods_table"] = tables.method_bench_table(report["methods"])
  if opts.data:
    from kd_research.tools import bench_data  # pylint: disable=g-import-not-at-top
    report["data"] = bench_data.measure(opts)
    report["data_table"] = tables.data_bench_table(report["data"])
  if opts.memory_examples:
    from kd_research.tools import bench_data  # pylint: disable=g-import-not-at-top
    report["memory"] = bench_data.memory_curve(opts.memory_examples)
    report["memory_table"] = tables.memory_table(report["memory"])
  print(f"\n{machine.summary(report['machine'])}; mixed_precision=auto -> {auto.used}")
  print(f"batch {opts.batch}, {opts.replicas} replica(s), teacher {report['teacher']}, student "
        f"{report['student']}; matmul peak {peaks['float32']:.0f} GFLOP/s fp32, "
        f"{peaks['bfloat16']:.0f} bf16\n")
  if report["rows"]:
    print(report["table"])
  if opts.methods:
    print(f"\ndistillation methods, live teacher, relative to kd:\n\n{report['methods_table']}")
  if opts.data:
    print(f"\ninput pipeline (one core = a tf.data pool of one thread):\n\n"
          f"{report['data_table']}")
  if opts.memory_examples:
    print(f"\nresident memory, one epoch streamed:\n\n{report['memory_table']}")
  for row, op_table in profiles.items():
    print(f"\nwhere the time goes in row ({row}), one profiled window of {opts.window} steps "
          f"(trace in {profile_dir}):\n\n{op_table}")
  os.makedirs(os.path.dirname(os.path.abspath(opts.output)), exist_ok=True)
  fileio.atomic_write_json(opts.output, report)
  print(f"\nwritten to {opts.output}")
  return 0


def run(argv):
  """``main`` with a bad flag value or a method that does not fit the models (a UserError)
  reported as one line and exit status 2, not a traceback."""
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  try:
    return main(argv)
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(run(argv)))
