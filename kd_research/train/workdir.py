"""Run directories: what identifies a run, refusing to mix runs, locking, finished runs.

A run's identity is the part of the config that changes its result: the config minus
its ``run``, ``distribution`` and ``pipeline`` sections, with the model entries reduced
to the one this run trains (and, for distillation, the teachers' files). Everything
else (strategy, replica count, logging and checkpoint frequency) may change between a
run and its resume, which is how a run started on one device can finish on several.

config.json format 3 (distill.method and the active method's section) follows format 2
(nested schedules, tuples), which replaced format 1 (flat ``alpha``/``alpha_end``/
``alpha_schedule`` keys and comma-separated lists). Older config.json files are migrated
when read (their runs were Hinton KD), so finished runs stay finished and interrupted
runs resume.
"""

import fcntl
import json
import os
import shutil
import socket

from absl import logging

from kd_research import config as config_lib
from kd_research.common import fileio
from kd_research.train import results as results_lib
from kd_research.methods import registry as methods_lib
from kd_research.models import registry as model_registry
from kd_research.models import user as user_models
from kd_research.common.errors import UserError

CONFIG_FILE = "config.json"
RESULTS_FILE = results_lib.FILE
LOCK_FILE = ".lock"
MEMBERS_DIR = "members"  # RUN/members/<name>/model.keras: the models a run's model holds


def member_path(workdir, name):
  """Where a run saves the member model ``name`` of its model (a DML cohort's member_<k>)."""
  return os.path.join(workdir, MEMBERS_DIR, name, "model.keras")
FORMAT = 3
_MODEL_ENTRIES = ("teacher", "student", "extra_teachers")


def run_identity(config, role, teacher_paths=()):
  """The dict stored as config.json and compared on resume (JSON types: lists, not tuples)."""
  identity = {k: v for k, v in config.to_dict().items()
              if k not in config_lib.NOT_IDENTITY + _MODEL_ENTRIES}
  entry = config.teacher if role == "teacher" else config.student
  identity["model"] = {k: v for k, v in entry.to_dict().items() if k != "path"}
  for field in ("kwargs", "init", "cohort", "drop_path", "objective"):  # Older runs keep
    if not entry.get(field) or (field == "objective" and role == "distill"):  # theirs.
      identity["model"].pop(field, None)
  if entry.get("init"):  # A starting point: the file's contents, not its name.
    identity["model"]["init"] = user_models.file_digest(entry.init)
  identity["role"] = role
  labels = identity.pop("labels")
  if role != "teacher" and (labels["count"] or labels["fraction"]):
    identity["labels"] = labels  # Teachers always train on every label.
  if config.mixed_precision != "fp16":
    identity.pop("loss_scale")
  if ":" not in config.dataset:  # Only file sources read these (built-ins keep old identities).
    identity.pop("image_size")
    identity.pop("data")
  if not config.optimizer.l2:  # Runs from before the coupled L2 option keep their identity.
    identity["optimizer"].pop("l2")
  if config.optimizer.decay_norms_biases_tokens:  # The default: older runs' identity holds.
    identity["optimizer"].pop("decay_norms_biases_tokens")
  if not config.optimizer.dot_delta or role != "distill":  # DOT trains distillation only.
    identity["optimizer"].pop("dot_delta")
  method_views = ([ops for _, ops in methods_lib.views_read(
      methods_lib.parse(config.distill.method), config.distill).values()]
                  if role == "distill" else [])
  _drop_unused_augmentation(identity["augment"], method_views)
  if role == "distill":
    identity["teachers"] = [os.path.realpath(p) for p in teacher_paths]
    active = set(methods_lib.parse(config.distill.method))
    sections = methods_lib.names() + tuple(methods_lib.teacher_free())
    for name in sections:  # Only the sections of the methods the run uses.
      if name not in active:
        identity["distill"].pop(name, None)
    if not config.distill[methods_lib.MODIFIER].enabled:  # Runs from before CTKD, too.
      identity["distill"].pop(methods_lib.MODIFIER, None)
  else:
    distill = identity.pop("distill")
    if entry.get("objective"):  # A teacher-free objective's fields (USKD's).
      identity["objective"] = distill[entry.objective]
  identity["format"] = FORMAT
  return json.loads(json.dumps(identity))


def _drop_unused_augmentation(augment, method_views=()):
  """Runs from before extra views, RandAugment and erasing keep their identity: the
  fields out unless used (RandAugment in the main ops, config.augment.views or ``method_views``, the
  ops of the views the run's methods bring)."""
  views = augment.get("views", "")
  if not views:
    augment.pop("views", None)
  used = list(augment.get("ops", ())) + [views] + list(method_views)
  if not any("randaugment" in ops for ops in used):
    augment.pop("randaugment_layers", None)
  if not any("erase" in ops for ops in used):
    augment.pop("erase_prob", None)
  if augment.get("repeats") == 1:
    augment.pop("repeats")


def _schedule_v1(d, prefix):
  """The nested schedule entry of format-1 flat keys <prefix>, <prefix>_end, ..."""
  def floats(text):
    return [float(v) for v in str(text).split(",") if v.strip()]
  return {"kind": d.pop(f"{prefix}_schedule"), "start": d.pop(prefix),
          "end": d.pop(f"{prefix}_end"), "warmup_steps": d.pop(f"{prefix}_warmup_steps"),
          "warmup_from": d.pop(f"{prefix}_warmup_from"),
          "boundaries": floats(d.pop(f"{prefix}_boundaries")),
          "values": floats(d.pop(f"{prefix}_values"))}


def migrate(identity):
  """A config.json dict in the current format (formats 1 and 2 are converted)."""
  if identity.get("format") == FORMAT:
    return identity
  if identity.get("format") == 2:  # Before the method choice: every run was Hinton KD.
    new = json.loads(json.dumps(identity))
    if "distill" in new:
      new["distill"].update(method="kd", ce_weight=1.0, logit_standardization=False)
    new["format"] = FORMAT
    return new
  old = json.loads(json.dumps(identity))
  old["optimizer"]["learning_rate"] = _schedule_v1(old["optimizer"], "learning_rate")
  old["augment"]["ops"] = [o for o in str(old["augment"]["ops"]).split(",") if o]
  if "distill" in old:
    d = old["distill"]
    d["alpha"], d["temperature"] = _schedule_v1(d, "alpha"), _schedule_v1(d, "temperature")
    d["teacher_weights"] = [float(w) for w in str(d["teacher_weights"]).split(",") if w]
  old["format"] = 2
  return migrate(old)


def read_identity(workdir):
  """The run's config.json in the current format."""
  return migrate(fileio.read_json(os.path.join(workdir, CONFIG_FILE)))


def diff(old, new):
  """Flattened fields whose values differ: {field: (old, new)}. A model named by a former
  name (resnet_seed for resnet_article) is the same model."""
  a, b = (config_lib.flatten(_with_canonical_model(identity)) for identity in (old, new))
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _with_canonical_model(identity):
  """``identity`` with its model under its registered name (a copy when it changes)."""
  model = identity.get("model")
  name = model.get("model") if isinstance(model, dict) else None
  if not name or model_registry.canonical(name) == name:
    return identity
  return dict(identity, model=dict(identity["model"], model=model_registry.canonical(name)))


def prepare(workdir, identity, overwrite=False, write=True):
  """Checks ``workdir`` against ``identity``; returns finished results or None.

  Raises UserError when the workdir holds a different run (listing the differing
  fields) unless ``overwrite``, which clears it, or unless that run stopped before its first
  checkpoint (refused at set-up: a method that does not fit the models, a missing file),
  which left nothing to resume or lose. Writes config.json atomically.
  """
  if write:
    fileio.check_writable(workdir)
  config_path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(config_path):
    differences = diff(read_identity(workdir), identity)
    if differences and not overwrite and not resumable(workdir):
      logging.info("%s: replacing a run that stopped before its first checkpoint (%s).",
                   workdir, ", ".join(sorted(differences)))
      overwrite = True
    if differences and not overwrite:
      lines = "; ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in differences.items())
      raise UserError(f"Workdir {workdir} holds a run with a different config ({lines}). "
                      "Use a new --workdir, or pass --overwrite to discard that run.")
    if differences and write:
      clear(workdir)
  if results_lib.exists(workdir) and not overwrite:
    return results_lib.read(workdir)
  if overwrite and write:
    clear(workdir)
  if write:
    fileio.atomic_write_json(config_path, identity)
  return None


def resumable(workdir):
  """Whether ``workdir`` holds something a rerun would resume or report: a checkpoint (the
  checkpoint manager's index) or results."""
  return (results_lib.exists(workdir)
          or os.path.exists(os.path.join(workdir, "checkpoints", "checkpoint")))


def clear(workdir):
  """Removes everything a run wrote into ``workdir`` (its lock file stays, held by us)."""
  for name in os.listdir(workdir):
    path = os.path.join(workdir, name)
    if name == LOCK_FILE:
      continue
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


class RunLock:
  """An exclusive lock on a run directory for the life of a run (flock on RUN/.lock).

  A second process on the same workdir would race the first on checkpoint temp files;
  it is refused with a message naming the holder (host and pid). The kernel releases
  the lock when the holder exits, however it exits.
  """

  def __init__(self, workdir):
    self.path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._file = open(self.path, "a+")
    try:
      fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      self._file.seek(0)
      holder = self._file.read().strip() or "another process"
      self._file.close()
      raise UserError(f"Workdir {os.path.dirname(self.path)} is in use by {holder}: two runs "
                      "in one directory would overwrite each other's checkpoints. Wait for it "
                      "to finish (or stop it), or use another --workdir.")
    self._file.seek(0)
    self._file.truncate()
    self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    self._file.flush()
    return self

  def __exit__(self, *exc):
    self._file.close()


def import_user_modules(workdir):
  """Imports the module of the run's user model (``package.module:function``), so that the
  custom layers it registers exist before its model.keras is loaded in safe mode."""
  if os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    user_models.import_modules([read_identity(workdir).get("model", {}).get("model", "")])


def splits_of_run(config, workdir):
  """The data splits of the finished run in ``workdir``: its config.json decides the dataset
  and the splits (the one way eval and export find a run's data)."""
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  if not os.path.exists(os.path.join(workdir, CONFIG_FILE)):
    raise UserError(f"{workdir} is not a run directory (no config.json); give the directory of "
                    "a finished train/distill run, e.g. WORKDIR/student_kd.")
  identity = read_identity(workdir)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for field in ("dataset", "validation_size", "validation_seed", "train_size", "test_size",
                  "image_size", "data", "global_batch_size"):
      if isinstance(identity.get(field), dict):
        config[field].update(identity[field])
      elif field in identity:
        config[field] = identity[field]
  return datasets.load_splits(datasets.data_spec(config))
