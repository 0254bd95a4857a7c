"""OFA-KD, one-for-all distillation across architectures (Hao et al., NeurIPS 2023).

Each chosen student stage gets a branch into the logit space (ofa_branches.py: SepConv
blocks for a CNN's maps, patch merging and transformer blocks for a ViT's tokens), and
every branch, and the student's own logits, learn the teacher's prediction through the
*modulated* cross-entropy, with the target class's teacher probability raised to
``eps`` (the paper's gamma):

  ofa(s, t) = - sum_c ((p_t,c + y_c)^eps - y_c) log p_s,c      p = softmax(logits / T)

y the one-hot label (the argmax of a mixed label, as the reference takes it). For the
non-target classes (y_c = 0) it is p_t,c^eps; eps = 1 gives plain cross-entropy with the
teacher. Per example:

  total = ce_weight CE_smoothed + kd_weight ofa(student logits) + weight sum_stages ofa(branch)

Only the teacher's logits are read, so a CNN teacher teaches a ViT student and a ViT
teacher a CNN student alike, and the teacher cache serves it. Following Hao840/OFAKD
``distillers/ofa.py`` and ``train.py``'s defaults: stages 1-4, eps 1 for every stage and
the logits, temperature 1, loss weights 1 (gt, kd, ofa), label smoothing 0.1 (its
``--smoothing``, through timm's LabelSmoothingCrossEntropy); its ImageNet README command
sets eps 1.5.

Stages: ``stages`` names student taps (``stage2``, ``block4``, ...); empty chooses the
reference's: a CNN's every stage (its last is the reference's stage 4, ResNet's layer4,
the one before stage 3, ...), a ViT's blocks 2, 4, 10 and 12 of 12 (custom_forward's
stage_info), at the same fractions of another depth. A CNN stage ``K - i`` stages from the
last gets ``K - i`` SepConv blocks; a ViT block gets the transformer blocks of the first
reference stage that does not come before it.

Departures (the reference leaves these undefined): a distilled ViT student (two class
tokens) keeps both tokens through its branches and reads the class token's output (the
reference's TokenFilter has a "todo: token_num > 1"); an unlabelled transfer-set example
has no target class (y = 0: the teacher's probabilities to the power eps).
"""

import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.methods import losses
from kd_research.methods import ofa_branches
from kd_research.models import taps as taps_lib
from kd_research.models import vit

REFERENCE_VIT_BLOCKS = (2, 4, 10, 12)  # of 12: stage_info's indices 1, 3, 9, 11 (0-based)


def target_mask(labels, num_classes):
  """The one-hot target class of integer labels, or of a label distribution's argmax."""
  labels = tf.convert_to_tensor(labels)
  if labels.shape.rank == 2:
    labels = tf.argmax(labels, -1)
  return tf.one_hot(tf.cast(labels, tf.int32), num_classes)


def modulated_loss(student_logits, teacher_logits, mask, eps, temperature):
  """Per example: -sum_c ((p_t + y)^eps - y) log p_s at ``temperature`` (OFA's loss)."""
  t = base.f32(temperature)
  log_student = tf.nn.log_softmax(base.f32(student_logits) / t, -1)
  teacher = tf.nn.softmax(base.f32(teacher_logits) / t, -1)
  mask = base.f32(mask)
  return -tf.reduce_sum((tf.pow(teacher + mask, eps) - mask) * log_student, -1)


def reference_vit_stage(block, depth):
  """The reference stage (1-4) of a ViT's ``block`` (1-based) of ``depth``."""
  ends = [max(1, round(depth * b / 12)) for b in REFERENCE_VIT_BLOCKS]
  return next(n for n, end in enumerate(ends, 1) if block <= end)


def default_vit_blocks(depth):
  """The reference's blocks at the same fractions of ``depth`` (duplicates dropped)."""
  return tuple(dict.fromkeys(max(1, round(depth * b / 12)) for b in REFERENCE_VIT_BLOCKS))


def student_stages(student, chosen):
  """[(tap, reference stage)] of the student's chosen taps (all of the default ones when
  ``chosen`` is empty); UserError for taps that are not stages or blocks."""
  layout = vit.token_layout(student)
  if layout is not None:
    depth = layout[0]
    blocks = ([f"block{b}" for b in default_vit_blocks(depth)] if not chosen
              else list(chosen))
    valid = [f"block{b}" for b in range(1, depth + 1)]
    _require_taps(student, blocks, valid)
    return [(tap, reference_vit_stage(int(tap[len("block"):]), depth)) for tap in blocks]
  stages = taps_lib.stage_names(student)
  _require_taps(student, list(chosen) or list(stages), list(stages))
  if any(len(taps_lib.shape(student, s)) != 3 for s in stages):
    raise UserError(f"config.distill.method=ofa needs the student's stages as maps [H, W, C] "
                    f"or a ViT's blocks; model {student.name} has vector stages.")
  taps = list(chosen) or list(stages)
  return [(tap, 4 - (len(stages) - 1 - stages.index(tap))) for tap in taps]


def _require_taps(student, taps, valid):
  bad = [t for t in taps if t not in valid]
  if not valid or bad:
    raise UserError(
        f"config.distill.ofa.stages: model {student.name} has no stage "
        f"{', '.join(map(repr, bad)) or 'taps'}; valid: {', '.join(valid) or 'none'} (a "
        "CNN's stage taps or a ViT's blocks; empty: the reference's choice).")


@base.register
class OFA(base.OwnsModules, base.Method):
  """ce_weight * smoothed CE + kd_weight * ofa(logits) + weight * sum ofa(stage branch)."""

  name, order, kind = "ofa", 14, "feature"
  terms_names = ("total", "ofa", "ofa_logits", "ce")
  defaults = dict(stages=(), eps=(1.0,), temperature=1.0, weight=1.0, kd_weight=1.0,
                  label_smoothing=0.1)
  reference = ("Hao840/OFAKD distillers/ofa.py, train.py (--ofa-stage 1 2 3 4, --ofa-eps 1, "
               "--ofa-temperature 1, --ofa-loss-weight 1, --kd-loss-weight 1, --smoothing 0.1)")
  field_docs = dict(
      stages="student taps with a branch (a CNN's stage<i>, a ViT's block<i>); empty: the "
             "reference's (every CNN stage; a ViT's blocks 2, 4, 10, 12 of 12)",
      eps="the modulating exponent (gamma): one value for all, or one per stage then the "
          "logits' (len(stages) + 1)",
      temperature="temperature of both softmaxes",
      weight="weight of the branches' summed loss",
      kd_weight="weight of the student logits' modulated loss",
      label_smoothing="epsilon of the student's CE against the labels")

  def __init__(self, stages, eps, temperature, weight, kd_weight, ce_weight, label_smoothing,
               teacher_weights, branch_fns):
    self.stages, self.eps, self.temperature = tuple(stages), tuple(eps), temperature
    self.weight, self.kd_weight, self.ce_weight = weight, kd_weight, ce_weight
    self.label_smoothing, self.teacher_weights = label_smoothing, teacher_weights
    self.student_taps = tuple(tap for tap, _ in self.stages)
    self.branch_fns, self.modules = branch_fns, []

  @classmethod
  def from_config(cls, ctx):
    s = ctx.section(cls.name)
    stages = student_stages(ctx.student, s.stages)
    eps = tuple(s.eps) * (len(stages) + 1) if len(s.eps) == 1 else tuple(s.eps)
    if len(eps) != len(stages) + 1:
      raise UserError(f"config.distill.ofa.eps has {len(s.eps)} values for {len(stages)} "
                      f"stages ({', '.join(t for t, _ in stages)}): give one value, or "
                      f"{len(stages) + 1} (one per stage, then the logits').")
    num_classes = ctx.student.outputs[0].shape[-1]
    layout = vit.token_layout(ctx.student)
    if layout is None:
      dim = max(_pooled_width(ctx.student, "student"), _pooled_width(ctx.teacher, "teacher"))
      branch_fns = [lambda shape, n=n, k=k: ofa_branches.cnn_branch(
          shape, n, dim, num_classes, f"ofa_branch{k}") for k, (_, n) in enumerate(stages)]
    else:
      _, grid, tokens = layout
      _check_mergeable(grid)
      branch_fns = [lambda shape, n=n, k=k: ofa_branches.vit_branch(
          shape, grid, tokens, n, num_classes, f"ofa_branch{k}")
                    for k, (_, n) in enumerate(stages)]
    return cls(stages, eps, s.temperature, s.weight, s.kd_weight, ctx.distill.ce_weight,
               s.label_smoothing, ctx.teacher_weights, branch_fns)

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    del active, student_epochs
    s = distill.section(cls.name)
    base.require(len(s.eps) >= 1 and all(e > 0 for e in s.eps),
                 f"{where}.ofa.eps={tuple(s.eps)}: one or more values > 0.")
    base.require(s.temperature > 0 and min(s.weight, s.kd_weight) >= 0
                 and 0.0 <= s.label_smoothing < 1.0,
                 f"{where}.ofa: temperature must be > 0, weight and kd_weight >= 0, "
                 f"label_smoothing in [0, 1); got temperature={s.temperature}, "
                 f"weight={s.weight}, kd_weight={s.kd_weight}, "
                 f"label_smoothing={s.label_smoothing}.")

  def build(self, student_shapes, teacher_shapes):
    del teacher_shapes
    self.modules = [fn(student_shapes[tap]) for fn, (tap, _) in zip(self.branch_fns,
                                                                     self.stages)]

  def terms(self, batch, student, teacher, step):
    del step
    logits = student["logits"]
    num_classes = logits.shape[-1]
    mask = target_mask(batch["label"], num_classes)
    if "labelled" in batch:
      mask *= base.f32(batch["labelled"])[:, None]
    branches = [m(student["features"][tap], training=True)
                for m, (tap, _) in zip(self.modules, self.stages)]
    stage_loss, logit_loss = 0.0, 0.0
    for k, w in enumerate(self.teacher_weights):
      t = teacher["logits"][k]
      stage_loss += w * tf.add_n([modulated_loss(b, t, mask, e, self.temperature)
                                  for b, e in zip(branches, self.eps)])
      logit_loss += w * modulated_loss(logits, t, mask, self.eps[-1], self.temperature)
    targets = losses.smoothed_targets(batch["label"], num_classes, self.label_smoothing)
    ce = base.labelled_cross_entropy(dict(batch, label=targets), logits)
    total = self.ce_weight * ce + self.kd_weight * logit_loss + self.weight * stage_loss
    return {"total": total, "ofa": stage_loss, "ofa_logits": logit_loss, "ce": ce}


def _pooled_width(model, what):
  return taps_lib.shape(model, taps_lib.resolve(model, "pooled", what))[-1]


def _check_mergeable(grid):
  merges = ofa_branches.merge_count(grid[0])
  if any(side % (2 ** merges) for side in grid):
    raise UserError(f"config.distill.method=ofa merges the student's {grid[0]}x{grid[1]} patch "
                    f"grid 2x2 {merges} time(s) (down to {ofa_branches.FINAL_PATCH_GRID}x"
                    f"{ofa_branches.FINAL_PATCH_GRID}), which needs sides divisible by "
                    f"{2 ** merges}: choose another image size or patch size.")
