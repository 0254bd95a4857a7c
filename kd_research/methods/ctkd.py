"""Curriculum temperature (CTKD; Li et al., AAAI 2023): a modifier of the methods that
soften logits by a temperature (kd, dkd).

``config.distill.ctkd.enabled=true`` replaces the method's temperature by a learnable one,
T = t_start + t_range * sigmoid(v), whose one variable v (initial value ``init``) trains
with the student through a gradient reversal layer: the forward pass is the identity, the
backward pass multiplies v's gradient by -lambda, so v climbs the distillation loss the
student descends (the adversarial "hard" temperature), with the strength lambda following
a cosine curriculum over the first ``decay_epochs`` epochs:

    lambda(e) = lambda_max * (1 - cos(pi * min(e, decay_epochs) / decay_epochs)) / 2,

e = 1 + the epoch index (constant within an epoch, as the reference sets it per epoch).
Defaults from the reference's CIFAR script (github zhengli97/CTKD,
scripts/run_cifar_distill.sh: --t_start 1 --t_end 20 --decay_max 0 --decay_min -1
--decay_loops 10; models/temp_global.py: v starts at 1, so T starts at 15.62). The
reference's "t_end" is the range added to t_start (T lies in (1, 21)), called t_range here.
v is checkpointed with the student and never exported; T and lambda are logged as
``train/temperature`` and ``train/ctkd_lambda``.
"""

import math

import tensorflow as tf

from kd_research.common.errors import UserError

DEFAULTS = dict(enabled=False, t_start=1.0, t_range=20.0, init=1.0, lambda_max=1.0,
                decay_epochs=10)
REFERENCE = "github zhengli97/CTKD scripts/run_cifar_distill.sh, models/temp_global.py"
FIELD_DOCS = dict(
    enabled="true: the method's temperature becomes CTKD's learnable one",
    t_start="lowest temperature: T = t_start + t_range * sigmoid(v)",
    t_range="range of the temperature above t_start (the reference's t_end)",
    init="initial value of v (1: T starts at t_start + 0.731 t_range)",
    lambda_max="largest strength of the gradient reversal",
    decay_epochs="epochs of the cosine curriculum that raises the strength to lambda_max")


def curriculum(step, steps_per_epoch, lambda_max, decay_epochs):
  """lambda at ``step`` (float32 tensor): the cosine curriculum above."""
  epoch = tf.cast(step // max(int(steps_per_epoch), 1) + 1, tf.float32)
  progress = tf.minimum(epoch, float(decay_epochs)) / float(decay_epochs)
  return lambda_max * (1.0 - tf.cos(math.pi * progress)) / 2.0


def reverse_gradient(x, strength):
  """The identity forward; the gradient times -strength backward."""
  @tf.custom_gradient
  def reversed_(value):
    def grad(upstream):
      return -tf.cast(strength, upstream.dtype) * upstream
    return tf.identity(value), grad
  return reversed_(x)


class LearnableTemperature:
  """A temperature schedule's stand-in: called with the step, it returns T (a float32
  scalar tensor) through the reversal layer; ``variables`` hold v once ``build`` ran."""

  def __init__(self, section, steps_per_epoch):
    self.t_start, self.t_range = float(section.t_start), float(section.t_range)
    self.init, self.lambda_max = float(section.init), float(section.lambda_max)
    self.decay_epochs, self.steps_per_epoch = int(section.decay_epochs), steps_per_epoch
    self.logit = None

  def build(self):
    if self.logit is None:
      self.logit = tf.Variable(self.init, dtype=tf.float32, name="ctkd_temperature_logit")

  @property
  def variables(self):
    return [] if self.logit is None else [self.logit]

  def strength(self, step):
    return curriculum(step, self.steps_per_epoch, self.lambda_max, self.decay_epochs)

  def __call__(self, step):
    if self.logit is None:  # Built in the strategy's scope with the objective's variables.
      raise RuntimeError("LearnableTemperature used before build()")
    v = reverse_gradient(tf.convert_to_tensor(self.logit), self.strength(step))
    return self.t_start + self.t_range * tf.sigmoid(v)

  def scalars(self, step):
    """T and lambda at ``step`` (before build: T from the initial value)."""
    v = self.init if self.logit is None else self.logit
    t = self.t_start + self.t_range * tf.sigmoid(tf.cast(v, tf.float32))
    return {"temperature": float(t), "ctkd_lambda": float(self.strength(step))}


def temperature(ctx, fixed):
  """The temperature a kd / dkd method uses: ``fixed`` (a schedule or a number), or a
  LearnableTemperature when config.distill.ctkd is enabled."""
  section = ctx.section("ctkd")
  return LearnableTemperature(section, ctx.steps_per_epoch) if section.enabled else fixed


def validate(distill, where, modified, modifiable):
  """Checks config.distill.ctkd before any run (UserError naming the field): ``modified``,
  the configured methods it applies to, must not be empty; ``modifiable`` names them all."""
  s = distill.section("ctkd")
  if not s.enabled:
    return
  if not modified:
    raise UserError(f"{where}.ctkd.enabled=true modifies {' or '.join(modifiable)} (the "
                    f"temperature they soften the logits by); method is {distill.method!r}.")
  checks = ((s.t_start > 0, "t_start must be > 0 (T = t_start + t_range * sigmoid(v))"),
            (s.t_range > 0, "t_range must be > 0"),
            (s.lambda_max >= 0, "lambda_max must be >= 0 (the reversal's strength)"),
            (isinstance(s.decay_epochs, int) and s.decay_epochs >= 1,
             "decay_epochs must be an integer >= 1 (the curriculum's length)"))
  for ok, message in checks:
    if not ok:
      raise UserError(f"{where}.ctkd: {message}; got t_start={s.t_start}, "
                      f"t_range={s.t_range}, lambda_max={s.lambda_max}, "
                      f"decay_epochs={s.decay_epochs!r}.")


def value(temperature, step):
  """T at ``step`` of a schedule, a LearnableTemperature or a plain number."""
  return temperature(step) if callable(temperature) else temperature


class OwnsTemperature:
  """Mixin for kd / dkd: ``self.temperature`` may be a LearnableTemperature, whose variable
  the method then owns (built with the method's variables, trained, checkpointed)."""

  temperature = None

  def _learnable(self):
    return isinstance(self.temperature, LearnableTemperature)

  def build(self, student_shapes, teacher_shapes):
    del student_shapes, teacher_shapes
    if self._learnable():
      self.temperature.build()

  @property
  def trainable_variables(self):
    return self.temperature.variables if self._learnable() else []

  @property
  def variables(self):
    return self.trainable_variables

  def temperature_scalars(self, step):
    """{temperature, ctkd_lambda} when learnable, else {} (the caller logs its own T)."""
    return self.temperature.scalars(step) if self._learnable() else {}
