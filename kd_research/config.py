"""The one base config that declares every field, and its validation.

Experiments (``experiments/<name>.py``) start from ``base_config()`` and change a
few fields; ``main.py`` applies ``--config.x=y`` overrides on top. The config is
locked, so a misspelt override fails loudly instead of being ignored.
"""

import json

import ml_collections

from kd_research import augment
from kd_research import data_sources
from kd_research import models
from kd_research import precision
from kd_research import schedules
from kd_research.errors import UserError
from kd_research.losses import COMBINE_MODES

STRATEGIES = ("default", "mirrored", "multi_worker", "auto")
OPTIMIZERS = ("adam", "adamw", "sgd")


def schedule_fields(prefix, value, name="constant"):
  """Fields ``<prefix>``, ``<prefix>_schedule``, ``_end``, ``_boundaries``, ``_values``, ``_warmup_*``."""
  return {prefix: value, f"{prefix}_schedule": name, f"{prefix}_end": value,
          f"{prefix}_boundaries": "", f"{prefix}_values": "",
          f"{prefix}_warmup_steps": 0, f"{prefix}_warmup_from": 0.0}


def model_config(name, width=0, epochs=1, seed=0, path="", **kwargs):
  """One model entry: registry name, width (0 = model default), BN sync, epochs, seed, path.

  keras.applications teachers also use image_size (0 = 224), weights ('' | 'imagenet' |
  file), head_epochs (head-only warm-up before unfreezing), unfreeze_top (backbone layers
  to unfreeze; 0 = all) and finetune_lr_factor (learning-rate factor after unfreezing).
  """
  entry = dict(model=name, width=width, sync_bn=False, epochs=epochs, seed=seed, path=path,
               image_size=0, weights="", head_epochs=0, unfreeze_top=0, finetune_lr_factor=0.1)
  unknown = set(kwargs) - set(entry)
  if unknown:
    raise ValueError(f"model_config got unknown fields {sorted(unknown)}")
  entry.update(kwargs)
  return ml_collections.ConfigDict(entry)


def base_config():
  """Every field, with defaults that make a small but complete Fashion-MNIST run."""
  c = ml_collections.ConfigDict()
  c.experiment = ""              # set by main.py to the experiment spec, recorded in config.json
  # Data.
  c.dataset = "fashion_mnist"    # fashion_mnist | mnist | cifar10 | cifar100 | synthetic
  c.data_dir = ""                # searched first; then $KD_DATA_DIR and the standard places
  c.validation_size = 5000       # carved from the training set with validation_seed
  c.validation_seed = 0
  c.train_size = 0               # >0: use only this many training examples (quick runs)
  c.test_size = 0                # >0: evaluate the final test on only this many (tests only)
  c.global_batch_size = 128
  c.eval_batch_size = 1000       # rounded up to a multiple of the replica count
  # Distribution and speed.
  c.strategy = "default"
  c.num_cpu_devices = 2          # mirrored on a machine without GPUs: logical CPU replicas
  c.cross_device_ops = "auto"    # auto | nccl | hierarchical_copy | reduce_to_one (mirrored)
  c.cluster = "tf_config"        # multi_worker cluster spec: tf_config | slurm
  c.collective_timeout_seconds = 120.0  # a dead peer becomes an error after this long
  # none (float32, the same numbers on every machine) | bf16 | fp16 (dynamic loss scaling) |
  # auto (bf16 where the CPU/GPU has native bf16 units, float32 elsewhere; see precision.py).
  c.mixed_precision = "none"
  c.loss_scale_initial = 2.0 ** 15    # fp16 only: starting loss scale (halved on overflow)
  c.loss_scale_growth_steps = 2000    # fp16 only: doubled after this many finite steps
  c.steps_per_loop = 50          # steps per tf.function call
  c.jit_compile = False          # XLA for forward/backward (a GPU option; slower on CPU)
  c.data_threads = 0             # tf.data private thread pool size (0 = TF default)
  c.deterministic = False        # enable_op_determinism (slower, bit-exact resume)
  # Bookkeeping.
  c.log_every_steps = 100
  c.checkpoint_every_steps = 500
  c.checkpoint_every_seconds = 0.0  # >0: also checkpoint when this much time has passed
  c.keep_checkpoints = 2
  c.eval_every_epochs = 1
  # Optimisation (shared by every stage).
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adam", momentum=0.9, weight_decay=0.0,
      **schedule_fields("learning_rate", 1e-3, "cosine")))
  c.optimizer.learning_rate_end = 0.0
  # Models.
  c.teacher = model_config("resnet_seed", width=16, epochs=2, seed=0)
  c.student = model_config("cnn_seed", width=16, epochs=2, seed=0)
  # Augmentation (all training stages; teacher and student see the same images).
  c.augment = ml_collections.ConfigDict(dict(
      ops="", crop_padding=2, rotation_degrees=10.0, cutout_size=8, mixup_alpha=0.2,
      cutmix_alpha=1.0))
  # Teacher stability monitor: teacher top-1 on an augmented view vs the clean image.
  c.stability_ops = "flip,crop"  # empty: off
  # Distillation.
  # More teachers for multi-teacher distillation: {name: model entry}; the ensemble is
  # config.teacher followed by these in name order.
  c.extra_teachers = ml_collections.ConfigDict()
  c.distill = ml_collections.ConfigDict(dict(
      combine="prob_mean", finetune_epochs=0, cache_teacher=False,
      # Where the teacher-output cache lives: empty = RUN/teacher_cache; a shared directory
      # lets a sweep compute the teachers' outputs once (files are fingerprinted by teacher
      # files, images, precision and combine, so a mismatch is recomputed, never reused).
      cache_dir="",
      finetune_lr_factor=1.0,  # learning-rate factor for the labels-only fine-tuning stage
      # A teacher whose validation accuracy is not clearly above chance is refused before
      # any student step; true distils from it anyway (e.g. to study bad teachers).
      allow_weak_teacher=False,
      teacher_weights="",  # comma-separated, one per teacher; empty = uniform
      **schedule_fields("alpha", 0.7), **schedule_fields("temperature", 10.0)))
  # Named distillation variants for the pipeline: {name: {distill field: value}}. Empty means
  # one distilled student with config.distill; otherwise one student_kd_<name> run each.
  # A variant may also set teachers='primary' (distil from config.teacher alone) or 'all'.
  c.variants = ml_collections.ConfigDict()
  # Student seeds for the pipeline, comma-separated ("0,1,2"): every student stage runs
  # once per seed in STAGE/seed_K and the table reports mean +- std. Empty: one run.
  c.seeds = ""
  # Pipeline: export every distilled student (SavedModel + TFLite) and add deployed columns.
  c.export_students = True
  return c


def check_preset(experiment, arg, presets):
  """Raises UserError unless ``arg`` is empty or one of the experiment's ``presets``."""
  if arg and arg not in presets:
    valid = ", ".join(presets) if presets else "none (this experiment takes no preset)"
    raise UserError(f"Unknown preset {arg!r} for experiment {experiment}; valid presets: "
                    f"{valid}.")


def finalize(config):
  """Locks the config so that unknown fields fail, and returns it."""
  config.lock()
  return config


def validate(config):
  """Checks every field a run depends on; raises UserError naming the field and valid values."""
  def need(cond, msg):
    if not cond:
      raise UserError(msg)

  need(config.dataset in data_sources.DATASETS,
       f"config.dataset={config.dataset!r} is unknown; valid: {', '.join(data_sources.DATASETS)}.")
  seeds = schedules.parse_floats(config.seeds, "config.seeds")
  need(all(s >= 0 and s == int(s) for s in seeds) and len(set(seeds)) == len(seeds),
       f"config.seeds={config.seeds!r} must be distinct non-negative integers such as '0,1,2'.")
  need(config.strategy in STRATEGIES,
       f"config.strategy={config.strategy!r} is unknown; valid: {', '.join(STRATEGIES)}.")
  need(config.mixed_precision in precision.PRECISIONS,
       f"config.mixed_precision={config.mixed_precision!r}; valid: "
       f"{', '.join(precision.PRECISIONS)} (auto: bf16 where the hardware has native bf16, "
       "else float32).")
  need(config.loss_scale_initial > 0 and config.loss_scale_growth_steps >= 1,
       f"config.loss_scale_initial must be > 0 and config.loss_scale_growth_steps >= 1, got "
       f"{config.loss_scale_initial} and {config.loss_scale_growth_steps}.")
  need(config.optimizer.name in OPTIMIZERS,
       f"config.optimizer.name={config.optimizer.name!r}; valid: {', '.join(OPTIMIZERS)}.")
  need(config.distill.combine in COMBINE_MODES,
       f"config.distill.combine={config.distill.combine!r}; valid: {', '.join(COMBINE_MODES)}.")
  for field in ("global_batch_size", "eval_batch_size", "steps_per_loop", "log_every_steps",
                "checkpoint_every_steps", "keep_checkpoints", "num_cpu_devices",
                "eval_every_epochs"):
    need(config[field] >= 1, f"config.{field} must be a positive integer, got {config[field]}.")
  for field in ("validation_size", "train_size", "test_size", "distill.finetune_epochs"):
    section, _, name = field.rpartition(".")
    value = (config[section] if section else config)[name]
    need(value >= 0, f"config.{field} must be >= 0, got {value}.")
  need(config.distill.finetune_lr_factor > 0,
       f"config.distill.finetune_lr_factor must be > 0, got {config.distill.finetune_lr_factor}.")
  need(config.checkpoint_every_seconds >= 0,
       f"config.checkpoint_every_seconds must be >= 0, got {config.checkpoint_every_seconds}.")
  need(config.optimizer.learning_rate > 0,
       f"config.optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}.")
  need(config.optimizer.weight_decay >= 0,
       f"config.optimizer.weight_decay must be >= 0, got {config.optimizer.weight_decay}.")
  entries = [("teacher", config.teacher), ("student", config.student)] + [
      (f"extra_teachers.{name}", entry) for name, entry in config.extra_teachers.items()]
  for role, entry in entries:
    for field in ("model", "width", "sync_bn", "epochs", "seed", "path", "image_size", "weights",
                  "head_epochs", "unfreeze_top", "finetune_lr_factor"):
      need(field in entry, f"config.{role} lacks the field {field!r}; build entries with "
           "config.model_config(...).")
    need(entry.model in models.MODELS, f"config.{role}.model={entry.model!r} is unknown; "
         f"valid models: {', '.join(sorted(models.MODELS))}.")
    need(entry.epochs >= 1, f"config.{role}.epochs must be a positive integer, got {entry.epochs}.")
    need(entry.width >= 0, f"config.{role}.width must be >= 0 (0 = default), got {entry.width}.")
    need(0 <= entry.head_epochs < entry.epochs or entry.head_epochs == 0,
         f"config.{role}.head_epochs={entry.head_epochs} must be smaller than "
         f"config.{role}.epochs={entry.epochs}.")
    need(entry.head_epochs == 0 or entry.model in models.APPLICATION_MODELS,
         f"config.{role}.head_epochs needs a pretrained backbone model "
         f"({', '.join(models.APPLICATION_MODELS)}), not {entry.model}.")
    need(entry.finetune_lr_factor > 0,
         f"config.{role}.finetune_lr_factor must be > 0, got {entry.finetune_lr_factor}.")
  from kd_research import losses  # pylint: disable=g-import-not-at-top
  losses.normalise_weights(schedules.parse_floats(config.distill.teacher_weights,
                                                  "config.distill.teacher_weights") or None,
                           1 + len(config.extra_teachers))
  need(config.distill.finetune_epochs < config.student.epochs,
       f"config.distill.finetune_epochs={config.distill.finetune_epochs} must be smaller than "
       f"config.student.epochs={config.student.epochs} (the total student epochs).")
  # Schedules: shape parameters and the value range over a nominal run.
  schedules.from_config(config.distill, "alpha", 1000, "alpha schedule").check_range(0.0, 1.0)
  schedules.from_config(config.distill, "temperature", 1000, "temperature schedule").check_range(
      0.0, float("inf"), low_inclusive=False, what_range="T > 0")
  schedules.from_config(config.optimizer, "learning_rate", 1000, "learning-rate schedule")
  augment.parse_ops(config.augment.ops)
  need(not set(augment.parse_ops(config.stability_ops)) & set(augment.MIXING),
       f"config.stability_ops={config.stability_ops!r} may not contain mixup/cutmix (they change "
       "the label, not the view).")
  for name, overrides in config.variants.items():
    variant = apply_variant(config, name)
    need(variant.distill.finetune_epochs < variant.student.epochs,
         f"variant {name}: finetune_epochs must be smaller than config.student.epochs.")
    schedules.from_config(variant.distill, "alpha", 1000, f"variant {name} alpha schedule"
                          ).check_range(0.0, 1.0)
  return config


def apply_variant(config, name):
  """A copy of ``config`` with ``config.variants[name]`` applied to its distill fields."""
  variant = ml_collections.ConfigDict(config.to_dict())
  for key, value in config.variants[name].items():
    if key == "teachers":  # Which teachers; handled by the pipeline.
      if value not in ("all", "primary"):
        raise UserError(f"variant {name}: teachers={value!r}; valid: all, primary.")
      continue
    if key not in variant.distill:
      raise UserError(f"variant {name}: {key!r} is not a config.distill field; valid: "
                      f"{', '.join(sorted(variant.distill))}.")
    variant.distill[key] = value
  variant.variants = ml_collections.ConfigDict()
  variant.lock()
  return variant


def to_json(config):
  """The config as a JSON string with sorted keys (config.json, fingerprints)."""
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def flatten(d, prefix=""):
  """{'a': {'b': 1}} -> {'a.b': 1}; used for HParams and for config diffs."""
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def teacher_entries(config):
  """[(name, entry)] of every teacher: ('teacher', config.teacher), then extra_teachers by name."""
  return [("teacher", config.teacher)] + sorted(config.extra_teachers.items())


def teacher_weights(config):
  """The per-teacher weights as a list, or None for uniform."""
  return list(schedules.parse_floats(config.distill.teacher_weights,
                                     "config.distill.teacher_weights")) or None


def replaced(config, **fields):
  """A locked copy of ``config`` with top-level ``fields`` set to new values."""
  copy = ml_collections.ConfigDict(config.to_dict())
  for key, value in fields.items():
    if key not in copy:
      raise KeyError(f"config has no field {key!r}")
    copy[key] = value
  copy.lock()
  return copy


def with_teacher(config, entry):
  """A copy of ``config`` whose config.teacher is ``entry`` (to train an extra teacher)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  copy.teacher = ml_collections.ConfigDict(entry.to_dict())
  copy.lock()
  return copy
