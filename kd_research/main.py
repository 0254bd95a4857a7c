"""Command-line entry: parses absl flags, builds the config, and calls the library.

    python -m kd_research.main COMMAND --experiment=NAME[:ARG] --workdir=DIR [--config.x=y ...]

Commands: train (one model on labels; --role=teacher|student), distill (student
from config.teacher.path), pipeline (teacher -> baseline -> distilled, with the
results table), eval (a finished run's model on the test split), export (SavedModel
and TFLite float32/float16/int8, verified). This is the only module that reads FLAGS.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

COMMANDS = ("train", "distill", "pipeline", "eval", "export")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_EXPERIMENTS = os.path.join(_REPO, "experiments")

flags.DEFINE_string("experiment", None, "Experiment module under experiments/, optionally with "
                    "a preset: fashion_mnist:quick. Alternative to --config=PATH.py:ARG.")
flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, TensorBoard "
                    "events, results. Rerunning the same command resumes here.")
flags.DEFINE_enum("role", "student", ("teacher", "student"), "For 'train': which model of the "
                  "config to train on labels only.")
flags.DEFINE_bool("overwrite", False, "Discard a different or finished run in --workdir.")


def experiment_names():
  """Experiment modules available under experiments/."""
  return sorted(f[:-3] for f in os.listdir(_EXPERIMENTS)
                if f.endswith(".py") and not f.startswith("_"))


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
    if name not in experiment_names():
      sys.stderr.write(f"error: unknown experiment {name!r}; valid: "
                       f"{', '.join(experiment_names())}.\n")
      sys.exit(2)
    out.insert(1, f"--config={os.path.join(_EXPERIMENTS, name + '.py')}"
               + (f":{preset}" if preset else ""))
    out.insert(1, f"--experiment={spec}")
  return out


def _run(command, config, workdir):
  # Imported here so that --help works fast and TF starts only after flag parsing.
  from kd_research import config as config_lib
  from kd_research import distribute
  from kd_research import loop
  from kd_research import pipeline
  from kd_research import run_eval

  config_lib.validate(config)
  if command == "export":
    config.strategy = "default"  # Export runs on one device.
  strategy = distribute.make_strategy(config)  # Before any other TF op (TF_NOTES).
  overwrite = flags.FLAGS.overwrite
  if command == "train":
    results = loop.train_and_evaluate(config, workdir, flags.FLAGS.role, strategy,
                                      overwrite=overwrite)
  elif command == "distill":
    results = loop.train_and_evaluate(config, workdir, "distill", strategy,
                                      teacher_paths=(config.teacher.path,), overwrite=overwrite)
  elif command == "export":
    from kd_research import export  # pylint: disable=g-import-not-at-top
    report = export.export_run(workdir, export.splits_for_run(config, workdir))
    print(export.report_table(report))
    return
  elif command == "pipeline":
    _, table = pipeline.run(config, workdir, strategy, overwrite=overwrite)
    print(table)
    return
  else:
    results = run_eval.evaluate_run(config, workdir, strategy)
  print(f"{command}: test accuracy {100 * results['test_accuracy']:.2f}% over "
        f"{results['test_count']} examples; results in {workdir}")


def _record_command(workdir):
  """Writes the command line that produced the run into WORKDIR/command.txt (for reports)."""
  from kd_research import io_utils
  args = [a for a in sys.argv[1:] if not a.startswith("--config=")]
  io_utils.atomic_write_text(os.path.join(workdir, "command.txt"),
                             "./launch.sh " + " ".join(args) + "\n")


def main(argv):
  from ml_collections import config_flags  # pylint: disable=unused-import
  from kd_research.errors import UserError

  if len(argv) != 2 or argv[1] not in COMMANDS:
    sys.stderr.write(f"usage: python -m kd_research.main {{{'|'.join(COMMANDS)}}} "
                     "--experiment=NAME[:ARG] --workdir=DIR [--config.x=y ...]\n")
    sys.exit(2)
  if not flags.FLAGS.workdir:
    sys.stderr.write("error: --workdir is required (the run directory).\n")
    sys.exit(2)
  config = flags.FLAGS.config
  config.experiment = flags.FLAGS.experiment or flags.FLAGS["config"].config_filename
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  peer_errors = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)
  try:
    _run(argv[1], config, flags.FLAGS.workdir)
    if argv[1] in ("train", "distill", "pipeline"):
      _record_command(flags.FLAGS.workdir)
  except UserError as e:
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    sys.stderr.write(f"error: {e}\n")
    sys.exit(1)
  except peer_errors as e:
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    sys.stderr.write(
        f"error: a worker failed or became unreachable ({type(e).__name__}: "
        f"{str(e).splitlines()[0][:300]}). The chief's last checkpoint in "
        f"{flags.FLAGS.workdir} is intact; restart every worker with the same command to "
        "resume from it.\n")
    sys.exit(1)


def run():
  """Console entry point (also used by ``python -m kd_research.main``)."""
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "Experiment config file and preset, "
                                  "e.g. experiments/fashion_mnist.py:quick.", lock_config=True)
  argv = _experiment_to_config_flag(sys.argv)
  try:
    app.run(main, argv=argv)
  except SystemExit as e:
    # absl exits 1 after printing --help/--helpfull; asking for help is not an error.
    if e.code == 1 and any(a in ("--help", "--helpfull", "--helpshort", "-h") for a in argv):
      sys.exit(0)
    raise


if __name__ == "__main__":
  run()
