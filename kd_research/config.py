"""The one base config that declares every field, its schema check and its variants (the
config is validated and parsed into typed values by run_spec.py, with the per-section
checks of config_checks.py).

Experiments (``experiments/<name>.py``) start from ``base_config()`` and change a
few fields; ``main.py`` applies ``--config.x=y`` overrides on top. The config is
locked, so a misspelt override fails loudly instead of being ignored.

Layout: the top-level fields and the sections ``optimizer``, ``teacher``,
``student``, ``extra_teachers``, ``augment``, ``distill`` and ``loss_scale`` decide a
run's result (its identity, ``workdir.run_identity``); the sections ``run``
(bookkeeping and monitoring), ``distribution`` (devices and cluster) and
``pipeline`` (which stages and seeds) never change a result. Schedules are nested
entries (``distill.alpha.start``, ``.end``, ``.kind``, ...); lists are tuples.
"""

import ml_collections

from kd_research.methods import registry as methods_lib
from kd_research.common import plugins
from kd_research.common.errors import UserError

# Sections that never change a run's result (left out of its identity).
NOT_IDENTITY = ("run", "distribution", "pipeline")


def schedule(start, kind="constant", end=None, warmup_steps=0, warmup_from=0.0,
             boundaries=(), values=()):
  """A schedule entry (see schedules.py): kind, start, end (= start if omitted), warm-up,
  piecewise boundaries (fractions of the run) and values."""
  return ml_collections.ConfigDict(dict(
      kind=kind, start=float(start), end=float(start if end is None else end),
      warmup_steps=int(warmup_steps), warmup_from=float(warmup_from),
      boundaries=tuple(float(b) for b in boundaries), values=tuple(float(v) for v in values)))


def model_config(name, width=0, epochs=1, seed=0, path="", **kwargs):
  """One model entry: registry name, width (0 = model default), BN sync, epochs, seed, path.

  ``model`` may also be the user's ``package.module:function`` (models/user.py), called with
  the data's input_shape and num_classes and ``kwargs`` (a JSON object). ``init``: a
  ``.keras`` file to start training from (its architecture and weights; ``model`` then
  only names it). ``path`` (teachers): a trained ``.keras`` file used instead of training.
  ``cohort`` (students): N >= 2 trains N students together by deep mutual learning
  (models/cohort.py, methods/mutual.py); 0 = one student. ``drop_path``: the stochastic
  depth rate of the models that have it (the ViTs: the last block's; 0 = none).
  ``objective``: a teacher-free objective of its labels-only runs, by name (``uskd``:
  methods/uskd.py, its fields config.distill.uskd); '' = cross-entropy (a distillation run
  trains by config.distill.method instead).

  keras.applications teachers also use image_size (0 = 224), weights ('' | 'imagenet' |
  file), head_epochs (head-only warm-up before unfreezing), unfreeze_top (backbone layers
  to unfreeze; 0 = all) and finetune_lr_factor (learning-rate factor after unfreezing).
  """
  entry = dict(model=name, width=width, sync_bn=False, epochs=epochs, seed=seed, path=path,
               image_size=0, weights="", head_epochs=0, unfreeze_top=0, finetune_lr_factor=0.1,
               kwargs="", init="", cohort=0, drop_path=0.0, objective="")
  unknown = set(kwargs) - set(entry)
  if unknown:
    raise ValueError(f"model_config got unknown fields {sorted(unknown)}")
  entry.update(kwargs)
  return ml_collections.ConfigDict(entry)


def _optimizer_section():
  """config.optimizer: Adam on a cosine schedule by default; AdamW and SGD, decoupled or
  coupled weight decay, and DOT's split momenta."""
  return ml_collections.ConfigDict(dict(
      name="adam", momentum=0.9, weight_decay=0.0,
      # False: weight_decay spares biases, norm scales and offsets, a ViT's tokens and
      # position embeddings (timm's and DeiT's rule for transformers).
      decay_norms_biases_tokens=True,
      # Coupled L2: l2 * w added to the gradient, as PyTorch SGD's weight_decay (the
      # CIFAR-100 protocol's 5e-4); weight_decay above is decoupled (AdamW-style).
      l2=0.0,
      # DOT (train/dot.py): > 0 trains distillation runs with SGD whose task momentum is
      # momentum - dot_delta and whose distillation momentum is momentum + dot_delta.
      dot_delta=0.0,
      learning_rate=schedule(1e-3, "cosine", end=0.0)))


def base_config():
  """Every field, with defaults that make a small but complete Fashion-MNIST run."""
  c = ml_collections.ConfigDict()
  # Data: a built-in (fashion_mnist | mnist | cifar10 | cifar100 | synthetic, in memory) or
  # a streamed source, folder:PATH | tfrecord:PATTERN | tfds:NAME[:VERSION] (docs in data/).
  c.dataset = "fashion_mnist"
  c.image_size = 0               # file sources: resize/crop to NxN (0 = the images' own size)
  c.data = _data_section()
  c.validation_size = 5000       # carved from the training set with validation_seed
  c.validation_seed = 0
  c.train_size = 0               # >0: use only this many training examples (quick runs)
  c.test_size = 0                # >0: evaluate the final test on only this many (tests only)
  c.global_batch_size = 128
  # Transfer set (student runs): labels for ``count`` examples (or a ``fraction``) of the
  # training split, chosen by ``seed``; a distilled student sees every image (soft labels
  # from the teacher, CE only where a label exists), a labels-only student trains on the
  # labelled ones for the same number of steps. 0 and 0.0: every example is labelled.
  c.labels = ml_collections.ConfigDict(dict(count=0, fraction=0.0, seed=0))
  # none (float32, the same numbers on every machine) | bf16 | fp16 (dynamic loss scaling) |
  # auto (bf16 where the CPU/GPU has native bf16 units, float32 elsewhere; see precision.py).
  c.mixed_precision = "none"
  c.loss_scale = ml_collections.ConfigDict(dict(
      initial=2.0 ** 15,         # fp16 only: starting loss scale (halved on overflow)
      growth_steps=2000))        # fp16 only: doubled after this many finite steps
  c.deterministic = False        # enable_op_determinism (slower, bit-exact resume)
  c.optimizer = _optimizer_section()
  c.teacher = model_config("resnet_article", width=16, epochs=2, seed=0)
  c.student = model_config("cnn_article", width=16, epochs=2, seed=0)
  # More teachers for multi-teacher distillation: {name: model entry}; the ensemble is
  # config.teacher followed by these in name order.
  c.extra_teachers = ml_collections.ConfigDict()
  # Augmentation (all training stages; teacher and student see the same images).
  c.augment = ml_collections.ConfigDict(dict(
      ops=(), crop_padding=2, rotation_degrees=10.0, cutout_size=8, mixup_alpha=0.2,
      cutmix_alpha=1.0, randaugment_layers=2, erase_prob=0.25,
      repeats=1,                 # repeated augmentation: each image r times per global batch
      # Extra views of each image for the methods that read them (data/views.py), e.g.
      # 'strong=flip,crop,randaugment'; several: 'a=...;b=...'. A method's own view (MLKD's
      # strong view, config.distill.mlkd.view_ops) needs no entry here.
      views=""))
  c.distill = _distill_section()
  c.run = _run_section()
  c.distribution = ml_collections.ConfigDict(dict(
      strategy="default",
      num_cpu_devices=2,         # mirrored on a machine without GPUs: logical CPU replicas
      cross_device_ops="auto",   # auto | nccl | hierarchical_copy | reduce_to_one (mirrored)
      cluster="tf_config",       # multi_worker cluster spec: tf_config | slurm
      slurm_port_base=8888,      # cluster=slurm: task k of a node listens on this + k
      collective_timeout_seconds=120.0))  # a dead peer becomes an error after this long
  c.pipeline = _pipeline_section()
  return c


def _pipeline_section():
  """How ``pipeline`` lays out a campaign: variants, seeds, validation-chosen candidates."""
  return ml_collections.ConfigDict(dict(
      # Named distillation variants: {name: {distill field: value}}. Empty means one
      # distilled student with config.distill; otherwise one student_kd_<name> run each.
      # A variant may also set teachers='primary' (config.teacher alone) or 'all'.
      variants=ml_collections.ConfigDict(),
      seeds=(),                  # student seeds; each student stage runs in STAGE/seed_K
      # Hyper-parameter candidates chosen on the validation split: {variant: {candidate:
      # {distill field: value}}}. Each candidate runs once (the first seed) in the sweep
      # dir; the variant's final runs use the candidate with the best validation accuracy.
      candidates=ml_collections.ConfigDict(),
      sweep_dir="",              # default: <parent of WORKDIR>_sweep/<name of WORKDIR>
      export_students=True,      # SavedModel + TFLite of each distilled student
      # Each training scheme's own fields (campaign/schemes/: chain, dml_cohort, ...).
      **{field: default for scheme in campaign_schemes().values()
         for field, (default, _) in scheme.fields.items()}))


def campaign_schemes():
  """{name: scheme} of the registered training schemes (kd_research/campaign/schemes/),
  found as plug-ins: each declares its fields of config.pipeline and its validation."""
  return plugins.registered("scheme", "kd_research.campaign.schemes")


def _distill_section():
  """The distillation fields, with every registered method's own section (distill.dkd, ...)."""
  distill = ml_collections.ConfigDict(dict(
      # kd | dkd | dist | fitnets | at | rkd | pkt | sp | crd (every registered method), or
      # several: 'kd,at'.
      method="kd",
      ce_weight=1.0,             # CE weight of the methods beyond kd (kd weighs it 1 - alpha)
      logit_standardization=False,  # Sun et al. 2024: standardised logits (kd, dkd, mlkd)
      alpha=schedule(0.7), temperature=schedule(10.0), combine="prob_mean",
      teacher_weights=(),        # one per teacher; empty = uniform
      finetune_epochs=0,         # final labels-only epochs (distill, then fine-tune)
      finetune_lr_factor=1.0,    # learning-rate factor for the fine-tuning stage
      # Teacher-output cache: the training split's outputs, or with augmentation / random
      # crops the outputs on every training view (train/view_cache.py), stored as
      # cache_dtype (float32: exact; float16: half the disk).
      # cache_topk > 0: per-view logits as their top k + the tail's mass (FKD's compression).
      cache_teacher=False, cache_dtype="float32", cache_topk=0))
  distill.update(methods_lib.defaults())  # per-method sections: distill.dkd, .at, ...
  return distill


def _data_section():
  """How file sources are read and viewed (ignored by the built-in in-memory datasets)."""
  return ml_collections.ConfigDict(dict(
      train_view="center",       # center (resize + centre crop) | inception (random-resized
                                 # crop + flip; needs image_size)
      crop_area_min=0.08,        # inception crop: smallest share of the image's area
      eval_crop_fraction=0.875,  # evaluation: resize to image_size / this, centre crop
      channels=0,                # 0: the images' own (must agree) | 1 grey | 3 RGB
      skip_corrupt=False,        # folder: skip corrupt images (counted in results.json)
      shuffle_buffer=10000,      # TFRecord/TFDS: records mixed after the shard interleave
      label_offset=0,            # TFRecord: subtracted from stored labels (1 for the common
                                 # ImageNet converters, which number classes from 1)
      num_classes=0,             # TFRecord glob without manifest: 0 = largest label + 1
      tfds_dir=""))              # TFDS data dir (default $TFDS_DATA_DIR, ~/tensorflow_datasets)


def _run_section():
  """Bookkeeping and monitoring fields: they never change a run's result."""
  return ml_collections.ConfigDict(dict(
      experiment="",             # set by main.py to the experiment spec
      data_dir="",               # searched first; then $KD_DATA_DIR and the standard places
      log_every_steps=100, checkpoint_every_steps=500,
      checkpoint_every_seconds=0.0,  # >0: also checkpoint when this much time has passed
      keep_checkpoints=2, eval_every_epochs=1,
      steps_per_loop=50,         # steps per tf.function call
      eval_batch_size=1000,      # rounded up to a multiple of the replica count
      latency_repeats=20,        # timed inference passes behind results.json's ms/batch
      saved_model=True,          # also write RUN/saved_model (./launch.sh export: verified + TFLite)
      jit_compile=False,         # XLA for forward/backward (a GPU option; slower on CPU)
      data_threads=0,            # tf.data private thread pool size (0 = TF default)
      # Teacher stability monitor: teacher top-1 on an augmented view vs the clean image.
      stability_ops=("flip", "crop"),
      # Where the teacher-output cache lives: empty = RUN/teacher_cache; a shared
      # directory lets a sweep compute the teachers' outputs once (files are
      # fingerprinted, so a mismatch is recomputed, never reused).
      cache_dir="",
      # A teacher whose validation accuracy is not clearly above chance is refused before
      # any student step; true distils from it anyway (e.g. to study bad teachers).
      allow_weak_teacher=False))


def check_preset(experiment, arg, presets):
  """Raises UserError unless ``arg`` is empty or one of the experiment's ``presets``."""
  if arg and arg not in presets:
    valid = ", ".join(presets) if presets else "none (this experiment takes no preset)"
    raise UserError(f"Unknown preset {arg!r} for experiment {experiment}; valid presets: "
                    f"{valid}.")


def finalize(config):
  """Checks that every field is declared (check_schema), locks the config so that unknown
  fields fail from here on, and returns it."""
  check_schema(config)
  config.lock()
  return config


def apply_variant(config, name, extra=None):
  """A copy of ``config`` with ``config.pipeline.variants[name]`` (then ``extra``, a
  candidate's overrides) applied to config.distill; the key ``optimizer`` sets fields of
  config.optimizer instead (a distilled run's own optimizer: DOT's SGD).

  A variant's values may be plain values or, for schedules, dicts of schedule fields
  ({'alpha': {'start': 0.9, 'end': 0.3, 'kind': 'linear'}}); a number for a schedule
  means a constant schedule at that value.
  """
  variant = ml_collections.ConfigDict(config.to_dict())
  overrides = list(config.pipeline.variants[name].items()) + list((extra or {}).items())
  where = f"variant {name}" + (" (with its candidate)" if extra else "")
  for key, value in overrides:
    if key == "teachers":  # Which teachers; handled by the pipeline.
      if value not in ("all", "primary"):
        raise UserError(f"variant {name}: teachers={value!r}; valid: all, primary.")
      continue
    if key == "optimizer":  # The distilled run's optimizer (DOT: train/dot.py).
      _set_checked(variant, key, value, "config", where)
      continue
    _set_checked(variant.distill, key, value, "config.distill", where)
  variant.pipeline.variants = ml_collections.ConfigDict()
  variant.pipeline.candidates = ml_collections.ConfigDict()
  variant.lock()
  return variant


def _is_schedule(section):
  return "kind" in section and "start" in section and "end" in section


def _set_checked(section, key, value, path, where):
  """section[key] = value, refusing a field the schema does not declare (listing the valid
  ones); a dict value sets the fields of a nested section (a method's, a schedule's) one by
  one, by the same rule; a number for a schedule is a constant schedule at that value."""
  if key not in section:
    raise UserError(f"{where}: {path} has no field {key!r}; valid: "
                    f"{', '.join(sorted(section))}.")
  current = section[key]
  if not isinstance(current, ml_collections.ConfigDict):
    section[key] = value
    return
  if _is_schedule(current) and not hasattr(value, "items"):
    value = {"kind": "constant", "start": float(value), "end": float(value)}
  if not hasattr(value, "items"):
    raise UserError(f"{where}: {path}.{key} is a section (fields "
                    f"{', '.join(sorted(current))}); give a dict of them, not {value!r}.")
  for field, field_value in value.items():
    _set_checked(current, field, field_value, f"{path}.{key}", where)


# Sections whose entries are names the user chooses (each entry is checked by its own rule:
# extra teachers as model entries, variants and candidates when they are applied).
_FREE_SECTIONS = ("extra_teachers", "pipeline.variants", "pipeline.candidates")


def check_schema(config):
  """UserError naming the first field of ``config`` that base_config() does not declare
  (an experiment module, an API override or a variant can otherwise add one silently: a
  misspelt ``tau`` beside ``temperature`` would be ignored), with the valid names."""
  _check_fields(config.to_dict(), base_config().to_dict(), "config")
  entry_fields = model_config("").to_dict()
  for name, entry in config.extra_teachers.items():
    _check_fields(entry.to_dict(), entry_fields, f"config.extra_teachers.{name}")


def _check_fields(values, schema, path):
  for key, value in values.items():
    field = f"{path}.{key}"
    if field.partition(".")[2] in _FREE_SECTIONS:
      continue
    if key not in schema:
      raise UserError(f"{field} is not a config field; valid fields of {path}: "
                      f"{', '.join(sorted(schema))}.")
    if isinstance(schema[key], dict):
      if not isinstance(value, dict):
        raise UserError(f"{field} is a section (fields {', '.join(sorted(schema[key]))}), "
                        f"not {value!r}.")
      _check_fields(value, schema[key], field)


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


def model_entries(config):
  """[(role, entry)]: teacher, student and every extra teacher (for validation)."""
  return [("teacher", config.teacher), ("student", config.student)] + [
      (f"extra_teachers.{name}", entry) for name, entry in config.extra_teachers.items()]


def teacher_entries(config):
  """[(name, entry)] of every teacher: ('teacher', config.teacher), then extra_teachers by name."""
  return [("teacher", config.teacher)] + sorted(config.extra_teachers.items())


def teacher_weights(config):
  """The per-teacher weights as a list, or None for uniform."""
  return list(config.distill.teacher_weights) or None


def replaced(config, **fields):
  """A locked copy of ``config`` with fields set to new values ('a.b' names nested ones)."""
  copy = ml_collections.ConfigDict(config.to_dict())
  for key, value in fields.items():
    *path, last = key.split(".")
    target = copy
    for part in path:
      target = target[part]
    if last not in target:
      raise KeyError(f"config has no field {key!r}")
    target[last] = value
  copy.lock()
  return copy


def with_teacher(config, entry):
  """A copy of ``config`` whose config.teacher is ``entry`` (to train an extra teacher)."""
  return replaced(config, teacher=ml_collections.ConfigDict(entry.to_dict()))
