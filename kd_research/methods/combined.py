"""Several objectives as one: a combination of methods ('kd,at'), their terms added.

Each method's total carries its CE term; the combination counts the first method's CE once
(``total`` = sum of the totals minus the later parts' CE shares). ``term_layout`` gives the
term names of several objectives (a run's phases share one layout of logged sums).
"""

from kd_research.methods import base


class Combined(base.Objective):
  """Several objectives' terms added: total = sum of totals, minus the repeated CE terms
  (each method's CE weight counts once: the first objective's)."""

  def __init__(self, parts):
    self.parts = tuple(parts)
    self.name = "+".join(p.name for p in self.parts)
    self.needs_teacher = any(p.needs_teacher for p in self.parts)
    self.student_taps = tuple(dict.fromkeys(t for p in self.parts for t in p.student_taps))
    self.teacher_taps = tuple(dict.fromkeys(t for p in self.parts for t in p.teacher_taps))
    self.views = tuple(dict.fromkeys(v for p in self.parts for v in p.views))
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
        total = total - base.part_ce_weight(part) * terms["ce"]
      out["total"] = out.get("total", 0.0) + total
      out.update({k: v for k, v in terms.items() if k not in out})
    return out

  def scalars(self, step):
    return {k: v for part in self.parts for k, v in part.scalars(step).items()}

  def task_term(self, terms, step):
    return self.parts[0].task_term(terms, step)  # Its CE is the one that counts.

  def first_stage(self):
    stages = [s for s in (p.first_stage() for p in self.parts) if s is not None]
    return stages[0] if stages else None


def term_layout(objectives):
  """The union of the objectives' term names, in first-seen order ('total' first)."""
  names = []
  for objective in objectives:
    names += [n for n in objective.terms_names if n not in names]
  return tuple(names)
