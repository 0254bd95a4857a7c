"""The objective seam and the base classes every distillation method builds on.

An objective maps (batch, student outputs, teacher outputs, step) to a dict of
per-example float32 tensors with at least ``total``; the step averages ``total`` over
the global batch and logs every term as ``train/loss_<name>``. Student outputs are
{'logits': [B, C], 'features': {tap: tensor}}; teacher outputs are {'logits': [K, B, C],
'features': [{tap: tensor} for each of the K teachers]} (features only when the
objective names taps). An objective that reads extra views (``views``) also gets
{'views': {name: outputs of that view}} in both. An objective may own variables (connectors, embedding heads,
memory banks): they train with the student, live in its checkpoint and are left out of
the exported model.

A method is one module of this package holding one ``Method`` subclass decorated with
``@register``: its name, its defaults (``config.distill.<name>``) with their source, how
it builds itself from the config (``from_config``) and its loss. ``registry.py`` finds
the modules; nothing else lists methods: what a method can do (combine with CTKD or logit
standardization, serve from the teacher cache, read extra views) is an attribute of its class.
"""

import dataclasses
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.data import views as views_lib
from kd_research.methods import losses
from kd_research.models import taps as taps_lib

REGISTERED = {}  # name -> Method subclass, filled by @register
# What the tap fields of the methods that read one pair of taps mean (their field_docs).
TAP_DOCS = dict(
    student_tap="student tap: a layer name, or pooled / last_stage / middle_stage",
    teacher_tap="teacher tap: the same names, on every teacher")
TEACHER_FREE = {}  # name -> Objective of labels-only runs, filled by @register_teacher_free


def register_teacher_free(cls):
  """Class decorator: an objective with no teacher (``needs_teacher`` False) that a
  labels-only run picks when its ``applies(entry)`` says so (the plain labels objective
  otherwise); built by ``for_entry(entry)``."""
  if cls.name in TEACHER_FREE and TEACHER_FREE[cls.name] is not cls:
    raise ValueError(f"two objectives are named {cls.name!r}")
  TEACHER_FREE[cls.name] = cls
  return cls


def register(cls):
  """Class decorator: makes ``cls`` (a Method with a unique ``name``) selectable by name."""
  if cls.name in REGISTERED and REGISTERED[cls.name] is not cls:
    raise ValueError(f"two methods are named {cls.name!r}: {REGISTERED[cls.name]} and {cls}")
  REGISTERED[cls.name] = cls
  return cls


@dataclasses.dataclass
class TrainingSet:
  """What the training split looks like to a method that indexes it (CRD): its size, its
  labels (None when the transfer set hides some), the global batch size and the seed.

  ``labels_of()`` gives the labels on demand: a streamed split reads them in a pass over
  its records, which only a method that asks for them should pay."""
  num_examples: int
  labels_of: Optional[Callable[[], np.ndarray]]
  global_batch_size: int
  seed: int

  @property
  def labels(self):
    return None if self.labels_of is None else self.labels_of()


@dataclasses.dataclass
class BuildContext:
  """Everything a method may read when it is built for a run."""
  distill: object          # the run's DistillSpec (methods/distill_spec.py)
  student: object          # the student model (taps by layer name)
  teacher: object          # the first teacher model (every teacher has the same taps)
  teacher_weights: list    # normalised per-teacher weights
  steps_per_epoch: int
  distill_steps: int
  training_set: Optional[TrainingSet] = None
  teachers: tuple = ()     # every teacher model (OFD reads each one's BatchNorm)

  def section(self, name):
    return self.distill.section(name)

  def tap_pair(self, section):
    """[(student tap, teacher tap)] from the section's student_tap / teacher_tap."""
    return [(taps_lib.resolve(self.student, section.student_tap, "student"),
             taps_lib.resolve(self.teacher, section.teacher_tap, "teacher"))]


def f32(x):
  return tf.cast(x, tf.float32)


def flatten(x):
  """[B, ...] -> [B, D] in float32."""
  x = f32(x)
  return tf.reshape(x, [tf.shape(x)[0], -1])


def kl_rows(p, log_q):
  """sum_c p log p - p log q per row, with 0 log 0 = 0."""
  return tf.reduce_sum(tf.math.xlogy(p, p) - p * log_q, -1)


def gather_global(x):
  """(x over the global batch, this replica's offset in it): an all-gather across replicas,
  so that relational losses compare every example of the global batch."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return x, 0
  return ctx.all_gather(x, axis=0), ctx.replica_id_in_sync_group * tf.shape(x)[0]


def global_mean(x):
  """Mean of every element of x over the global batch (an all-reduce across replicas)."""
  ctx = tf.distribute.get_replica_context()
  total, count = tf.reduce_sum(x), tf.cast(tf.size(x), tf.float32)
  if ctx is not None and ctx.num_replicas_in_sync > 1:
    total, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
  return total / count


def ramp(step, steps):
  """min(step / steps, 1) as float32: a loss ramped in linearly over ``steps`` (DKD's and
  ReviewKD's warm-up)."""
  return tf.minimum(tf.cast(step, tf.float32) / max(float(steps), 1.0), 1.0)


def labelled_cross_entropy(batch, logits):
  """Per-example CE, 0 for the transfer set's unlabelled images (batch['labelled'] = 0)."""
  ce = losses.cross_entropy(logits, batch["label"])
  return ce * batch["labelled"] if "labelled" in batch else ce


class Objective:
  """Base class: labels-only training with per-example cross-entropy (no teacher)."""

  name = "labels"
  terms_names = ("total", "ce")
  needs_teacher = False
  student_taps = ()   # layer names whose outputs the objective reads (student)
  teacher_taps = ()   # and on every teacher
  views = ()          # extra views of the batch it reads (data/views.py), by name

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

  def task_term(self, terms, step):
    """The per-example task (label) part of ``terms['total']``; the rest is distillation.
    DOT's optimizer takes their gradients apart (train/dot.py). Labels only: all of it."""
    del step
    return terms["total"]

  def scalars(self, step):
    """Scalar hyper-parameters at ``step`` to log as train/<name> (none here)."""
    del step
    return {}

  def first_stage(self):
    """(objective, epochs) of a stage that runs before this one (FitNets' hint), or None."""
    return None

  # Teacher-free objectives: ``selectable`` ones are named by a model entry's ``objective``
  # (USKD); ``defaults`` / ``field_docs`` / ``reference``: their config.distill section.
  selectable = False
  defaults = None
  field_docs = None
  reference = ""

  @classmethod
  def applies(cls, entry):
    """Whether a labels-only run of model ``entry`` trains with this objective (the plain
    labels objective is the one chosen when no other applies)."""
    del entry
    return False

  @classmethod
  def for_entry(cls, entry, sections, model):
    """The objective for a labels-only run of model ``entry`` (``model`` built), with
    config.distill's ``sections`` ({name: section})."""
    del entry, sections, model
    return cls()


register_teacher_free(Objective)


class Method(Objective):
  """A registered distillation method. Subclasses set the class attributes and
  ``from_config``; ``order`` places it in a combination ('kd,at'): logit methods first,
  since the first part's CE weight is the one that counts."""

  needs_teacher = True
  kind = "logit"        # 'logit' or 'feature' (reads intermediate features)
  order = 100           # position in a combination and in listings
  # defaults: config.distill.<name> (None: no section); reference: where the defaults come
  # from; field_docs: {field of defaults: what it means} (docs/config.md's tables).
  # Capabilities, read by the config checks and the tools (no list of names elsewhere):
  ctkd_modifies = False         # CTKD's learnable temperature may replace its T (ctkd.py)
  standardizes_logits = False   # config.distill.logit_standardization applies to it
  splits_target_class = False   # its loss splits the target class from the rest: refuses
                                # mixup/cutmix, whose images have two
  bank_field = None             # a section field counting examples drawn from the dataset
                                # (CRD's negatives): at most the training set's size - 1

  def task_term(self, terms, step):
    """ce_weight * CE: the part of a method's total that reads the labels."""
    del step
    return part_ce_weight(self) * terms["ce"]

  @classmethod
  def from_config(cls, ctx):
    """The method for one run, from ``ctx.distill`` (a BuildContext)."""
    raise NotImplementedError

  @classmethod
  def reads_teacher_maps(cls, section):
    """Whether it reads teacher feature maps (which the teacher-output cache does not hold)."""
    del section
    return False

  @classmethod
  def views_read(cls, section):
    """{name: default ops} of the extra views of each image it reads (data/views.py), e.g.
    MLKD's strong view: config.augment.views may define the name, else the default ops
    make it; the student and the live teachers then also run on each."""
    del section
    return {}

  @classmethod
  def validate(cls, distill, where, active, student_epochs):
    """Checks config.distill for this method before any run starts (UserError)."""
    del distill, where, active, student_epochs


class TeacherWeighted(Method):
  """Methods beyond KD: ce_weight * CE + weight * (teacher-weighted method loss)."""

  def __init__(self, weight, ce_weight, teacher_weights):
    self.weight, self.ce_weight, self.teacher_weights = weight, ce_weight, teacher_weights

  @property
  def terms_names(self):
    return ("total", self.name, "ce")

  def method_loss(self, batch, student, teacher, k, step):
    """The method's per-example loss against teacher ``k``."""
    raise NotImplementedError

  def terms(self, batch, student, teacher, step):
    ce = labelled_cross_entropy(batch, student["logits"])
    method = tf.add_n([w * self.method_loss(batch, student, teacher, k, step)
                       for k, w in enumerate(self.teacher_weights)])
    return {"total": self.ce_weight * ce + self.weight * method, self.name: method, "ce": ce}


class FeatureMethod(TeacherWeighted):
  """A method on tapped features: ``pairs`` of (student tap, teacher tap), the same tap
  names on every teacher."""

  kind = "feature"

  def __init__(self, weight, ce_weight, teacher_weights, pairs):
    super().__init__(weight, ce_weight, teacher_weights)
    self.pairs = tuple(pairs)
    self.student_taps = tuple(dict.fromkeys(s for s, _ in self.pairs))
    self.teacher_taps = tuple(dict.fromkeys(t for _, t in self.pairs))

  @classmethod
  def reads_teacher_maps(cls, section):
    return section.teacher_tap != "pooled"


class OwnsModules:
  """Mixin for a method that owns Keras modules (connectors, regressors, fusion modules) in
  ``self.modules`` and plain variables in ``self.owned``: trained with the student, in its
  checkpoint (BatchNorm statistics too), never exported."""

  modules = ()
  owned = ()

  @property
  def trainable_variables(self):
    return ([v for m in self.modules for v in m.trainable_variables]
            + [v for v in self.owned if v.trainable])

  @property
  def variables(self):
    return [v for m in self.modules for v in m.variables] + list(self.owned)


class ReadsView:
  """Mixin for a method that reads one extra view of each image (MLKD's and CRLD's strong
  view): its section's ``view`` names it and ``view_ops`` gives the ops that make it unless
  config.augment.views defines that name (data/views.py)."""

  @classmethod
  def views_read(cls, section):
    return {section.view: section.view_ops}

  @staticmethod
  def check_view(section):
    """UserError for a bad view name or ops that mix labels."""
    views_lib.parse(f"{section.view}={section.view_ops}")


class RelationalMethod(FeatureMethod):
  """A feature method that relates the examples of the global batch to each other on one
  (student tap, teacher tap) pair: subclasses implement ``relation``."""

  def relation(self, s_local, t_local, s_global, t_global, offset):
    """Per-example loss of the local rows, which are global rows offset, offset + 1, ..."""
    raise NotImplementedError

  def method_loss(self, batch, student, teacher, k, step):
    (s_tap, t_tap), = self.pairs
    s, t = student["features"][s_tap], teacher["features"][k][t_tap]
    s_global, offset = gather_global(s)
    t_global, _ = gather_global(t)
    return self.relation(s, t, s_global, t_global, offset)

  @classmethod
  def from_config(cls, ctx):
    section = ctx.section(cls.name)
    return cls(section.weight, ctx.distill.ce_weight, ctx.teacher_weights,
               ctx.tap_pair(section))


def part_ce_weight(part):
  """The CE weight inside a part's total ((1 - alpha) is not constant for KD: refused)."""
  return getattr(part, "ce_weight", 0.0)


def require(condition, message):
  """Raises UserError(message) unless ``condition``: for methods' config checks."""
  if not condition:
    raise UserError(message)
