"""The objective seam: what a training phase minimises, as per-example loss terms by name.

An objective maps (batch, student outputs, teacher outputs, step) to a dict of
per-example float32 tensors with at least ``total``; the step averages ``total``
over the global batch and logs every term as ``train/loss_<name>``. Student outputs
are {'logits': [B, C], 'features': {tap: tensor}}; teacher outputs are {'logits':
[K, B, C], 'features': [{tap: tensor} for each of the K teachers]} (features only
when the objective names taps). An objective may own trainable variables
(connectors): they train with the student, are saved in its checkpoint and are left
out of the exported model.

The methods (Hinton KD, DKD, DIST, FitNets, AT, RKD, PKT, SP, CRD; logit standardization
as a modifier of KD and DKD) are built from the config by ``methods.py``; adding one
means an Objective subclass and a line there. The loop, checkpoints and metrics do
not change. Teachers' outputs reach an objective from a *teacher source*: the live
frozen ensemble, or the teacher-output cache carried in the batch (logits, and the
vector features such as ``pooled`` that RKD, PKT and CRD read). CRD lives in
contrastive.py (memory bank).
"""

import tensorflow as tf

from kd_research import losses
from kd_research import method_losses as ml


class Objective:
  """Base class: labels-only training with per-example cross-entropy (no teacher)."""

  name = "labels"
  terms_names = ("total", "ce")
  needs_teacher = False
  student_taps = ()   # layer names whose outputs the objective reads (student)
  teacher_taps = ()   # and on every teacher

  @property
  def trainable_variables(self):
    """Variables the objective owns and trains with the student (none here)."""
    return []

  @property
  def variables(self):
    """Every variable the objective owns (with BatchNorm statistics): checkpointed."""
    return []

  def build(self, student_shapes, teacher_shapes):
    """Creates the objective's variables for the taps' shapes ({tap: shape}; per teacher)."""
    del student_shapes, teacher_shapes

  def terms(self, batch, student, teacher, step):
    """{term: [B] float32} for the local batch (see the module docstring for the inputs)."""
    del teacher, step
    ce = labelled_cross_entropy(batch, student["logits"])
    return {"total": ce, "ce": ce}

  def scalars(self, step):
    """Scalar hyper-parameters at ``step`` to log as train/<name> (none here)."""
    del step
    return {}


def labelled_cross_entropy(batch, logits):
  """Per-example CE, 0 for the transfer set's unlabelled images (batch['labelled'] = 0)."""
  ce = losses.cross_entropy(logits, batch["label"])
  return ce * batch["labelled"] if "labelled" in batch else ce


def _maybe_standardize(logits, on):
  return ml.standardize(logits) if on else logits


class HintonKD(Objective):
  """alpha * T^2 * KL(teachers_T || student_T) + (1 - alpha) * CE (Hinton et al., 2015).

  alpha and T follow schedules of the global step; several teachers are combined by
  ``combine`` (prob_mean, logit_mean, kl_sum) with ``weights`` (see losses.py).
  ``standardize``: logit standardization (Sun et al., 2024) of both networks' logits
  before the temperature (the CE term keeps the raw logits).
  """

  name = "kd"
  terms_names = ("total", "distill", "ce")
  needs_teacher = True

  def __init__(self, alpha, temperature, combine="prob_mean", weights=None, standardize=False):
    self.alpha, self.temperature = alpha, temperature
    self.combine, self.weights, self.standardize = combine, weights, standardize

  def terms(self, batch, student, teacher, step):
    logits, teacher_logits = student["logits"], teacher["logits"]
    if self.standardize:
      logits, teacher_logits = ml.standardize(logits), ml.standardize(teacher_logits)
    alpha, t = self.alpha(step), self.temperature(step)
    distill = tf.square(t) * losses.combined_distill_term(logits, teacher_logits, t,
                                                           self.combine, self.weights)
    ce = labelled_cross_entropy(batch, student["logits"])
    return {"total": alpha * distill + (1.0 - alpha) * ce, "distill": distill, "ce": ce}

  def scalars(self, step):
    return {"alpha": float(self.alpha(step)), "temperature": float(self.temperature(step))}


class _TeacherWeighted(Objective):
  """Base of the methods beyond KD: ce_weight * CE + weight * (teacher-weighted method loss)."""

  needs_teacher = True

  def __init__(self, weight, ce_weight, teacher_weights):
    self.weight, self.ce_weight, self.teacher_weights = weight, ce_weight, teacher_weights

  def method_loss(self, batch, student, teacher, k, step):
    """The method's per-example loss against teacher ``k``."""
    raise NotImplementedError

  def terms(self, batch, student, teacher, step):
    ce = labelled_cross_entropy(batch, student["logits"])
    method = tf.add_n([w * self.method_loss(batch, student, teacher, k, step)
                       for k, w in enumerate(self.teacher_weights)])
    return {"total": self.ce_weight * ce + self.weight * method, self.name: method, "ce": ce}


class DKD(_TeacherWeighted):
  """Decoupled KD (Zhao et al., 2022): ramp * (alpha TCKD + beta NCKD), ramp = min(step /
  warmup_steps, 1) (mdistiller ramps the loss in over its first epochs)."""

  name, terms_names = "dkd", ("total", "dkd", "ce")

  def __init__(self, alpha, beta, temperature, warmup_steps, ce_weight, teacher_weights,
               standardize=False):
    super().__init__(1.0, ce_weight, teacher_weights)
    self.alpha, self.beta, self.t = alpha, beta, temperature
    self.warmup_steps, self.standardize = warmup_steps, standardize

  def method_loss(self, batch, student, teacher, k, step):
    tckd, nckd = ml.dkd_terms(_maybe_standardize(student["logits"], self.standardize),
                              _maybe_standardize(teacher["logits"][k], self.standardize),
                              batch["label"], self.t)
    ramp = tf.minimum(tf.cast(step, tf.float32) / max(float(self.warmup_steps), 1.0), 1.0)
    return ramp * (self.alpha * tckd + self.beta * nckd)


def gather_global(x):
  """(x over the global batch, this replica's offset in it): an all-gather across replicas,
  so that relational losses compare every example of the global batch."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x, 0
  return ctx.all_gather(x, axis=0), ctx.replica_id_in_sync_group * tf.shape(x)[0]


class DIST(_TeacherWeighted):
  """DIST (Huang et al., 2022): beta * inter-class + gamma * intra-class relation loss."""

  name, terms_names = "dist", ("total", "dist", "ce")

  def __init__(self, weight, beta, gamma, tau, ce_weight, teacher_weights):
    super().__init__(weight, ce_weight, teacher_weights)
    self.beta, self.gamma, self.tau = beta, gamma, tau

  def method_loss(self, batch, student, teacher, k, step):
    s, t = student["logits"], teacher["logits"][k]
    s_global, _ = gather_global(s)
    t_global, _ = gather_global(t)
    return (self.beta * ml.dist_inter(s, t, self.tau)
            + self.gamma * ml.dist_intra(s_global, t_global, self.tau, tf.shape(s)[0]))


class FeatureMethod(_TeacherWeighted):
  """A method on tapped features: ``pairs`` of (student tap, teacher tap), one teacher's
  taps per teacher (the same names on every teacher)."""

  def __init__(self, weight, ce_weight, teacher_weights, pairs):
    super().__init__(weight, ce_weight, teacher_weights)
    self.pairs = tuple(pairs)
    self.student_taps = tuple(dict.fromkeys(s for s, _ in self.pairs))
    self.teacher_taps = tuple(dict.fromkeys(t for _, t in self.pairs))


class FitNets(FeatureMethod):
  """FitNets hints (Romero et al., 2015): MSE between connector(student tap) and the teacher
  tap; one connector per teacher (1x1 conv + BN for maps, linear for vectors)."""

  name, terms_names = "fitnets", ("total", "fitnets", "ce")

  def __init__(self, weight, ce_weight, teacher_weights, pairs, connector_fn):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.connector_fn, self.connectors = connector_fn, []

  def build(self, student_shapes, teacher_shapes):
    (s_tap, t_tap), = self.pairs
    self.connectors = [self.connector_fn(student_shapes[s_tap], shapes[t_tap], f"hint{k}")
                       for k, shapes in enumerate(teacher_shapes)]

  @property
  def trainable_variables(self):
    return [v for c in self.connectors for v in c.trainable_variables]

  @property
  def variables(self):
    return [v for c in self.connectors for v in c.variables]

  def method_loss(self, batch, student, teacher, k, step):
    (s_tap, t_tap), = self.pairs
    projected = self.connectors[k](student["features"][s_tap], training=True)
    return ml.hint(projected, teacher["features"][k][t_tap])


class HintStage(Objective):
  """FitNets' first stage: the hint loss of ``fitnets`` alone (no CE), its connectors shared."""

  name, terms_names, needs_teacher = "hint", ("total", "fitnets"), True

  def __init__(self, fitnets):
    self.fitnets = fitnets
    self.student_taps, self.teacher_taps = fitnets.student_taps, fitnets.teacher_taps

  @property
  def trainable_variables(self):
    return self.fitnets.trainable_variables

  def terms(self, batch, student, teacher, step):
    hint = tf.add_n([w * self.fitnets.method_loss(batch, student, teacher, k, step)
                     for k, w in enumerate(self.fitnets.teacher_weights)])
    return {"total": self.fitnets.weight * hint, "fitnets": hint}


class AttentionTransfer(FeatureMethod):
  """AT (Zagoruyko & Komodakis, 2017): sum over stage pairs of the attention-map loss."""

  name, terms_names = "at", ("total", "at", "ce")

  def __init__(self, weight, ce_weight, teacher_weights, pairs, p=2.0):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.p = p

  def method_loss(self, batch, student, teacher, k, step):
    return tf.add_n([ml.attention(student["features"][s], teacher["features"][k][t], self.p)
                     for s, t in self.pairs])


class Relational(FeatureMethod):
  """RKD, PKT or SP on one (student tap, teacher tap) pair over the global batch."""

  def __init__(self, name, weight, ce_weight, teacher_weights, pairs, **options):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    self.name, self.terms_names, self.options = name, ("total", name, "ce"), options

  def method_loss(self, batch, student, teacher, k, step):
    (s_tap, t_tap), = self.pairs
    s, t = student["features"][s_tap], teacher["features"][k][t_tap]
    s_global, offset = gather_global(s)
    t_global, _ = gather_global(t)
    if self.name == "rkd":
      return ml.rkd(s, t, s_global, t_global, offset, **self.options)
    return {"pkt": ml.pkt, "sp": ml.sp}[self.name](s, t, s_global, t_global)


class Combined(Objective):
  """Several objectives' terms added: total = sum of totals, minus the repeated CE terms
  (each method's CE weight counts once: the first objective's)."""

  def __init__(self, parts):
    self.parts = tuple(parts)
    self.name = "+".join(p.name for p in self.parts)
    self.needs_teacher = any(p.needs_teacher for p in self.parts)
    self.student_taps = tuple(dict.fromkeys(t for p in self.parts for t in p.student_taps))
    self.teacher_taps = tuple(dict.fromkeys(t for p in self.parts for t in p.teacher_taps))
    self.terms_names = term_layout(self.parts)

  @property
  def trainable_variables(self):
    return [v for p in self.parts for v in p.trainable_variables]

  @property
  def variables(self):
    return [v for p in self.parts for v in p.variables]

  def build(self, student_shapes, teacher_shapes):
    for part in self.parts:
      part.build(student_shapes, teacher_shapes)

  def terms(self, batch, student, teacher, step):
    out = {}
    for index, part in enumerate(self.parts):
      terms = part.terms(batch, student, teacher, step)
      total = terms.pop("total")
      if index:  # Later parts add their method term only; the CE counts once.
        total = total - part_ce_weight(part) * terms["ce"]
      out["total"] = out.get("total", 0.0) + total
      out.update({k: v for k, v in terms.items() if k not in out})
    return out

  def scalars(self, step):
    return {k: v for part in self.parts for k, v in part.scalars(step).items()}


def part_ce_weight(part):
  """The CE weight inside a part's total ((1 - alpha) is not constant for KD: refused)."""
  return getattr(part, "ce_weight", 0.0)


def live_teachers(ensemble, taps=()):
  """Teacher source: the frozen ensemble run on the batch's images (logits and taps)."""
  if not taps:
    return lambda batch: {"logits": ensemble.logits(batch["image"])}
  return lambda batch: ensemble.outputs(batch["image"], taps)


def cached_teachers(batch):
  """Teacher source: the teacher-output cache carried in the batch ([B, K, C] -> [K, B, C])."""
  return {"logits": tf.transpose(batch["teacher_logits"], [1, 0, 2])}


def cache_extras(outputs):
  """The cache's arrays as training-batch fields: teacher_logits, teacher_feature_<tap>."""
  return {("teacher_logits" if key == "logits" else f"teacher_feature_{key}"): value
          for key, value in outputs.items()}


def cached_teachers_with(taps):
  """Teacher source from the cache with the cached vector features ``taps`` ([B, K, D])."""
  if not taps:
    return cached_teachers

  def source(batch):
    count = batch["teacher_logits"].shape[1]
    return {"logits": tf.transpose(batch["teacher_logits"], [1, 0, 2]),
            "features": [{t: batch[f"teacher_feature_{t}"][:, k] for t in taps}
                         for k in range(count)]}

  return source


def term_layout(objectives):
  """The union of the objectives' term names, in first-seen order ('total' first)."""
  names = []
  for objective in objectives:
    names += [n for n in objective.terms_names if n not in names]
  return tuple(names)
