"""The field checks of run_spec.parse, one function per section: each raises UserError
naming the field, what is wrong and the valid values."""

import os

from kd_research.data import augment
from kd_research.methods import losses
from kd_research.methods import registry as methods_lib
from kd_research.models import registry as model_registry
from kd_research.models import user as user_models
from kd_research.runtime import precision
from kd_research.common.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker", "auto")
OPTIMIZERS = ("adam", "adamw", "sgd")
MODEL_FIELDS = ("model", "width", "sync_bn", "epochs", "seed", "path", "image_size", "weights",
                "head_epochs", "unfreeze_top", "finetune_lr_factor", "kwargs", "init", "cohort",
                "drop_path", "objective")


def need(cond, msg):
  """Raises UserError(msg) unless ``cond``."""
  if not cond:
    raise UserError(msg)


def data_and_speed(config, data):
  """Data (``data``: its parsed datasets.DataSpec), precision, batch, split sizes and
  optimizer fields."""
  need(not (data.source is None and config.image_size),
        f"config.image_size={config.image_size} resizes the images of file sources (folder:, "
        f"tfrecord:, tfds:); {config.dataset} is in memory at its own size. Drop it.")
  need(config.mixed_precision in precision.PRECISIONS,
        f"config.mixed_precision={config.mixed_precision!r}; valid: "
        f"{', '.join(precision.PRECISIONS)} (auto: bf16 where the hardware has native bf16, "
        "else float32).")
  need(config.loss_scale.initial > 0 and config.loss_scale.growth_steps >= 1,
        f"config.loss_scale.initial must be > 0 and config.loss_scale.growth_steps >= 1, got "
        f"{config.loss_scale.initial} and {config.loss_scale.growth_steps}.")
  need(config.global_batch_size >= 1,
        f"config.global_batch_size must be a positive integer, got {config.global_batch_size}.")
  for field in ("validation_size", "train_size", "test_size"):
    need(config[field] >= 0, f"config.{field} must be >= 0, got {config[field]}.")
  optimizer(config)


def optimizer(config, where="config.optimizer"):
  """The optimizer section of ``config`` (the run's, or a variant's, named by ``where``)."""
  opt = config.optimizer
  need(opt.name in OPTIMIZERS, f"{where}.name={opt.name!r}; valid: {', '.join(OPTIMIZERS)}.")
  need(opt.weight_decay >= 0, f"{where}.weight_decay must be >= 0, got {opt.weight_decay}.")
  need(opt.l2 >= 0, f"{where}.l2 must be >= 0, got {opt.l2}.")
  need(opt.learning_rate.start > 0,
       f"{where}.learning_rate.start must be > 0, got {opt.learning_rate.start}.")
  need(0 <= opt.dot_delta <= opt.momentum and opt.momentum + opt.dot_delta < 1,
       f"{where}.dot_delta={opt.dot_delta} with momentum {opt.momentum}: DOT's two momenta, "
       "momentum - dot_delta and momentum + dot_delta, must lie in [0, 1) (mdistiller: 0.075 "
       "with 0.9).")
  need(not opt.dot_delta or (opt.name == "sgd" and not opt.weight_decay),
       f"{where}.dot_delta={opt.dot_delta} needs {where}.name=sgd (got {opt.name!r}) and weight "
       f"decay as {where}.l2 (coupled, in the task gradient, as DOT's reference), not "
       f"weight_decay={opt.weight_decay}.")
  need(not opt.dot_delta or config.mixed_precision != "fp16",
       f"{where}.dot_delta with mixed_precision=fp16: DOT takes two gradients apart, which "
       "dynamic loss scaling does not (mdistiller refuses AMP too); use bf16 or float32.")


def learning_rate(schedule):
  """The learning-rate schedule (a ScheduleSpec) stays >= 0 over the run."""
  schedule.check_range(0.0, float("inf"), what_range="learning rate >= 0")


def stability_ops(ops):
  """config.run.stability_ops (parsed): views of the same image, no label mixing."""
  need(not set(ops) & set(augment.MIXING),
        f"config.run.stability_ops={','.join(ops)!r} may not contain mixup/cutmix (they "
        "change the label, not the view).")


def bookkeeping(config):
  """config.run, config.distribution and the pipeline's seeds."""
  run, dist = config.run, config.distribution
  for field in ("eval_batch_size", "steps_per_loop", "log_every_steps", "checkpoint_every_steps",
                "keep_checkpoints", "eval_every_epochs", "latency_repeats"):
    need(run[field] >= 1, f"config.run.{field} must be a positive integer, got {run[field]}.")
  need(run.checkpoint_every_seconds >= 0,
        f"config.run.checkpoint_every_seconds must be >= 0, got {run.checkpoint_every_seconds}.")
  need(dist.strategy in STRATEGIES, f"config.distribution.strategy={dist.strategy!r} is "
        f"unknown; valid: {', '.join(STRATEGIES)}.")
  need(dist.num_cpu_devices >= 1, f"config.distribution.num_cpu_devices must be >= 1, got "
        f"{dist.num_cpu_devices}.")
  seeds = config.pipeline.seeds
  need(all(isinstance(s, int) and s >= 0 for s in seeds) and len(set(seeds)) == len(seeds),
        f"config.pipeline.seeds={seeds!r} must be distinct non-negative integers such as "
        "(0, 1, 2).")


def model_entry(role, entry):
  """One model entry (config.teacher, config.student or an extra teacher)."""
  for field in MODEL_FIELDS:
    need(field in entry, f"config.{role} lacks the field {field!r}; build entries with "
          "config.model_config(...).")
  need(entry.init or entry.path or model_registry.is_known(entry.model),
        f"config.{role}.model={entry.model!r} is unknown; valid models: "
        f"{', '.join(model_registry.names())}, or your own package.module:function.")
  kwargs = user_models.parse_kwargs(entry.kwargs, f"config.{role}.kwargs")
  need(not kwargs or user_models.is_spec(entry.model),
        f"config.{role}.kwargs={entry.kwargs!r} is for a user model (package.module:function); "
        f"{entry.model} is a registry model (its options: width, sync_bn).")
  need(not entry.init or (entry.init.endswith(".keras") and os.path.isfile(entry.init)),
        f"config.{role}.init={entry.init!r}: a starting point must be an existing .keras "
        "file.")
  need(entry.epochs >= 1, f"config.{role}.epochs must be a positive integer, got {entry.epochs}.")
  need(entry.width >= 0, f"config.{role}.width must be >= 0 (0 = default), got {entry.width}.")
  need(0 <= entry.head_epochs < entry.epochs or entry.head_epochs == 0,
        f"config.{role}.head_epochs={entry.head_epochs} must be smaller than "
        f"config.{role}.epochs={entry.epochs}.")
  need(entry.head_epochs == 0 or entry.model in model_registry.pretrained_names(),
        f"config.{role}.head_epochs needs a pretrained backbone model "
        f"({', '.join(model_registry.pretrained_names())}), not {entry.model}.")
  wrapper = model_registry.wrapper_of(entry)  # A model of several (a DML cohort): its checks.
  if wrapper:
    wrapper.validate(role, entry)
  need(entry.finetune_lr_factor > 0,
        f"config.{role}.finetune_lr_factor must be > 0, got {entry.finetune_lr_factor}.")
  need(0 <= entry.drop_path < 1,
        f"config.{role}.drop_path must be in [0, 1), got {entry.drop_path}.")
  need(not entry.drop_path or model_registry.has_drop_path(entry.model),
        f"config.{role}.drop_path={entry.drop_path}: model {entry.model} has no stochastic "
        f"depth; models with it: {', '.join(model_registry.drop_path_names())}.")
  selectable = methods_lib.teacher_free()
  need(not entry.objective or entry.objective in selectable,
        f"config.{role}.objective={entry.objective!r}; valid: '' (cross-entropy), "
        f"{', '.join(selectable)} (teacher-free, its fields in config.distill.<name>).")
  need(not (entry.objective and entry.get("cohort")),
        f"config.{role}.objective={entry.objective!r} with cohort={entry.cohort}: a cohort "
        "trains by deep mutual learning; pick one.")


def repeated_augmentation(config):
  """config.augment.repeats: an integer in [1, global batch]; not with cached views."""
  r = config.augment.repeats
  need(isinstance(r, int) and 1 <= r <= config.global_batch_size,
       f"config.augment.repeats must be an integer in [1, {config.global_batch_size}] (the "
       f"global batch), got {r!r}.")
  need(r == 1 or not (config.distill.cache_teacher and config.augment.ops),
       f"config.augment.repeats={r} with config.distill.cache_teacher=true and "
       f"augment.ops={','.join(config.augment.ops)}: the teacher cache of augmented views "
       "follows the stream without repeats; distil from the live teacher "
       "(config.distill.cache_teacher=false).")


def distill_section(d, num_teachers, student_epochs, mixing=()):
  """A parsed distill section (a DistillSpec: config.distill, or a variant's, named by its
  ``where`` in the errors); ``mixing``: the mixup/cutmix ops of the run's augmentation."""
  where = d.where
  readers = sorted({n for names_, _ in d.views.values() for n in names_})
  need(not (d.cache_teacher and readers),
       f"{where}.cache_teacher=true cannot serve {', '.join(readers)}: it reads extra views "
       "of each image, and the cache holds the teachers' outputs on the main view only. "
       "Turn the cache off (the teachers then run live on every view).")
  splitting = methods_lib.having("splits_target_class", d.methods)
  need(not (mixing and splitting),
        f"{where}.method={d.method!r} with config.augment.ops={','.join(mixing)}: "
        f"{', '.join(splitting)} split(s) the target class from the rest, and mixed images "
        "have two. Drop mixup/cutmix or use another method (kd, dist, ...).")
  uncacheable = methods_lib.uncacheable(d)
  need(not (d.cache_teacher and uncacheable),
        f"{where}.cache_teacher=true cannot serve method(s) {', '.join(uncacheable)}: they read "
        "the teachers' feature maps, and the cache holds their logits and vector features "
        "('pooled') only. Turn the cache off (the teacher then runs live), or use a logit "
        "method (kd, dkd, dist) or rkd / pkt / crd with teacher_tap='pooled'.")
  need(isinstance(d.cache_topk, int) and d.cache_topk >= 0,
        f"{where}.cache_topk must be an integer >= 0 (0: full logits), got {d.cache_topk!r}.")
  need(d.cache_dtype in ("float32", "float16"),
        f"{where}.cache_dtype={d.cache_dtype!r}; valid: float32 (exact), float16.")
  need(not d.logit_standardization or methods_lib.having("standardizes_logits", d.methods),
        f"{where}.logit_standardization modifies "
        f"{', '.join(methods_lib.having('standardizes_logits'))}; method is {d.method!r}.")
  methods_lib.validate(d, student_epochs)
  need(d.combine in losses.COMBINE_MODES,
        f"{where}.combine={d.combine!r}; valid: {', '.join(losses.COMBINE_MODES)}.")
  losses.normalise_weights(d.teacher_weights or None, num_teachers)
  need(0 <= d.finetune_epochs < student_epochs,
        f"{where}.finetune_epochs={d.finetune_epochs} must be >= 0 and smaller than "
        f"config.student.epochs={student_epochs} (the total student epochs).")
  need(d.finetune_lr_factor > 0,
        f"{where}.finetune_lr_factor must be > 0, got {d.finetune_lr_factor}.")
  d.alpha.check_range(0.0, 1.0)
  d.temperature.check_range(0.0, float("inf"), low_inclusive=False, what_range="T > 0")
