"""The Python API: train a teacher, distil a student, evaluate, export and report from Python.

    import kd_research as kd
    teacher = kd.train_teacher("resnet_article", data="fashion_mnist", workdir="runs/nb/teacher")
    student = kd.distill(student=my_keras_model, teacher=teacher, method="dkd",
                         workdir="runs/nb/dkd", overrides={"distill.dkd.beta": 4.0})
    student.test_accuracy, student.model()

Every function builds the same config a ``./launch.sh`` command would (an experiment
module's config, then ``overrides`` as ``{"a.b": value}``, the CLI's ``--config.a.b=value``)
and runs it through the same resolver and driver: the same run directory (config.json,
checkpoints, TensorBoard events, results.json), the same resume (rerunning a call
continues or reports the finished run), the same checks and errors (``UserError``).

Models (``model``, ``student``, ``teacher``) can be a registry name (``"resnet20"``), the
user's ``"package.module:function"``, a ``.keras`` file (a teacher to use as it is; a
student or a teacher to train from), a ``keras.Model`` object (saved into the inputs
directory, named by its weights' digest, then used as that file) or a function
``(input_shape=, num_classes=, **kwargs) -> keras.Model`` (by its import path where it
has one, else called once under the run's seed and saved like a model). Data: a
``--config.dataset`` value (``"cifar10"``, ``"folder:PATH"``, ``"tfds:NAME"``, ...) or
NumPy arrays ``(x_train, y_train, x_test, y_test)`` (saved once as an ``npz:`` file).
Inputs live in ``inputs/`` beside the run directory, so ``--overwrite`` of a run never
deletes them.
"""

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import os

from kd_research.common import console

console.import_tensorflow(console.verbose_requested())

# pylint: disable=g-import-not-at-top,wrong-import-position
import keras
import numpy as np

from kd_research import config as config_lib
from kd_research import run_spec
from kd_research.campaign import pipeline
from kd_research.common import fileio
from kd_research.common.errors import UserError
from kd_research.data import arrays
from kd_research.models import registry as model_registry
from kd_research.report import pages
from kd_research.runtime import distribute
from kd_research.train import evaluation
from kd_research.train import results as results_lib
from kd_research.train import end_to_end
from kd_research.train import workdir as workdir_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

EXPERIMENTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "experiments")


@dataclasses.dataclass(frozen=True)
class RunResult:
  """A finished run: its directory and its results.json as a dict."""
  workdir: str
  results: dict

  @property
  def test_accuracy(self):
    return self.results["test_accuracy"]

  @property
  def model_path(self):
    """The trained model (``.keras``, loads with safe mode)."""
    return os.path.join(self.workdir, "model.keras")

  def model(self):
    """The trained Keras model."""
    return model_registry.load_keras(self.model_path)

  def __repr__(self):
    return (f"RunResult({self.results.get('role')} {self.results.get('model')}: test accuracy "
            f"{100 * self.test_accuracy:.2f}% over {self.results.get('test_count')} examples, "
            f"{self.results.get('params', 0):,} params, in {self.workdir})")


def load_experiment(name, preset=None):
  """``get_config(preset)`` of experiments/<name>.py, imported by path (the experiments are
  files of the repository, not a package); an unknown name raises UserError."""
  path = os.path.join(EXPERIMENTS_DIR, name + ".py")
  if not os.path.isfile(path):
    found = sorted(f[:-3] for f in os.listdir(EXPERIMENTS_DIR) if f.endswith(".py"))
    raise UserError(f"unknown experiment {name!r}; valid: {', '.join(found)}.")
  spec = importlib.util.spec_from_file_location(f"kd_experiment_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def make_config(experiment=None, overrides=None):
  """The config a run would use: ``experiment`` ("NAME[:PRESET]", a module of experiments/;
  None = the base config) with ``overrides`` ({"a.b": value}) applied and validated."""
  if experiment:
    name, _, preset = experiment.partition(":")
    c = load_experiment(name, preset or None)
  else:
    c = config_lib.finalize(config_lib.base_config())
  for key, value in (overrides or {}).items():
    try:
      c = config_lib.replaced(c, **{key: tuple(value) if isinstance(value, list) else value})
    except (KeyError, AttributeError, TypeError) as e:
      raise UserError(f"override {key!r}: {e}. Every field is declared in "
                      "kd_research/config.py (base_config).") from None
  return c


def train_teacher(model, data=None, *, workdir, epochs=None, seed=None, experiment=None,
                  overrides=None, overwrite=False, verbose=False):
  """Trains a teacher ``model`` on labels; returns its RunResult."""
  return _train_on_labels("teacher", model, data, workdir, epochs, seed, experiment, overrides,
                          overwrite, verbose)


def train_student(model, data=None, *, workdir, epochs=None, seed=None, experiment=None,
                  overrides=None, overwrite=False, verbose=False):
  """Trains a student ``model`` on labels alone (the baseline a distilled student is
  compared with; on a transfer set, the labelled subset); returns its RunResult."""
  return _train_on_labels("student", model, data, workdir, epochs, seed, experiment, overrides,
                          overwrite, verbose)


def _train_on_labels(role, model, data, workdir, epochs, seed, experiment, overrides,
                     overwrite, verbose):
  c = _with_data(make_config(experiment, overrides), data, workdir)
  c = _with_model(c, role, model, workdir, epochs, seed)
  return _execute(c, workdir, role, (), overwrite, verbose)


def distill(student, teacher, data=None, *, workdir, method=None, epochs=None, seed=None,
            experiment=None, overrides=None, overwrite=False, verbose=False):
  """Distils ``student`` from ``teacher`` (one, or a list: a multi-teacher ensemble) with
  ``method`` ("kd", "dkd", "kd,crd", ...); returns the distilled student's RunResult."""
  c = _with_data(make_config(experiment, overrides), data, workdir)
  c = _with_model(c, "student", student, workdir, epochs, seed)
  if method:
    c = config_lib.replaced(c, **{"distill.method": method})
  teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
  if not teachers:
    raise UserError("distill needs at least one teacher.")
  paths = [_teacher_file(t, workdir) for t in teachers]
  extra = {f"t{i}": config_lib.model_config(os.path.basename(p), path=p) for i, p in
           enumerate(paths[1:], start=1)}
  c = config_lib.replaced(c, **{"teacher.path": paths[0]})
  if extra:
    with c.unlocked():
      c.extra_teachers.update(extra)
  return _execute(c, workdir, "distill", tuple(paths), overwrite, verbose)


def evaluate(run, verbose=False):
  """A finished run's model on its whole test split (RUN/eval.json); the result dict."""
  workdir = _workdir_of(run)
  console.configure(verbose)
  c = make_config()  # Its defaults only: the run's own config.json decides the data.
  return evaluation.evaluate_saved_run(c, workdir, distribute.make_strategy(c.distribution))


def export(run, verbose=False):
  """SavedModel + TFLite float32/float16/int8 of a finished run, verified on its test
  split (RUN/export/, export_report.json); the report dict."""
  from kd_research.tools import export as export_lib  # pylint: disable=g-import-not-at-top
  workdir = _workdir_of(run)
  console.configure(verbose)
  return export_lib.export_run(workdir, workdir_lib.splits_of_run(make_config(), workdir))


def compare(workdir, output=None):
  """The report of every finished run below ``workdir`` (markdown; also written to
  ``output``, default WORKDIR/report.md)."""
  return pages.generate(workdir, output, command=f"kd_research.compare({workdir!r})")


def pipeline_run(experiment, workdir, overrides=None, overwrite=False, verbose=False):
  """An experiment's whole pipeline (teacher -> baseline -> distilled): its results table."""
  c = make_config(experiment, overrides)
  console.configure(verbose)
  run_spec.parse(c)
  fileio.record_command(workdir, f"kd_research.pipeline_run({experiment!r}, {workdir!r})")
  _, table = pipeline.run(c, workdir, distribute.make_strategy(c.distribution),
                          overwrite=overwrite)
  return table


def _execute(c, workdir, role, teacher_paths, overwrite, verbose):
  console.configure(verbose)
  run_spec.parse(c)
  call = "distill" if role == "distill" else f"train_{role}"
  fileio.record_command(workdir, f"kd_research.{call}(workdir={workdir!r})")
  strategy = distribute.make_strategy(c.distribution)
  results = end_to_end.train_and_evaluate(c, workdir, role, strategy, teacher_paths=teacher_paths,
                                          overwrite=overwrite)
  return RunResult(workdir, dict(results))


def _workdir_of(run):
  workdir = run.workdir if isinstance(run, RunResult) else str(run)
  if not results_lib.exists(workdir):
    raise UserError(f"{workdir} holds no finished run (no results.json).")
  return workdir


def _inputs_dir(workdir):
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), "inputs")


def _with_data(c, data, workdir):
  if data is None:
    return c
  if isinstance(data, str):
    return config_lib.replaced(c, dataset=data)
  if isinstance(data, dict):
    data = tuple(data[k] for k in arrays.KEYS)
  if not isinstance(data, (tuple, list)) or len(data) != 4:
    raise UserError("data must be a dataset name or spec (e.g. 'fashion_mnist', "
                    "'folder:PATH') or four arrays (x_train, y_train, x_test, y_test).")
  return config_lib.replaced(c, dataset="npz:" + arrays.write(_inputs_dir(workdir), *data))


def _with_model(c, role, model, workdir, epochs, seed):
  """``c`` with config.<role> set from any accepted model form (see the module docstring)."""
  key = "teacher" if role == "teacher" else "student"
  changes = {}
  if epochs is not None:
    changes[f"{key}.epochs"] = int(epochs)
  if seed is not None:
    changes[f"{key}.seed"] = int(seed)
  c = config_lib.replaced(c, **changes)
  entry = c[key]
  if callable(model) and not isinstance(model, keras.Model):
    spec = _import_path(model)
    if spec is None:  # Defined in a notebook or __main__: built once, then a file.
      data = _splits_shape(c)
      keras.utils.set_random_seed(entry.seed)
      model = model(input_shape=data[0], num_classes=data[1])
    else:
      model = spec
  if isinstance(model, keras.Model):
    path = _model_file(model, _inputs_dir(workdir), key)
    return config_lib.replaced(c, **{f"{key}.init": path, f"{key}.model": model.name})
  if not isinstance(model, str):
    raise UserError(f"{key}: {type(model).__name__} is not a model; give a registry name, "
                    "'package.module:function', a .keras file, a keras.Model or a function.")
  if model.endswith(".keras"):
    return config_lib.replaced(c, **{f"{key}.init": model, f"{key}.model": os.path.basename(
        model)[:-len(".keras")]})
  return config_lib.replaced(c, **{f"{key}.model": model})


def _import_path(function):
  """'module:qualname' of an importable top-level function, else None."""
  module, name = getattr(function, "__module__", ""), getattr(function, "__qualname__", "")
  if not module or module == "__main__" or "<" in name or "." in name:
    return None
  try:
    found = getattr(importlib.import_module(module), name)
  except (ImportError, AttributeError):
    return None
  return f"{module}:{name}" if found is function else None


def _splits_shape(c):
  from kd_research.data import datasets  # pylint: disable=g-import-not-at-top
  splits = datasets.load_splits(datasets.data_spec(c))
  return splits.input_shape, splits.num_classes


def _model_file(model, directory, role):
  """Saves ``model`` as DIRECTORY/<role>-<digest>.keras (digest of its layers and weights:
  the same model maps to the same file, so a rerun resumes its run)."""
  # Layer types and weights, not names: Keras numbers auto-named layers per process, so
  # the same function rebuilt under the same seed must map to the same file.
  h = hashlib.sha256(json.dumps([type(layer).__name__ for layer in model.layers]).encode())
  for weight in model.weights:
    h.update(repr(tuple(weight.shape)).encode())
    h.update(np.ascontiguousarray(weight.numpy()).tobytes())
  path = os.path.join(directory, f"{role}-{h.hexdigest()[:16]}.keras")
  if not os.path.exists(path):
    fileio.atomic_save_keras(model, path)
  return path


def _teacher_file(teacher, workdir):
  """A teacher as a .keras path: a RunResult's model, a file, or a saved keras.Model."""
  if isinstance(teacher, RunResult):
    return teacher.model_path
  if isinstance(teacher, keras.Model):
    return _model_file(teacher, _inputs_dir(workdir), "teacher")
  if isinstance(teacher, str) and teacher.endswith(".keras"):
    return teacher
  raise UserError(f"teacher {teacher!r}: give a trained teacher (the RunResult of "
                  "kd_research.train_teacher, a .keras file or a keras.Model).")
