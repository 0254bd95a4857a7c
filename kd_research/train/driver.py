"""The training driver: runs a list of phases on a built state, N steps at a time.

A run is a list of ``Phase``s (head-only warm-up, distillation, labels-only
fine-tuning, ...), each with its end step, its objective, where its teacher outputs
come from and which variables train. The driver knows nothing of roles: whoever
resolves a run (``resolve.py``) decides the phases. Between calls of the traced loop, one
helper (``is_time``) gates every periodic action: logging, validation, checkpoints
(by step and by wall time). SIGTERM saves a checkpoint at the next loop boundary and
stops with ``errors.Preempted``.
"""

import contextlib
import dataclasses
import time
from typing import Callable, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from kd_research.common import console
from kd_research.methods import base
from kd_research.methods import combined
from kd_research.train import optimizers
from kd_research.runtime import preemption
from kd_research.train import steps
from kd_research.common.errors import Preempted
from kd_research.common.errors import UserError


class TrainingDiverged(UserError):
  """A loss became NaN or infinite; the run stops before checkpointing the bad state."""


@dataclasses.dataclass
class Phase:
  """Steps up to ``end_step`` (exclusive of earlier phases) trained on ``objective``."""
  name: str
  end_step: int
  objective: base.Objective
  teacher_source: Optional[Callable] = None      # batch -> [K, B, C] teacher logits
  select_trainable: Optional[Callable] = None    # () -> None, sets the trainable set


@dataclasses.dataclass
class Cadence:
  """How often the periodic actions happen (steps; seconds for the time-based save)."""
  steps_per_epoch: int
  steps_per_loop: int = 50
  log_every_steps: int = 100
  checkpoint_every_steps: int = 500
  checkpoint_every_seconds: float = 0.0
  eval_every_epochs: int = 1


def is_time(step, every):
  """Whether a periodic action with period ``every`` falls on ``step``."""
  return every > 0 and step % every == 0


def steps_to_next(step, every):
  """Steps from ``step`` to the next multiple of ``every``."""
  return every - step % every


class Driver:
  """Runs the phases of one run; ``validate(step)`` and ``writer`` are the run's hooks."""

  def __init__(self, strategy, state, phases, cadence, global_batch_size, writer,
               validate=None, lr_fn=None, jit_compile=False, l2=0.0, seed=0):
    self.strategy, self.state, self.phases, self.cadence = strategy, state, phases, cadence
    self.seed = seed  # keys the student's stochastic depth (steps.make_train_loop)
    self.global_batch_size, self.writer, self.validate = global_batch_size, writer, validate
    self.lr_fn, self.jit_compile, self.l2 = lr_fn, jit_compile, l2
    self.total_steps = phases[-1].end_step
    self.layout = steps.train_layout(combined.term_layout([p.objective for p in phases]))
    self.scalar_names = sorted({name for p in phases for name in p.objective.scalars(0)})
    self._loops = {}

  def phase_at(self, step):
    """The phase that trains step ``step`` + 1."""
    return next(p for p in self.phases if step < p.end_step)

  def loop_for(self, phase):
    """The traced loop of ``phase`` (its trainable set chosen first), built once."""
    if phase.name not in self._loops:
      if phase.select_trainable:
        phase.select_trainable()
      self._loops[phase.name] = steps.make_train_loop(
          self.strategy, self.state.model, self.state.optimizer, self.state.step,
          self.global_batch_size, phase.objective, phase.teacher_source, self.layout,
          self.jit_compile, self.l2, self.seed)
    elif phase.select_trainable:
      phase.select_trainable()
    return self._loops[phase.name]

  def _steps_this_call(self, step, phase):
    c = self.cadence
    return min(c.steps_per_loop, phase.end_step - step,
               steps_to_next(step, c.log_every_steps),
               steps_to_next(step, c.checkpoint_every_steps),
               steps_to_next(step, c.steps_per_epoch))

  def run(self, iterator, guard=None):
    """Trains from the state's step to the last phase's end.

    ``guard`` (preemption.Guard) is the run's SIGTERM guard when the caller installed one
    earlier (a signal during set-up then stops the run at its first loop boundary).
    """
    step = self.state.current_step
    self._window = _Window(self.layout)
    self._last_save = time.perf_counter()
    with contextlib.nullcontext(guard) if guard else preemption.Guard(self.strategy) as guard:
      while step < self.total_steps:
        phase = self.phase_at(step)
        n = self._steps_this_call(step, phase)
        started = time.perf_counter()
        sums = self.loop_for(phase)(iterator, tf.constant(n)).numpy()
        self.state.train_seconds.assign_add(time.perf_counter() - started)
        self._check_finite(sums, step, n)
        step += n
        self._window.add(sums)
        self._periodic(step, phase)
        if guard.requested():
          path = self.state.save()
          raise Preempted(step, path)

  def _periodic(self, step, phase):
    c, last = self.cadence, step == self.total_steps
    if is_time(step, c.log_every_steps) or last:
      self._log(step, phase)
    epoch_end = is_time(step, c.steps_per_epoch)
    if self.validate and epoch_end and (is_time(step // c.steps_per_epoch, c.eval_every_epochs)
                                        or last):
      started = time.perf_counter()
      self.validate(step)
      self._window.eval_seconds += time.perf_counter() - started
    overdue = (c.checkpoint_every_seconds and
               time.perf_counter() - self._last_save >= c.checkpoint_every_seconds)
    if is_time(step, c.checkpoint_every_steps) or last or overdue:
      self.state.save()
      self._last_save = time.perf_counter()

  def _log(self, step, phase):
    sums = self.layout.unpack(self._window.sums)
    seconds = self._window.train_seconds()
    count = max(sums["count"], 1.0)
    metrics = {f"train/{name}": value / count for name, value in sums.items()
               if name.startswith("loss_")}
    metrics.update({
        "train/accuracy": sums["correct"] / count,
        "train/grad_norm": sums["grad_norm"] / max(sums["steps"] - sums["skipped"], 1e-9),
        "train/learning_rate": float(self.lr_fn(step)) if self.lr_fn else 0.0,
        "train/examples_per_second": sums["count"] / max(seconds, 1e-9)})
    scalars = phase.objective.scalars(step)
    metrics.update({f"train/{n}": scalars.get(n, 0.0) for n in self.scalar_names})
    loss_scale = optimizers.current_loss_scale(self.state.optimizer)
    if loss_scale is not None:  # float16: updates skipped on overflow, and the current scale.
      metrics.update({"train/skipped_steps": sums["skipped"], "train/loss_scale": loss_scale})
    self.writer.scalars(step, metrics)
    eta = (self.total_steps - step) * seconds / max(sums["steps"], 1)
    shown = (metrics["train/loss_total"], metrics["train/accuracy"],
             metrics["train/examples_per_second"], eta)
    if not console.show_progress(phase.name, step, self.total_steps, *shown):
      logging.info("%s step %d/%d  loss %.4f  acc %.4f  %.0f ex/s  ETA %.0f s", phase.name,
                   step, self.total_steps, *shown)
    self._window = _Window(self.layout)

  def _check_finite(self, sums, step, n):
    """Stops with a clear message when any loss term became NaN/inf in the last n steps."""
    for name, value in self.layout.unpack(sums).items():
      if not np.all(np.isfinite(value)):
        last = self.state.manager.latest_checkpoint or "none yet"
        raise TrainingDiverged(
            f"Training diverged: train/{name} became {value} between steps {step + 1} and "
            f"{step + n}. The last good checkpoint ({last}) is kept; no results were written. "
            "Lower the learning rate (config.optimizer.learning_rate) or check the data.")


class _Window:
  """Sums since the last log, and the wall time they took minus validation time."""

  def __init__(self, layout):
    self.sums = np.zeros(layout.size)
    self.started = time.perf_counter()
    self.eval_seconds = 0.0

  def add(self, sums):
    self.sums = self.sums + sums

  def train_seconds(self):
    return time.perf_counter() - self.started - self.eval_seconds
