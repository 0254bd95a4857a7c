"""Optimizers of the training loop: Adam/AdamW/SGD on a scheduled learning rate, the
learning-rate factor after a warm-up phase, and float16 dynamic loss scaling.

The training step all-reduces the gradients itself (it needs the global gradient for
the logged norm, steps.py), so these optimizers apply gradients as given: Keras'
optimizer would otherwise all-reduce them a second time in every replica context
(keras/src/backend/tensorflow/optimizer.py, ``_all_reduce_sum_gradients``), doubling
the dominant communication cost of a multi-GPU step.
"""

import keras
import tensorflow as tf

from kd_research.train import dot

# Variable names that ``decay_norms_biases_tokens=False`` spares from weight decay (matched
# in the variable's name): biases, BatchNorm / LayerNorm scales and offsets, a ViT's class
# and distillation tokens and position embeddings (models/vit.py): timm's rule of no decay
# on 1-D parameters and on ``no_weight_decay()`` names.
NO_DECAY_NAMES = ("bias", "gamma", "beta", "tokens", "positions")


class LRFactorAfter:
  """lr(step) = base(step) * (factor once step >= warmup_steps): lower LR after unfreezing."""

  def __init__(self, base, warmup_steps, factor):
    self.base, self.warmup_steps, self.factor = base, warmup_steps, factor
    self.name = f"{base.name} x{factor} after step {warmup_steps}"

  def __call__(self, step):
    scale = tf.where(tf.cast(step, tf.float32) >= float(self.warmup_steps), self.factor, 1.0)
    return self.base(step) * scale


class _ScheduledLR(keras.optimizers.schedules.LearningRateSchedule):
  """Adapts a ``schedules.Schedule`` to the optimizer (step = optimizer iterations)."""

  def __init__(self, schedule):
    self.schedule = schedule

  def __call__(self, step):
    return self.schedule(step)

  def get_config(self):
    return {"name": self.schedule.name}


def make_optimizer(opt_cfg, lr_schedule, loss_scale=None, distill=False):
  """Adam / AdamW / SGD+momentum with decoupled weight decay and a scheduled learning rate;
  DOT's SGD (train/dot.py) for a distillation run (``distill``) with opt_cfg.dot_delta.

  ``loss_scale=(initial, growth_steps)`` (float16 training) wraps it in Keras'
  dynamic LossScaleOptimizer: the step scales the loss, the optimizer unscales the
  gradients, skips the update when they overflowed (halving the scale) and doubles
  the scale after ``growth_steps`` finite steps.
  """
  lr = _ScheduledLR(lr_schedule)
  decay = opt_cfg.weight_decay or None
  if distill and opt_cfg.get("dot_delta"):  # Checked: SGD, no decoupled decay, no fp16.
    optimizer = dot.DistillationOrientedSGD(lr, opt_cfg.momentum, opt_cfg.dot_delta)
    apply_gradients_as_given(optimizer)
    return optimizer
  if opt_cfg.name == "adam":
    optimizer = keras.optimizers.Adam(lr, weight_decay=decay)
  elif opt_cfg.name == "adamw":
    optimizer = keras.optimizers.AdamW(lr, weight_decay=opt_cfg.weight_decay)
  else:
    optimizer = keras.optimizers.SGD(lr, momentum=opt_cfg.momentum, weight_decay=decay)
  if decay and not opt_cfg.decay_norms_biases_tokens:
    optimizer.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))
  apply_gradients_as_given(optimizer)
  if loss_scale is None:
    return optimizer
  # Every replica holds the same all-reduced gradients, so every replica's finiteness
  # check agrees (an overflow on one replica skips the step on all of them).
  return keras.optimizers.LossScaleOptimizer(optimizer, initial_scale=loss_scale[0],
                                             dynamic_growth_steps=int(loss_scale[1]))


def apply_gradients_as_given(optimizer):
  """Turns off the optimizer's own cross-replica SUM of the gradients (see module doc).

  Idempotent; for a LossScaleOptimizer it is the inner optimizer that applies them.
  """
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  if not hasattr(inner, "_all_reduce_sum_gradients"):
    raise RuntimeError(
        f"keras {keras.__version__}: the TensorFlow optimizer has no _all_reduce_sum_gradients "
        "to turn off; the training step's gradient all-reduce needs updating for this version.")
  inner._all_reduce_sum_gradients = list  # pylint: disable=protected-access


def current_loss_scale(optimizer):
  """The current dynamic loss scale (float16 training), else None."""
  if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
    return float(optimizer.dynamic_scale.numpy())
  return None
