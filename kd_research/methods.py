"""The distillation methods by name: defaults, where they come from, and how a run builds them.

``--config.distill.method=NAME`` (or several, comma-separated: ``kd,at``) picks them;
each method's hyper-parameters live in ``config.distill.<name>``. Methods beyond KD
add ``weight * loss`` to ``ce_weight * CE``; with ``kd`` in the list, KD's own
``alpha`` weighs its CE term instead. ``logit_standardization`` modifies kd and dkd.

Defaults follow the CIFAR-100 runs of RepDistiller (scripts/run_cifar_distill.sh)
and mdistiller (configs/cifar100), T = 4 where a temperature applies; DIST's from its
reference implementation (beta = gamma = 1, tau = 4). BUILD.md has the table.
"""

import dataclasses
from typing import Optional

import ml_collections
import numpy as np

from kd_research import connectors
from kd_research import contrastive
from kd_research import objectives
from kd_research import schedules
from kd_research import taps as taps_lib
from kd_research.errors import UserError

LOGIT_METHODS = ("kd", "dkd", "dist")
FEATURE_METHODS = ("fitnets", "at", "rkd", "pkt", "sp", "crd")
NAMES = LOGIT_METHODS + FEATURE_METHODS


def defaults():
  """config.distill's per-method sections (see module docstring for the sources)."""
  d = ml_collections.ConfigDict()
  d.dkd = dict(alpha=1.0, beta=8.0, temperature=4.0, warmup_epochs=20)
  d.dist = dict(weight=1.0, beta=1.0, gamma=1.0, temperature=4.0)
  # Taps: layer names, or 'middle_stage' / 'last_stage' / 'pooled' of the registry's models.
  d.fitnets = dict(weight=100.0, student_tap="middle_stage", teacher_tap="middle_stage",
                   hint_epochs=0)
  d.at = dict(weight=1000.0, p=2.0)  # every stage of the student with the teacher's last ones
  d.rkd = dict(weight=1.0, distance=25.0, angle=50.0, student_tap="pooled",
               teacher_tap="pooled")
  d.pkt = dict(weight=30000.0, student_tap="pooled", teacher_tap="pooled")
  d.sp = dict(weight=3000.0, student_tap="last_stage", teacher_tap="last_stage")
  # negative_sampling: other_class (RepDistiller's 'exact') or uniform (needs no labels).
  d.crd = dict(weight=0.8, feature_dim=128, negatives=16384, temperature=0.07, momentum=0.5,
               negative_sampling="other_class", student_tap="pooled", teacher_tap="pooled")
  return d


def parse(method):
  """'kd,at' -> ('kd', 'at'); unknown names raise UserError listing the valid ones."""
  names = tuple(n.strip() for n in str(method).split(",") if n.strip())
  bad = [n for n in names if n not in NAMES]
  if not names or bad:
    raise UserError(f"config.distill.method={method!r}: unknown method(s) {bad or names}; valid: "
                    f"{', '.join(NAMES)} (several: comma-separated, e.g. kd,at; logit "
                    "standardization: config.distill.logit_standardization=true with kd or dkd).")
  if "kd" in names and "dkd" in names:
    raise UserError("config.distill.method: kd and dkd both distil the logits; pick one.")
  return tuple(sorted(names, key=NAMES.index))  # kd / dkd first: their CE weight counts.


def needs_features(method):
  """Whether the methods read intermediate features (no teacher-output cache then)."""
  return any(n in FEATURE_METHODS for n in parse(method))


def uncacheable(distill):
  """The configured methods that read teacher feature maps (the cache holds logits and the
  vector feature 'pooled' only); RKD, PKT and CRD tap 'pooled' by default."""
  return [n for n in parse(distill.method) if n in FEATURE_METHODS and (
      n == "at" or distill[n].teacher_tap != "pooled")]


def _pairs(name, section, student, teacher):
  """(student tap, teacher tap) pairs of a feature method on the two models."""
  if name == "at":
    s_stages, t_stages = taps_lib.stage_names(student), taps_lib.stage_names(teacher)
    n = min(len(s_stages), len(t_stages))
    if not n:
      raise UserError("config.distill.method=at needs feature maps: the student and the "
                      "teacher must both have stage taps (stage1, stage2, ...).")
    pairs = list(zip(s_stages[-n:], t_stages[-n:]))
    for s_tap, t_tap in pairs:
      if len(taps_lib.shape(student, s_tap)) != 3 or len(taps_lib.shape(teacher, t_tap)) != 3:
        raise UserError(f"config.distill.method=at needs feature maps [H, W, C]; the stage taps "
                        f"{s_tap} (student) / {t_tap} (teacher) are vectors (e.g. an MLP).")
    return pairs
  return [(taps_lib.resolve(student, section.student_tap, "student"),
           taps_lib.resolve(teacher, section.teacher_tap, "teacher"))]


@dataclasses.dataclass
class TrainingSet:
  """What CRD needs to know of the training array: its size, labels (None when the
  transfer set hides some), the batch size and the run seed."""
  num_examples: int
  labels: Optional[np.ndarray]
  global_batch_size: int
  seed: int


def build(distill, names, student, teacher, teacher_weights, steps_per_epoch, distill_steps,
          training_set=None):
  """The objective of the distillation phase for methods ``names`` (see ``parse``)."""
  parts = []
  for name in names:
    section = distill[name] if name != "kd" else None
    if name == "kd":
      parts.append(_kd(distill, teacher_weights, distill_steps))
    elif name == "dkd":
      parts.append(objectives.DKD(section.alpha, section.beta, section.temperature,
                                  section.warmup_epochs * steps_per_epoch, distill.ce_weight,
                                  teacher_weights, distill.logit_standardization))
    elif name == "dist":
      parts.append(objectives.DIST(section.weight, section.beta, section.gamma,
                                   section.temperature, distill.ce_weight, teacher_weights))
    elif name == "crd":
      parts.append(_crd(section, distill.ce_weight, teacher_weights, student, teacher,
                        training_set))
    else:
      parts.append(_feature(name, section, distill.ce_weight, teacher_weights, student, teacher))
  return parts[0] if len(parts) == 1 else objectives.Combined(parts)


def hint_objective(objective):
  """FitNets' optional first stage (the hint loss alone, the same connectors), or None."""
  parts = getattr(objective, "parts", (objective,))
  fitnets = [p for p in parts if isinstance(p, objectives.FitNets)]
  return objectives.HintStage(fitnets[0]) if fitnets else None


def build_variables(objective, student, ensemble):
  """Creates the objective's variables for the taps' shapes; returns all of them."""
  student_shapes = {t: taps_lib.shape(student, t) for t in objective.student_taps}
  teacher_shapes = [{t: taps_lib.shape(m, t) for t in objective.teacher_taps}
                    for m in ensemble.models]
  objective.build(student_shapes, teacher_shapes)
  return objective.variables


def _kd(distill, teacher_weights, distill_steps):
  alpha = schedules.from_config(distill.alpha, distill_steps, "config.distill.alpha")
  alpha.check_range(0.0, 1.0)
  temperature = schedules.from_config(distill.temperature, distill_steps,
                                      "config.distill.temperature")
  temperature.check_range(0.0, float("inf"), low_inclusive=False, what_range="T > 0")
  return objectives.HintonKD(alpha, temperature, distill.combine, teacher_weights,
                             distill.logit_standardization)


def _feature(name, section, ce_weight, teacher_weights, student, teacher):
  pairs = _pairs(name, section, student, teacher)
  if name == "fitnets":
    return objectives.FitNets(section.weight, ce_weight, teacher_weights, pairs,
                              connectors.connector)
  if name == "at":
    return objectives.AttentionTransfer(section.weight, ce_weight, teacher_weights, pairs,
                                        section.p)
  options = dict(distance_weight=section.distance, angle_weight=section.angle) if (
      name == "rkd") else {}
  return objectives.Relational(name, section.weight, ce_weight, teacher_weights, pairs,
                               **options)


def _crd(section, ce_weight, teacher_weights, student, teacher, training_set):
  sampling = section.negative_sampling
  if sampling not in ("other_class", "uniform"):
    raise UserError(f"config.distill.crd.negative_sampling={sampling!r}; valid: other_class, "
                    "uniform.")
  labels = training_set.labels
  if sampling == "other_class" and labels is None:
    raise UserError("config.distill.crd.negative_sampling=other_class needs every training "
                    "label, but the transfer set (config.labels) hides some: use "
                    "--config.distill.crd.negative_sampling=uniform.")
  return contrastive.CRD(
      section.weight, ce_weight, teacher_weights, _pairs("crd", section, student, teacher),
      training_set.num_examples, training_set.global_batch_size, section.feature_dim,
      section.negatives, section.temperature, section.momentum, training_set.seed,
      labels if sampling == "other_class" else None)
