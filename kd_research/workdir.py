"""Run directories: what identifies a run, refusing to mix runs, and finished-run detection.

A run's identity is the part of the config that changes its result (data, model,
optimisation, distillation, teachers). Fields that do not (strategy, replica
count, logging and checkpoint frequency) may change between a run and its resume,
which is how a run started on one device can finish on several.
"""

import os
import shutil

from kd_research import config as config_lib
from kd_research import io_utils
from kd_research.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
_IDENTITY_FIELDS = ("dataset", "validation_size", "validation_seed", "train_size", "test_size",
                    "global_batch_size", "mixed_precision", "deterministic", "optimizer", "augment")


def run_identity(config, role, teacher_paths=()):
  """The dict stored as config.json and compared on resume."""
  entry = config.teacher if role == "teacher" else config.student
  identity = {field: config[field] for field in _IDENTITY_FIELDS}
  identity["optimizer"] = config.optimizer.to_dict()
  identity["augment"] = config.augment.to_dict()
  if config.mixed_precision == "fp16":
    identity["loss_scale"] = {"initial": config.loss_scale_initial,
                              "growth_steps": config.loss_scale_growth_steps}
  identity["role"] = role
  identity["model"] = entry.to_dict()
  identity["model"].pop("path", None)
  if role == "distill":
    identity["distill"] = config.distill.to_dict()
    # Where the cache lives and whether a weak teacher is allowed never change a result.
    identity["distill"].pop("cache_dir", None)
    identity["distill"].pop("allow_weak_teacher", None)
    identity["teachers"] = [os.path.realpath(p) for p in teacher_paths]
  return identity


def diff(old, new):
  """Flattened fields whose values differ: {field: (old, new)}."""
  a, b = config_lib.flatten(old), config_lib.flatten(new)
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def prepare(workdir, identity, overwrite=False, write=True):
  """Checks ``workdir`` against ``identity``; returns finished results or None.

  Raises UserError when the workdir holds a different run (listing the differing
  fields) unless ``overwrite``, which clears it. Writes config.json atomically.
  """
  if write:
    io_utils.check_writable(workdir)
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(config_path):
    differences = diff(io_utils.read_json(config_path), identity)
    if differences and not overwrite:
      lines = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in differences.items())
      raise UserError(f"Workdir {workdir} holds a run with a different config ({lines}). "
                      "Use a new --workdir, or pass --overwrite to discard that run.")
    if differences and write:
      clear(workdir)
  results_path = os.path.join(workdir, RESULTS_FILE)
  if os.path.exists(results_path) and not overwrite:
    return io_utils.read_json(results_path)
  if overwrite and write:
    clear(workdir)
  if write:
    io_utils.atomic_write_json(config_path, identity)
  return None


def clear(workdir):
  """Removes everything a run wrote into ``workdir`` (used only with --overwrite)."""
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
