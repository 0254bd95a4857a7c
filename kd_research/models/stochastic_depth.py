"""Stochastic depth (timm's DropPath) whose draws do not depend on the replica count.

In training, ``DropPath`` zeroes its residual branch for an example with probability
``rate`` and scales the kept ones by 1 / (1 - rate) (timm: keep when floor(1 - rate + u) is
1, i.e. u >= rate). Where ``u`` comes from decides what a run promises:

- inside kd_research's training step, from ``uniforms(u)``: the step draws one uniform per
  example and DropPath layer, keyed on (seed, step, position in the global batch)
  (common/example_draws.py), so the masks are the same for 1, 2 or 4 replicas and after a
  resume;
- anywhere else (a user's own fit, a Keras loop), from Keras' seeded generator, as before.

Each layer has an ``index`` among its model's DropPath layers (its column of ``u``).
"""

import contextlib
import threading

import keras
from keras import ops

# The [B, layers] uniforms of the step being traced, per thread: MirroredStrategy traces
# each replica's step in a thread of its own and switches between them at cross-replica
# calls, so one replica must never see another's draws.
_TRACING = threading.local()
SALT = 17  # the draws' salt (common/example_draws.py)


def _stack():
  if not hasattr(_TRACING, "stack"):
    _TRACING.stack = []
  return _TRACING.stack


@contextlib.contextmanager
def uniforms(u):
  """Within this block (in this thread), DropPath layer k draws ``u[:, k]`` ([B, layers])."""
  _stack().append(u)
  try:
    yield
  finally:
    _stack().pop()


def columns(model):
  """How many uniforms per example the model's DropPath layers read (0: none with a rate)."""
  layers = model._flatten_layers(include_self=False)  # pylint: disable=protected-access
  active = [l.index for l in layers if isinstance(l, DropPath) and l.rate > 0]
  return max(active) + 1 if active else 0


@keras.saving.register_keras_serializable(package="kd_research")
class DropPath(keras.layers.Layer):
  """Stochastic depth of a residual branch (timm's DropPath); ``index``: its column."""

  def __init__(self, rate=0.0, index=0, **kwargs):
    super().__init__(**kwargs)
    self.rate, self.index = rate, index
    self.seed_generator = keras.random.SeedGenerator(0) if rate > 0 else None

  def call(self, x, training=None):
    if not training or self.rate <= 0:
      return x
    keep = 1.0 - self.rate
    stack = _stack()
    if stack:
      u = stack[-1][:, self.index]
    else:
      u = keras.random.uniform(ops.shape(x)[:1], seed=self.seed_generator)
    mask = ops.floor(keep + ops.cast(u, "float32"))
    mask = ops.reshape(mask, (-1,) + (1,) * (len(x.shape) - 1))
    return x * ops.cast(mask, x.dtype) / keep

  def get_config(self):
    return {**super().get_config(), "rate": self.rate, "index": self.index}
