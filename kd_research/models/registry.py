"""Model registry: name -> builder of a Keras model that outputs logits.

Every builder takes ``input_shape`` and ``num_classes`` from the dataset plus a ``width``
(base channel count or hidden units; ``None`` selects the model's default) and
``sync_bn`` (synchronised BatchNorm across replicas; plain BatchNormalization keeps
per-replica moving statistics under MirroredStrategy); pretrained backbones take
``image_size`` and ``weights`` instead. Models take raw pixel values in [0, 255] and
rescale inside, and end in a float32 Dense layer so that softmax, KL and cross-entropy
stay in float32 under mixed precision.

Feature taps: the registry's models name their stage outputs ``stage1``, ``stage2``, ...
and the pooled feature before the classifier ``pooled`` (weightless Identity layers, so
weights and numerics are those of the untapped model); ``taps.py`` reads them from the
same forward pass as the logits.

Families register themselves: a module of this package calls ``register(name)`` (as a
decorator, or one line per model); ``families()`` imports the package's modules to find
them, so adding a family is one new file.
"""

import dataclasses
import inspect
import os
from typing import Callable

from kd_research.common import plugins
from kd_research.common.errors import UserError
from kd_research.models import user

_PACKAGE = "kd_research.models"
_REGISTERED = {}
_ALIASES = {}  # a model's former name -> its name (old runs and .keras files still load)
_WRAPPERS = []  # Wrapper: models that hold several models of an entry (a DML cohort)


@dataclasses.dataclass(frozen=True)
class Wrapper:
  """A model made of several models of one entry (models/cohort.py registers one).

  ``applies(entry)``: whether the entry asks for it; ``validate(role, entry)``: its config
  checks (UserError); ``build(entry, role, input_shape, build_one)``: the model, whose parts
  ``build_one(member_entry)`` builds; ``members(model)``: the parts of a built model that
  are models of their own (evaluated and saved one by one), [] for any other model."""
  applies: Callable
  validate: Callable
  build: Callable
  members: Callable


def register_wrapper(wrapper):
  """Makes ``wrapper`` (a Wrapper) serve every model entry that it applies to."""
  _WRAPPERS.append(wrapper)
  return wrapper


def wrapper_of(entry):
  """The Wrapper that ``entry`` asks for, or None (a plain model)."""
  families()
  return next((w for w in _WRAPPERS if w.applies(entry)), None)


def members(model):
  """The models a built model holds as parts of its own (a cohort's members), in order; []
  for a plain model."""
  families()
  return next((found for found in (w.members(model) for w in _WRAPPERS) if found), [])


@dataclasses.dataclass(frozen=True)
class Family:
  """One registered model: its builder, the module that defines it, whether it is a
  pretrained backbone (image_size / weights instead of width / sync_bn)."""
  name: str
  builder: Callable
  module: str
  pretrained: bool = False


def register(name, builder=None, pretrained=False, aliases=()):
  """Registers ``builder`` as model ``name``; without a builder, a decorator. ``aliases``:
  former names, accepted wherever a model name is (configs, run identities, chains)."""
  def add(fn):
    module = getattr(fn, "__module__", None) or getattr(fn.func, "__module__", "")  # partials
    if name in _REGISTERED and _REGISTERED[name].module != module:
      raise ValueError(f"two models are named {name!r}: {_REGISTERED[name].module} and {module}")
    _REGISTERED[name] = Family(name, fn, module, pretrained)
    _ALIASES.update({alias: name for alias in aliases})
    return fn
  return add if builder is None else add(builder)


def canonical(name):
  """The model's registered name for ``name`` (itself, or the name it was renamed to)."""
  families()
  return _ALIASES.get(name, name)


def families():
  """{name: Family} of every registered model (the package's modules imported once)."""
  plugins.import_all(_PACKAGE)
  return dict(sorted(_REGISTERED.items()))


def names():
  return tuple(families())


def pretrained_names():
  """The pretrained backbones (keras.applications)."""
  return tuple(n for n, f in families().items() if f.pretrained)


def load_keras(path):
  """A saved ``.keras`` model, loaded with safe_mode (never runs code from the file) after
  every family's custom layers are registered (ShuffleNet's split/shuffle, the
  pretrained backbones' wrappers), so any model this project saved loads."""
  import keras  # pylint: disable=g-import-not-at-top
  families()
  return keras.models.load_model(path, compile=False, safe_mode=True)


def is_known(name):
  """A registered name, or a user's ``package.module:function`` (checked when built)."""
  return user.is_spec(name) or canonical(name) in families()


def load_start(path, input_shape, num_classes, where):
  """A student's starting point from a ``.keras`` file (safe mode), checked against the data."""
  if not str(path).endswith(".keras") or not os.path.isfile(path):
    raise UserError(f"{where}={path!r}: a student's starting point is an existing .keras file.")
  try:
    model = load_keras(path)
  except Exception as e:  # Keras raises many types on a corrupt or foreign file.
    raise UserError(f"{where}: cannot load {path}: {type(e).__name__}: {e}") from None
  user.check_against_data(model, f"{where} ({path})", input_shape, num_classes)
  return model


def has_drop_path(name):
  """Whether the registered model ``name`` takes a stochastic depth rate."""
  family = families().get(canonical(name)) if not user.is_spec(name) else None
  return bool(family) and "drop_path_rate" in inspect.signature(family.builder).parameters


def drop_path_names():
  """The registered models with stochastic depth."""
  return [name for name in families() if has_drop_path(name)]


def build(name, input_shape, num_classes, width=None, sync_bn=False, image_size=None,
          weights="", kwargs=None, drop_path=0.0):
  """Builds the registered model ``name`` for images of ``input_shape`` and ``num_classes``.

  ``image_size`` and ``weights`` apply to the pretrained backbones only; a user's
  ``module:function`` (models/user.py) gets ``kwargs`` instead of width and BN sync;
  ``drop_path`` is the stochastic depth rate of the models that have it.
  """
  if user.is_spec(name):
    return user.build(name, input_shape, num_classes, kwargs or {})
  if kwargs:
    raise UserError(f"model {name} is a registry model; kwargs {sorted(kwargs)} are for user "
                    "models (package.module:function). Its options are width and sync_bn.")
  registered = families()
  name = canonical(name)
  if name not in registered:
    raise UserError(f"Unknown model {name!r}; valid models: {', '.join(registered)}.")
  if width is not None and width < 0:
    raise UserError(f"Model width must be a positive integer (or 0 for the default), got {width}.")
  family = registered[name]
  if family.pretrained:
    return family.builder(tuple(input_shape), num_classes, image_size=image_size or None,
                          weights=weights)
  if weights:
    raise UserError(f"{name} has no pretrained weights; 'weights' is for "
                    f"{', '.join(pretrained_names())}.")
  if drop_path:
    if not has_drop_path(name):
      raise UserError(f"model {name} has no stochastic depth (drop_path={drop_path}); models "
                      f"with it: {', '.join(drop_path_names())}.")
    return family.builder(tuple(input_shape), num_classes, width=width or None,
                          sync_bn=sync_bn, drop_path_rate=drop_path)
  return family.builder(tuple(input_shape), num_classes, width=width or None, sync_bn=sync_bn)
