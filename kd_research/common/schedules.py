"""Schedules for alpha, temperature and learning rate: pure, tf-traceable functions of the step.

A schedule maps the global step (a Python number or a tensor, scalar or vector)
to a float32 value. The shape is chosen by name and described by a few numbers;
progress through the run is ``p = clip(step / total_steps, 0, 1)``:

  constant     start
  linear       start + (end - start) * p
  cosine       end + (start - end) * (1 + cos(pi * p)) / 2
  exponential  start * (end / start) ** p          (start, end > 0)
  piecewise    values[i] where boundaries[i-1] <= p < boundaries[i]
               (boundaries are fractions of the run, strictly increasing in (0, 1))

Any of them can be preceded by a linear warmup from ``warmup_from`` to the
schedule's value over ``warmup_steps``. Because the step enters as a tensor, the
graph is traced once and the value moves with the step without retracing.
"""

import dataclasses
import math

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

from kd_research.common.errors import UserError

NAMES = ("constant", "linear", "cosine", "exponential", "piecewise")


def parse_floats(text, what):
  """Parses '0.3,0.6' (or a list/tuple of numbers) into a tuple of floats."""
  if isinstance(text, (list, tuple)):
    return tuple(float(v) for v in text)
  text = str(text).strip()
  if not text:
    return ()
  try:
    return tuple(float(v) for v in text.split(","))
  except ValueError:
    raise UserError(f"{what} must be comma-separated numbers such as '0.5,0.8', got {text!r}.")


class Schedule:
  """A named schedule over ``total_steps``; call it with a step to get a float32 value."""

  def __init__(self, name, total_steps, start, end=None, boundaries=(), values=(),
               warmup_steps=0, warmup_from=0.0, what="schedule"):
    if name not in NAMES:
      raise UserError(f"Unknown {what} {name!r}; valid schedules: {', '.join(NAMES)}.")
    self.name, self.what = name, what
    self.total_steps = max(int(total_steps), 1)
    self.start = float(start)
    self.end = self.start if end is None else float(end)
    self.boundaries = parse_floats(boundaries, f"{what} boundaries")
    self.values = parse_floats(values, f"{what} values")
    self.warmup_steps = int(warmup_steps)
    self.warmup_from = float(warmup_from)
    self._check()

  def _check(self):
    if self.warmup_steps < 0:
      raise UserError(f"{self.what} warmup_steps must be >= 0, got {self.warmup_steps}.")
    if self.name == "exponential" and (self.start <= 0 or self.end <= 0):
      raise UserError(f"{self.what} 'exponential' needs start > 0 and end > 0, "
                      f"got start={self.start}, end={self.end}.")
    if self.name == "piecewise":
      b, v = self.boundaries, self.values
      if len(v) != len(b) + 1:
        raise UserError(f"{self.what} 'piecewise' needs one more value than boundaries, got "
                        f"{len(b)} boundaries {list(b)} and {len(v)} values {list(v)}.")
      if any(not 0 < x < 1 for x in b) or any(y <= x for x, y in zip(b, b[1:])):
        raise UserError(f"{self.what} 'piecewise' boundaries must be strictly increasing "
                        f"fractions of the run in (0, 1), got {list(b)}.")

  def _formula(self, step, xp):
    """The schedule with array module ``xp`` (NumPy for checks, tf.experimental.numpy in graphs)."""
    step = xp.asarray(step, dtype=xp.float32)
    p = xp.clip(step / float(self.total_steps), 0.0, 1.0)
    if self.name == "constant":
      value = self.start + 0.0 * p
    elif self.name == "linear":
      value = self.start + (self.end - self.start) * p
    elif self.name == "cosine":
      value = self.end + (self.start - self.end) * 0.5 * (1.0 + xp.cos(math.pi * p))
    elif self.name == "exponential":
      value = self.start * xp.power(xp.asarray(self.end / self.start, dtype=xp.float32), p)
    else:
      bounds = xp.asarray(self.boundaries or (2.0,), dtype=xp.float32)
      index = xp.sum(xp.asarray(p[..., None] >= bounds, dtype=xp.int32), axis=-1)
      value = xp.take(xp.asarray(self.values, dtype=xp.float32), index)
    if self.warmup_steps > 0:
      ramp = self.warmup_from + (value - self.warmup_from) * (step / float(self.warmup_steps))
      value = xp.where(step < float(self.warmup_steps), ramp, value)
    return xp.asarray(value, dtype=xp.float32)

  def __call__(self, step):
    """The value at ``step`` (tensor or number, any shape) as a float32 tensor; traceable."""
    return tf.convert_to_tensor(self._formula(tf.cast(step, tf.float32), tnp))

  def values_over_run(self):
    """The schedule at every step of the run (sampled for very long runs), in NumPy only."""
    steps = np.unique(np.linspace(0, self.total_steps, min(self.total_steps + 1, 20001)).round())
    return self._formula(steps, np)

  def check_range(self, low, high, low_inclusive=True, what_range=None):
    """Raises UserError if any value over the run leaves the allowed range."""
    v = self.values_over_run()
    if not np.isfinite(v).all():
      raise UserError(f"{self.what} ({self.name}, start={self.start}, end={self.end}) is not "
                      "finite during the run; give finite values.")
    bad_low = v < low if low_inclusive else v <= low
    if bad_low.any() or (v > high).any():
      rng = what_range or f"{'[' if low_inclusive else '('}{low}, {high}]"
      raise UserError(f"{self.what} ({self.name}, start={self.start}, end={self.end}) leaves "
                      f"{rng} during the run: min {v.min():.4g}, max {v.max():.4g}.")


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  """A schedule entry of the config, parsed and checked once (``parse``); ``over`` lays it
  over a run's number of steps, which is known only once the data is."""
  kind: str
  start: float
  end: float
  boundaries: tuple
  values: tuple
  warmup_steps: int
  warmup_from: float
  what: str

  def over(self, total_steps):
    """The ``Schedule`` of this entry over ``total_steps``."""
    return Schedule(self.kind, total_steps, self.start, self.end, self.boundaries, self.values,
                    self.warmup_steps, self.warmup_from, self.what)

  def check_range(self, low, high, low_inclusive=True, what_range=None):
    """UserError if the schedule leaves the range anywhere over a run (its shape is the
    same for any length: checked on 1000 steps)."""
    self.over(1000).check_range(low, high, low_inclusive, what_range)


def parse(entry, what):
  """A schedule entry (config.schedule: kind, start, end, ...) as a checked ``ScheduleSpec``,
  e.g. ``distill.alpha = {kind: 'cosine', start: 0.9, end: 0.3, ...}``."""
  # Item access: ``values`` is also the name of a ConfigDict method.
  numbers = [("start", entry["start"]), ("end", entry["end"]),
             ("warmup_from", entry["warmup_from"])] + [
                 (f"values[{i}]", v) for i, v in enumerate(entry["values"])]
  for field, value in numbers:
    if not np.isfinite(float(value)):
      raise UserError(f"{what}.{field}={value}: a schedule's values must be finite numbers "
                      "(NaN and infinity are refused before any step).")
  spec = ScheduleSpec(
      kind=entry["kind"], start=float(entry["start"]), end=float(entry["end"]),
      boundaries=parse_floats(entry["boundaries"], f"{what} boundaries"),
      values=parse_floats(entry["values"], f"{what} values"),
      warmup_steps=int(entry["warmup_steps"]), warmup_from=float(entry["warmup_from"]),
      what=what)
  spec.over(1)  # The shape's own checks (kind, piecewise boundaries, warm-up).
  return spec


def describe(entry):
  """'0.7' for a constant schedule, '0.9->0.3 linear' otherwise (for labels and reports)."""
  if entry["kind"] == "constant":
    return f"{entry['start']:g}"
  return f"{entry['start']:g}->{entry['end']:g} {entry['kind']}"
