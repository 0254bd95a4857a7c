"""The distillation methods by name: every module of this package that registers a Method.

``--config.distill.method=NAME`` (or several, comma-separated: ``kd,at``) picks them; each
method's hyper-parameters live in ``config.distill.<name>`` (its ``defaults``, with their
source in ``reference``). Methods beyond KD add ``weight * loss`` to ``ce_weight * CE``;
with ``kd`` in the list, KD's own ``alpha`` weighs its CE term instead.
``logit_standardization`` modifies kd, dkd and mlkd; ``ctkd`` (a learnable temperature,
ctkd.py) kd and dkd. A method may read extra views of each image (``views_read``; MLKD's
strong view), which config.augment.views provides.

A method is found by importing the package's modules (plug-ins by registration: a new
file with a ``@base.register`` class is a new method). What this module holds beyond the
lookup: parsing a method list, the combination order, and the rule for the CTKD modifier
(which methods it may join).
"""


import ml_collections

from kd_research.common import plugins
from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.methods import combined
from kd_research.methods import ctkd
from kd_research.models import taps as taps_lib

_PACKAGE = "kd_research.methods"
MODIFIER = "ctkd"  # config.distill.ctkd: CTKD's learnable temperature for kd / dkd


def methods():
  """{name: Method class} of every registered method, in combination order."""
  plugins.import_all(_PACKAGE)
  return dict(sorted(base.REGISTERED.items(), key=lambda item: (item[1].order, item[0])))


def labels_objective(entry, sections=None, model=None, selectable=True):
  """The objective of a labels-only run of model ``entry`` (``model``, built; config.distill's
  ``sections``): the registered teacher-free objective that applies to it (DML for a
  cohort, USKD for ``objective=uskd``), else the plain labels objective. ``selectable``
  False leaves out those an entry's ``objective`` names (a distillation run's fine-tuning
  phase trains on the labels alone)."""
  plugins.import_all(_PACKAGE)
  chosen = [cls for name, cls in sorted(base.TEACHER_FREE.items())
            if name != base.Objective.name and cls.applies(entry)
            and (selectable or not cls.selectable)]
  return (chosen[0] if chosen else base.Objective).for_entry(entry, sections, model)


def teacher_free():
  """{name: class} of the teacher-free objectives a model entry's ``objective`` selects."""
  plugins.import_all(_PACKAGE)
  return {name: cls for name, cls in sorted(base.TEACHER_FREE.items()) if cls.selectable}


def names():
  """Every method's name, logit methods first."""
  return tuple(methods())


def defaults():
  """config.distill's per-method sections (each method's ``defaults``)."""
  d = ml_collections.ConfigDict()
  for name, cls in {**methods(), **teacher_free()}.items():
    if cls.defaults is not None:
      d[name] = dict(cls.defaults)
  d[MODIFIER] = dict(ctkd.DEFAULTS)  # Not a method: it modifies kd / dkd (ctkd.py).
  return d


def parse(method):
  """'kd,at' -> ('kd', 'at') in combination order; unknown names raise UserError."""
  known = names()
  requested = tuple(n.strip() for n in str(method).split(",") if n.strip())
  bad = [n for n in requested if n not in known]
  if not requested or bad:
    raise UserError(f"config.distill.method={method!r}: unknown method(s) {bad or requested}; "
                    f"valid: {', '.join(known)} (several: comma-separated, e.g. kd,at; logit "
                    "standardization: config.distill.logit_standardization=true with "
                    f"{' or '.join(having('standardizes_logits'))}).")
  if "kd" in requested and "dkd" in requested:
    raise UserError("config.distill.method: kd and dkd both distil the logits; pick one.")
  return tuple(sorted(requested, key=known.index))


def field_docs():
  """{section: {field: meaning}} of config.distill's per-method sections (and CTKD's)."""
  docs = {name: dict(cls.field_docs or {})
          for name, cls in {**methods(), **teacher_free()}.items() if cls.defaults is not None}
  docs[MODIFIER] = dict(ctkd.FIELD_DOCS)
  return docs


def section_names():
  """The names of config.distill's per-method sections (and the CTKD modifier's)."""
  return tuple(defaults())


def uncacheable(distill):
  """The methods of ``distill`` (a DistillSpec) that read teacher feature maps (the cache
  holds logits and the vector feature 'pooled' only)."""
  registered = methods()
  return [n for n in distill.methods
          if registered[n].reads_teacher_maps(distill.sections.get(n))]


def views_read(method_names, sections):
  """{view name: ([methods reading it], the first one's default ops)} of the methods
  ``method_names`` with their ``sections`` ({name: config.distill.<name>})."""
  registered, read = methods(), {}
  for n in method_names:
    for view, ops in registered[n].views_read(sections.get(n)).items():
      read.setdefault(view, ([], ops))[0].append(n)
  return read


def having(capability, names=None):
  """The methods among ``names`` (default: every registered one) whose class has the
  capability ``capability`` (a Method attribute: ctkd_modifies, standardizes_logits, ...)."""
  registered = methods()
  return [n for n in (registered if names is None else names)
          if getattr(registered[n], capability)]


def validate(distill, student_epochs):
  """Every method's own config checks of ``distill`` (a DistillSpec), active or not: a
  stray section is an error too."""
  active = distill.methods
  for name, cls in methods().items():
    cls.validate(distill, distill.where, name in active, student_epochs)
  ctkd.validate(distill, distill.where, having("ctkd_modifies", active),
                having("ctkd_modifies"))


def build(context):
  """The objective of the distillation phase: ``context.distill``'s methods (BuildContext)."""
  registered = methods()
  parts = [registered[name].from_config(context) for name in context.distill.methods]
  return parts[0] if len(parts) == 1 else combined.Combined(parts)


def build_variables(objective, student, ensemble):
  """Creates the objective's variables for the taps' shapes (``ensemble`` None: no
  teacher); returns all of them."""
  student_shapes = {t: taps_lib.shape(student, t) for t in objective.student_taps}
  teacher_shapes = [{t: taps_lib.shape(m, t) for t in objective.teacher_taps}
                    for m in (ensemble.models if ensemble is not None else ())]
  objective.build(student_shapes, teacher_shapes)
  return objective.variables
