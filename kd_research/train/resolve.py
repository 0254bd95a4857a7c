"""Run resolution: (RunSpec, role) -> everything the driver needs, built once.

``resolve`` turns a parsed config (run_spec.RunSpec) and a role (teacher | student |
distill) into the run's data, training state (model, optimizer, the objective's variables,
checkpoint), phases with their objectives and teacher sources, learning-rate schedule and
frozen teachers (checked and evaluated once, before any student step). ``end_to_end.train_and_evaluate`` and the
benchmark (tools/bench_runs.py) both build their runs here, so a bench row measures what a
run trains.
"""

import dataclasses
import functools
import os
from typing import Optional

from absl import logging
import numpy as np

from kd_research.data import augment
from kd_research.data import views as views_lib
from kd_research.data import datasets
from kd_research.data import splits as splits_lib
from kd_research.methods import base as method_base
from kd_research.methods import losses
from kd_research.methods import registry as method_registry
from kd_research.models import pretrained
from kd_research.runtime import distribute
from kd_research.models import registry as model_registry
from kd_research.models import user as user_models
from kd_research.train import driver as driver_lib
from kd_research.train import evaluation
from kd_research.train import optimizers
from kd_research.train import state as state_lib
from kd_research.train import teacher_cache
from kd_research.train import teacher_sources
from kd_research.train import teachers as teachers_lib
from kd_research.train import view_cache


def entry_of(config, role):
  """The model entry a role trains: config.teacher for teachers, config.student otherwise."""
  return config.teacher if role == "teacher" else config.student


@dataclasses.dataclass
class ResolvedRun:
  """Everything resolved for one run (see ``resolve``)."""
  config: object          # the run's config (its record and bookkeeping fields)
  spec: object            # its typed values (run_spec.RunSpec)
  workdir: str
  role: str
  strategy: object
  splits: object
  chief: bool
  entry: object
  steps_per_epoch: int
  phases: list
  lr_fn: object
  state: object
  teachers: Optional["EvaluatedTeachers"]
  train: object           # the training split (data/splits.py) this run iterates over
  labelled: Optional[np.ndarray]  # distillation on a transfer set: 1 where a label exists


@dataclasses.dataclass
class EvaluatedTeachers:
  """The frozen ensemble, its outputs on validation/test, and its report (once per run)."""
  ensemble: object
  paths: tuple
  weights: Optional[list]
  logits: dict
  report: dict
  # The cache: {'logits': [N, K, C], tap: [N, K, D]} (arrays or row files), or per view.
  train_outputs: Optional[dict]
  final_temperature: float


def resolve(spec, workdir, role, strategy, splits, teacher_paths, chief):
  """The run's schedule, teachers, training state and phases, from its ``spec``
  (run_spec.RunSpec)."""
  config = spec.config
  entry = entry_of(config, role)
  # User models' modules first (the run's own, and a distillation's teachers'): custom
  # layers they register must exist before any load.
  user_models.import_modules([entry.model] + ([t.entry.model for t in spec.teachers]
                                              if role == "distill" else []))
  train, labelled = datasets.transfer_set(config.labels, role, splits.train,
                                          config.global_batch_size)
  # The full training split sets the budget: a labels-only student cycles over its subset.
  spe = splits.train.steps_per_epoch(config.global_batch_size, distribute.num_workers(strategy))
  total = entry.epochs * spe
  distill_steps = (entry.epochs - spec.distill.finetune_epochs) * spe
  head_steps = entry.head_epochs * spe if role == "teacher" else 0
  lr_fn = _learning_rate(spec, entry, role, total, head_steps, distill_steps)
  method = {}  # The distillation objective, built with the state (it may own variables).

  def method_variables(model):
    """Teachers and the method's variables, after the student: its initial weights come
    first from the seeded RNG, which the teachers and connectors would otherwise advance."""
    if role != "distill":  # A labels-only objective may own variables (USKD's weak head).
      method["labels"] = method_registry.labels_objective(entry, spec.distill.sections, model)
      return method_registry.build_variables(method["labels"], model, None)
    method["ensemble"] = teachers_lib.load(teacher_paths, splits.input_shape,
                                           splits.num_classes)
    method["objective"] = method_registry.build(method_base.BuildContext(
            spec.distill, model, method["ensemble"].models[0],
            _normalised_weights(spec, len(teacher_paths)), spe, distill_steps,
            method_base.TrainingSet(
                splits.train.num_examples,
                None if config.labels.count or config.labels.fraction
                else lambda: splits.train.labels,
                config.global_batch_size, entry.seed),
            tuple(method["ensemble"].models)))
    return method_registry.build_variables(method["objective"], model, method["ensemble"])

  state = state_lib.build(
      strategy, functools.partial(build_model, entry, splits, role), functools.partial(
          optimizers.make_optimizer, config.optimizer, lr_fn,
          (config.loss_scale.initial, config.loss_scale.growth_steps)
          if config.mixed_precision == "fp16" else None, role == "distill"),
      method_variables, workdir, config.run.keep_checkpoints, chief, entry.model)
  teachers = None
  if role == "distill":  # Checked and evaluated once, before any student step.
    teachers = _teachers_once(spec, workdir, method["ensemble"], teacher_paths, splits,
                              chief, distill_steps, method["objective"].teacher_taps)
  phases = _phases(role, entry, state.model, teachers, method,
                   total, head_steps, distill_steps)
  logging.info("%s: %s %s, %d params, %d steps (%d/epoch), %d replica(s), %s.", workdir, role,
               entry.model, state.model.count_params(), total, spe,
               strategy.num_replicas_in_sync, splits.source)
  return ResolvedRun(config, spec, workdir, role, strategy, splits, chief, entry, spe, phases,
                     lr_fn, state, teachers, train, labelled)


def run_views(spec, role):
  """The run's extra views: config.augment.views, and for a distillation run each view its
  methods read that those do not define, with the method's own ops (MLKD's strong view)."""
  extra = spec.views
  if role == "distill":
    defined = {name for name, _ in extra}
    extra += tuple((name, ops) for name, (_, ops) in spec.distill.views.items()
                   if name not in defined)
  return extra


def augmentation(spec, seed, splits, role):
  """The run's batch augmentation (augment.augment_batch with its parameters and ``seed``,
  and the extra views of ``run_views``), or None without either: the training stream's and
  the view cache's, one definition."""
  extra = run_views(spec, role)
  batch_size = spec.data.global_batch_size
  main = None
  if spec.augment.ops:
    main = functools.partial(augment.augment_batch, ops=spec.augment.ops, cfg=spec.augment,
                             seed=seed, num_classes=splits.num_classes,
                             global_batch_size=batch_size)
  if not extra:
    return main
  return views_lib.transform(main, extra, spec.augment, seed, splits.num_classes, batch_size)


def build_model(entry, splits, role):
  """The model, with every variable that will ever train trainable (the optimizer is built
  for them before tracing; pretrained backbones are frozen again by their phases). An
  entry with ``init`` starts from that file; an entry that asks for a model wrapper (a DML
  cohort, models/cohort.py) gets the wrapper's model of such models."""
  wrapper = model_registry.wrapper_of(entry)
  if wrapper:
    return wrapper.build(entry, role, splits.input_shape,
                         lambda member: build_model(member, splits, role))
  if entry.get("init"):
    where = f"config.{'teacher' if role == 'teacher' else 'student'}.init"
    model = model_registry.load_start(entry.init, splits.input_shape, splits.num_classes, where)
    model.trainable = True
    return model
  model = model_registry.build(
      entry.model, splits.input_shape, splits.num_classes, entry.width, entry.sync_bn,
      entry.image_size, entry.weights,
      user_models.parse_kwargs(entry.get("kwargs", ""), f"config.{role}.kwargs"),
      entry.get("drop_path", 0.0))
  pretrained.set_trainable(model, "finetune", entry.unfreeze_top, bool(entry.weights))
  return model


def _learning_rate(spec, entry, role, total, head_steps, distill_steps):
  lr_fn = spec.learning_rate.over(total)
  if head_steps:
    lr_fn = optimizers.LRFactorAfter(lr_fn, head_steps, entry.finetune_lr_factor)
  distill = spec.distill
  if role == "distill" and distill.finetune_epochs and distill.finetune_lr_factor != 1.0:
    lr_fn = optimizers.LRFactorAfter(lr_fn, distill_steps, distill.finetune_lr_factor)
  return lr_fn


def _normalised_weights(spec, num_teachers):
  return losses.normalise_weights(spec.distill.teacher_weights or None, num_teachers)


def _phases(role, entry, model, teachers, method, total, head_steps, distill_steps):
  """The run as phases: [head warm-up,] training, or [hint,] distillation [, fine-tuning];
  ``method``: the objectives built with the state ('labels' of a labels-only run, the
  distillation 'objective')."""
  def trainable(mode):
    return functools.partial(pretrained.set_trainable, model, mode, entry.unfreeze_top,
                             bool(entry.weights))

  labels = method.get("labels") or method_registry.labels_objective(entry, selectable=False)
  objective = method.get("objective")
  if role != "distill":
    name = "teacher" if role == "teacher" else "student"
    head = ([driver_lib.Phase(f"{name} (head only)", head_steps, labels, None,
                              trainable("head"))] if head_steps else [])
    return head + [driver_lib.Phase(name, total, labels, None, trainable("finetune"))]
  taps = objective.teacher_taps
  if teachers.train_outputs is not None:
    source = teacher_sources.cached_teachers_with(taps)
  else:
    source = teacher_sources.live_teachers(
        teachers.ensemble.tap(taps) if taps else teachers.ensemble, taps, objective.views)
  phases = []
  first = objective.first_stage()
  if first is not None:  # e.g. FitNets' hint stage
    stage, stage_epochs = first
    phases.append(driver_lib.Phase(stage.name, stage_epochs * (total // entry.epochs), stage,
                                   source, trainable("finetune")))
  phases.append(driver_lib.Phase("distill", distill_steps, objective, source,
                                 trainable("finetune")))
  if distill_steps < total:
    phases.append(driver_lib.Phase("finetune", total, labels, None, trainable("finetune")))
  return phases


def _teachers_once(spec, workdir, ensemble, paths, splits, chief, distill_steps, taps):
  """Loads what the run needs from its frozen teachers, once, before any student step:
  logits on validation and test, and with the cache their outputs on the training split
  (logits, and the vector features ``taps`` a feature method reads)."""
  config = spec.config
  weights = list(spec.distill.teacher_weights) or None
  cache_dir = config.run.cache_dir or os.path.join(workdir, "teacher_cache")
  outputs = {}
  for split in ("validation", "test") + (("train",) if spec.distill.cache_teacher else ()):
    data = getattr(splits, split)
    split_taps = taps if split == "train" else ()
    if split == "train":
      teacher_cache.refuse_feature_maps(ensemble, taps)
      # Augmented or randomly cropped views change every step: their own cache.
      if view_cache.needed(spec.augment.ops, getattr(data, "view", None)):
        seed = config.student.seed
        outputs[split] = view_cache.load_or_compute(
            cache_dir, ensemble, data, augmentation(spec, seed, splits, "distill"), seed,
            distill_steps, config.global_batch_size,
            view_cache.fingerprint(paths, data, config, seed, distill_steps, taps), taps,
            write=chief, dtype=spec.distill.cache_dtype,
            steps_per_epoch=data.steps_per_epoch(config.global_batch_size),
            topk=spec.distill.cache_topk)
        continue
    digest = teacher_cache.fingerprint(paths, data, config.mixed_precision,
                                       spec.distill.combine, split_taps)
    # A streamed training split's cache stays in files, read per batch (O(batch) memory).
    load = (teacher_cache.load_or_compute_rows
            if split == "train" and not isinstance(data, splits_lib.ArraySplit)
            else teacher_cache.load_or_compute_outputs)
    outputs[split] = load(cache_dir, split, ensemble, data, digest, split_taps, write=chief)
  logits = {split: outputs[split]["logits"] for split in ("validation", "test")}
  final_t = float(spec.distill.temperature.over(max(distill_steps, 1))(max(distill_steps, 1)))
  labels = {"validation": splits.validation.labels, "test": splits.test.labels}
  report = evaluation.teacher_report({s: logits[s] for s in labels}, labels, ensemble.names,
                                     weights, final_t)
  if not config.run.allow_weak_teacher:
    teachers_lib.check_above_chance(report["validation"]["accuracy"], ensemble.paths,
                                    splits.validation.labels, splits.num_classes)
  if config.run.stability_ops:
    report["stability"] = evaluation.teacher_stability(
        ensemble, splits.validation, logits["validation"], spec.stability_ops, spec.augment,
        weights)
  return EvaluatedTeachers(ensemble, paths, weights, logits, report, outputs.get("train"), final_t)
