"""Command-line entry: parses absl flags, builds the config, and calls the library.

    python -m kd_research.main COMMAND --experiment=NAME[:ARG] --workdir=DIR [--config.x=y ...]

Commands: train (one model on labels; --role=teacher|student), distill (student
from config.teacher.path), pipeline (teacher -> baseline -> distilled, with the
results table), eval (a finished run's model on the test split), export (SavedModel
and TFLite float32/float16/int8, verified). This is the only module that reads FLAGS.
"""

import ast
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging

COMMANDS = ("train", "distill", "pipeline", "eval", "export", "keras_peer")
# Experiments renamed since runs were recorded with them (their command.txt files).
RENAMED_EXPERIMENTS = {"cifar10_seed": "cifar10_article"}
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXPERIMENTS = os.path.join(_REPO, "experiments")

flags.DEFINE_string("experiment", None, "Experiment module under experiments/, optionally with "
                    "a preset: fashion_mnist:quick. Alternative to --config=PATH.py:ARG.")
flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, TensorBoard "
                    "events, results. Rerunning the same command resumes here.")
flags.DEFINE_enum("role", "student", ("teacher", "student"), "For 'train': which model of the "
                  "config to train on labels only.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's and the libraries' INFO and WARNING "
                  "lines with absl's full prefixes (quiet by default: the run's own lines).")
flags.DEFINE_bool("plan", False, "For 'pipeline': write the campaign as WORKDIR/plan.json "
                  "(independent jobs with dependencies, for `./launch.sh slurm`) instead of "
                  "running it.")
flags.DEFINE_bool("overwrite", False, "Discard a different or finished run in --workdir.")
flags.DEFINE_enum("keras_kl", "default", ("default", "instance"), "For 'keras_peer': Keras' "
                  "LogitsDistillation loss as a user calls it (default) or with a "
                  "keras.losses.KLDivergence() instance (Hinton's loss; kd_research/keras_peer.py).")


def experiment_names():
  """Experiment modules available under experiments/."""
  return sorted(f[:-3] for f in os.listdir(_EXPERIMENTS)
                if f.endswith(".py") and not f.startswith("_"))


def experiment_presets(name):
  """The PRESETS tuple an experiment module declares (read from its source, not imported)."""
  with open(os.path.join(_EXPERIMENTS, name + ".py")) as f:
    tree = ast.parse(f.read())
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], "id", None) == "PRESETS"):
      return tuple(ast.literal_eval(node.value))
  return ()


def _usage_error(message):
  """Prints one paragraph and exits with status 2, like every other usage error."""
  sys.stderr.write(f"error: {' '.join(message.split())}\n")
  sys.exit(2)


def _experiment_to_config_flag(argv):
  """Rewrites --experiment=NAME[:ARG] into ml_collections' --config=experiments/NAME.py[:ARG]."""
  out, spec = [], None
  for arg in argv:
    if arg.startswith("--experiment="):
      spec = arg.split("=", 1)[1]
    else:
      out.append(arg)
  if spec is None and not any(a.startswith("--config=") for a in argv):
    spec = "fashion_mnist:quick"
  if spec is not None:
    name, _, preset = spec.partition(":")
    name = RENAMED_EXPERIMENTS.get(name, name)
    spec = name + (f":{preset}" if preset else "")
    if name not in experiment_names():
      _usage_error(f"unknown experiment {name!r}; valid: {', '.join(experiment_names())}.")
    presets = experiment_presets(name)
    if preset and preset not in presets:
      _usage_error(f"unknown preset {preset!r} for experiment {name} (--experiment={spec}); "
                   f"valid presets: {', '.join(presets) or 'none, this experiment takes no preset'}.")
    out.insert(1, f"--config={os.path.join(_EXPERIMENTS, name + '.py')}"
               + (f":{preset}" if preset else ""))
    out.insert(1, f"--experiment={spec}")
  return out


def _run(command, config, workdir):
  # Imported here so that --help works fast and TF starts only after flag parsing.
  from kd_research.runtime import distribute
  from kd_research.train import evaluation
  from kd_research.campaign import pipeline
  from kd_research.train import end_to_end
  from kd_research.train import workdir as workdir_lib

  if command == "export":
    config.distribution.strategy = "default"  # Export runs on one device.
  # Before any other TF op: collective ops (multi-worker) must be configured at startup.
  strategy = distribute.make_strategy(config.distribution)
  overwrite = flags.FLAGS.overwrite
  if command == "train":
    results = end_to_end.train_and_evaluate(config, workdir, flags.FLAGS.role, strategy,
                                            overwrite=overwrite)
  elif command == "distill":
    results = end_to_end.train_and_evaluate(config, workdir, "distill", strategy,
                                            teacher_paths=(config.teacher.path,),
                                            overwrite=overwrite)
  elif command == "keras_peer":
    from kd_research.tools import keras_peer  # pylint: disable=g-import-not-at-top
    results = keras_peer.train_and_evaluate(config, workdir, config.teacher.path, overwrite,
                                            flags.FLAGS.keras_kl)
  elif command == "export":
    from kd_research.tools import export  # pylint: disable=g-import-not-at-top
    report = export.export_run(workdir, workdir_lib.splits_of_run(config, workdir))
    from kd_research.report import tables  # pylint: disable=g-import-not-at-top
    print(tables.export_table(report))
    return
  elif command == "pipeline" and flags.FLAGS.plan:
    from kd_research.campaign import plan as plan_lib  # pylint: disable=g-import-not-at-top
    path = plan_lib.write_plan(config, workdir, " ".join(sys.argv[1:]))
    print(plan_lib.summary(plan_lib.read_plan(path)))
    print(f"plan: {path}\nsubmit it: ./launch.sh slurm --plan={workdir} "
          "[--sbatch=\"--partition=... --gres=gpu:1\"]")
    return
  elif command == "pipeline":
    results, _ = pipeline.run(config, workdir, strategy, overwrite=overwrite)
    from kd_research.report import tables  # pylint: disable=g-import-not-at-top
    print(f"\n{config.run.experiment or 'pipeline'} on {config.dataset}:\n"
          f"{tables.terminal_summary(results)}\n")
    print(f"Files: {os.path.join(workdir, 'results.md')} (the full table: validation, "
          "latency, int8 TFLite, commands);\n  one directory per run below "
          f"{workdir} (model.keras, export/, results.json, TensorBoard events);\n"
          f"  ./launch.sh tensorboard --logdir={workdir}")
    return
  else:
    results = evaluation.evaluate_saved_run(config, workdir, strategy)
  print(f"{command}: test accuracy {100 * results['test_accuracy']:.2f}% over "
        f"{results['test_count']} examples; results in {workdir}")


def _record_command(workdir):
  """Writes the command line that produced the run into WORKDIR/command.txt (for reports)."""
  from kd_research.common import fileio
  args = [a for a in sys.argv[1:] if not a.startswith("--config=")]
  fileio.record_command(workdir, "./launch.sh " + " ".join(args))


def main(argv):
  from ml_collections import config_flags  # pylint: disable=unused-import
  from kd_research.common.errors import PREEMPTED_EXIT_STATUS
  from kd_research.common.errors import Preempted
  from kd_research.common.errors import UserError

  if len(argv) != 2 or argv[1] not in COMMANDS:
    sys.stderr.write(f"usage: python -m kd_research.main {{{'|'.join(COMMANDS)}}} "
                     "--experiment=NAME[:ARG] --workdir=DIR [--config.x=y ...]\n")
    sys.exit(2)
  if not flags.FLAGS.workdir:
    sys.stderr.write("error: --workdir is required (the run directory).\n")
    sys.exit(2)
  from kd_research.common import console  # pylint: disable=g-import-not-at-top
  console.configure(flags.FLAGS.verbose)
  config = flags.FLAGS.config
  config.run.experiment = flags.FLAGS.experiment or flags.FLAGS["config"].config_filename
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  peer_errors = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
  try:
    from kd_research import run_spec  # pylint: disable=g-import-not-at-top
    run_spec.parse(config)  # Nothing is written for a config that cannot run.
    if argv[1] in ("train", "distill", "pipeline"):
      _record_command(flags.FLAGS.workdir)
    _run(argv[1], config, flags.FLAGS.workdir)
  except UserError as e:
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
  except Preempted as e:
    sys.stderr.write(f"preempted: {e}\n")
    sys.exit(PREEMPTED_EXIT_STATUS)
  except peer_errors as e:
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    sys.stderr.write(
        f"error: a worker failed or became unreachable ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]}). The chief's last checkpoint in "
        f"{flags.FLAGS.workdir} is intact; restart every worker with the same command to "
        "resume from it.\n")
    sys.exit(1)


def _override_message(error, overrides):
  """'--config.distil.alpha=0.5: no config field 'distil' (did you mean 'distill'?) ...'."""
  hint = re.search(r'Did you mean \W*"(\w+)\W*" instead of \W*"(\w+)', error)
  names = re.findall(r"'(\w+)'", error.replace("\\'", "'"))
  field = hint.group(2) if hint else (names[0] if names else "")
  culprit = next((o for o in overrides if field and
                  field in o.split("=", 1)[0].split(".")), ", ".join(overrides))
  suggestion = f" (did you mean {hint.group(1)!r}?)" if hint else ""
  return (f"{culprit or 'a --config override'}: the config has no field {field!r}{suggestion}. "
          "Every field is declared in kd_research/config.py (base_config); "
          "`./launch.sh train --helpfull` lists them as --config.* flags.")


def _parse_flags(argv):
  """absl's flag parsing, with config errors (bad override key or value, bad preset)
  reported as one paragraph and exit status 2 instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    # ml_collections wraps errors raised while loading the config file with their
    # traceback; the last line holds the message.
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    section = re.search(r"flag (--config\.[\w.]+)=\S*: Failed to parse .* as a ConfigDict", str(e))
    if section:  # A scalar given for a section such as a schedule.
      _usage_error(f"{section.group(1)} is a group of fields, not a value: set one of its "
                   f"fields, e.g. {section.group(1)}.start=... for a schedule (kind, start, end, "
                   "warmup_steps, warmup_from, boundaries, values); `./launch.sh train "
                   "--helpfull` lists every field.")
    detail = lines[-1] if lines else str(e)
    for prefix in ("UserError: ", "ValueError: ", "KeyError: ", "AttributeError: "):
      detail = detail.split(prefix, 1)[-1]
    _usage_error(f"{lines[0] if len(lines) > 1 and not lines[0].startswith('flag --config=') else ''} "
                 f"{detail}".strip() + " (`./launch.sh train --helpfull` lists every flag)")
  except (KeyError, AttributeError, TypeError, ValueError) as e:
    # ml_collections raises these for --config.<path> overrides naming no field.
    _usage_error(_override_message(str(e), [a for a in argv if a.startswith("--config.")]))


def report_command(argv):
  """``report --workdir=DIR [--output=F] [--sweep=DIR] [--claims=EXP] [--figure=F.svg]``,
  or ``report --curves=DIR --output=F`` (validation curves, one column per subdirectory):
  exit status."""
  from kd_research.report import pages  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  usage = ("usage: report --workdir=DIR [--output=FILE] [--sweep=DIR] "
           "[--claims=EXPERIMENT] [--figure=FILE.svg]\n"
           "       report --curves=DIR --output=FILE\n")
  values = _parse_tool_flags(argv, dict(workdir=None, output=None, sweep=None, claims=None,
                                        figure=None, curves=None), usage)
  if values is None:
    return 2
  if values["curves"]:
    return _curves_report(values, "./launch.sh report " + " ".join(argv), usage)
  if not values["workdir"]:
    sys.stderr.write("error: --workdir=DIR is required (a directory of runs).\n" + usage)
    return 2
  try:
    claims = RENAMED_EXPERIMENTS.get(values["claims"], values["claims"])
    text = pages.generate(values["workdir"], values["output"], values["sweep"], claims,
                          "./launch.sh report " + " ".join(argv), values["figure"])
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    return 1 if "no finished runs" in str(e) else 2
  print(text)
  return 0


def _curves_report(values, command, usage):
  """``report --curves=DIR --output=FILE``: the curve comparison page; exit status."""
  from kd_research.common import fileio  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  from kd_research.report import curves  # pylint: disable=g-import-not-at-top
  others = [f"--{k}" for k in ("workdir", "sweep", "claims", "figure") if values[k]]
  if others or not values["output"] or not os.path.isdir(values["curves"]):
    sys.stderr.write(f"error: --curves=DIR (an existing directory; got {values['curves']!r}) "
                     "takes --output=FILE and no "
                     f"{', '.join(others) or '--workdir/--sweep/--claims/--figure'}.\n{usage}")
    return 2
  try:
    text = curves.comparison_page(values["curves"], command)
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  fileio.atomic_write_text(values["output"], text)
  print(text)
  return 0


def multiworker_command(argv):
  """``multiworker --num_workers=N COMMAND [flags]``: N local workers; exit status."""
  from kd_research.runtime import multiworker  # pylint: disable=g-import-not-at-top
  usage = "usage: ./launch.sh multiworker --num_workers=N COMMAND [flags]\n"
  own = [a for a in argv if a.startswith("--num_workers=")]
  rest = [a for a in argv if not a.startswith("--num_workers=")]
  values = _parse_tool_flags(own, dict(num_workers=""), usage)
  if values is None:
    return 2
  if not values["num_workers"].isdigit() or int(values["num_workers"]) < 1 or not rest:
    sys.stderr.write("error: --num_workers must be a positive integer and a command must "
                     f"follow.\n{usage}")
    return 2
  return multiworker.launch(int(values["num_workers"]), rest)


def _parse_tool_flags(argv, defaults, usage):
  """absl parsing of a tool's own string flags (a FlagValues of its own): {name: value}, or
  None after printing a usage error."""
  values = flags.FlagValues()
  for name, default in defaults.items():
    flags.DEFINE_string(name, default, name, flag_values=values)
  try:
    rest = values(["tool"] + list(argv))
  except flags.Error as e:
    sys.stderr.write(f"error: {e}\n{usage}")
    return None
  if len(rest) > 1:
    sys.stderr.write(f"error: unexpected {' '.join(rest[1:])}\n{usage}")
    return None
  return {name: values[name].value for name in defaults}


def job_command(argv):
  """``job --plan=P (--job=ID | --group=G --task=N)``: one job of a campaign plan; exit status."""
  from kd_research.campaign import plan as plan_lib  # pylint: disable=g-import-not-at-top
  from kd_research.common import console  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  usage = "usage: job --plan=WORKDIR|PLAN.json (--job=ID | --group=NAME --task=N)\n"
  values = _parse_tool_flags(argv, dict(plan=None, job=None, group=None, task=None), usage)
  if values is None or not values["plan"] or not (values["job"] or values["group"]):
    sys.stderr.write("" if values is None else "error: --plan and --job or --group are "
                     "required.\n" + usage)
    return 2
  console.configure(console.verbose_requested())
  try:
    plan = plan_lib.read_plan(values["plan"])
    job = values["job"] or plan_lib.job_of_task(plan, values["group"], int(values["task"] or 0))
    result = plan_lib.run_job(plan, job)
  except (UserError, ValueError) as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  print(result if isinstance(result, str) else
        f"job {job}: test accuracy {100 * result['test_accuracy']:.2f}%")
  return 0


def slurm_command(argv):
  """``slurm --plan=P [--sbatch="ARGS"]``: submits what is left of a plan; exit status."""
  import shlex  # pylint: disable=g-import-not-at-top
  from kd_research.campaign import slurm  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  usage = 'usage: ./launch.sh slurm --plan=WORKDIR|PLAN.json [--sbatch="--partition=..."]\n'
  values = _parse_tool_flags(argv, dict(plan=None, sbatch=""), usage)
  if values is None or not values["plan"]:
    sys.stderr.write("" if values is None else "error: --plan is required.\n" + usage)
    return 2
  try:
    submitted = slurm.submit(values["plan"], shlex.split(values["sbatch"]))
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    return 1
  for group, job_id, tasks in submitted:
    print(f"{group}: Slurm job {job_id}, {len(tasks)} task(s)")
  if not submitted:
    print("nothing left to run: every job of the plan has finished.")
  return 0


TOOLS = {"report": report_command, "multiworker": multiworker_command, "job": job_command,
         "slurm": slurm_command}


def run():
  """Console entry point (also used by ``python -m kd_research.main``)."""
  from kd_research.common import console  # pylint: disable=g-import-not-at-top
  tool = len(sys.argv) > 1 and sys.argv[1] in TOOLS
  # An unknown experiment or preset is named before TensorFlow loads (seconds).
  argv = sys.argv if tool else _experiment_to_config_flag(sys.argv)
  asks_help = {"-h", "--help", "--helpfull"} & set(sys.argv)
  if len(sys.argv) > 1 and sys.argv[1] in COMMANDS + ("job", "report", "slurm") and not asks_help:
    # Before the experiment's config imports it: quiet unless --verbose.
    console.import_tensorflow(console.verbose_requested(sys.argv))
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file and preset, "
                                  "e.g. experiments/fashion_mnist.py:quick.", lock_config=True)
  if tool:  # Tools with their own flags.
    sys.exit(TOOLS[sys.argv[1]](sys.argv[2:]))
  try:
    app.run(main, argv=argv, flags_parser=_parse_flags)
  except SystemExit as e:
    # absl exits 1 after printing --help/--helpfull; asking for help is not an error.
    if e.code == 1 and any(a in ("--help", "--helpfull", "--helpshort", "-h") for a in argv):
      sys.exit(0)
    raise


if __name__ == "__main__":
  run()
