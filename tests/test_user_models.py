"""The user's own models: ``package.module:function`` specs through the CLI, their checks.

The module ``tests/user_model_module.py`` stands for a researcher's file: a function that
builds a Keras model (with a custom registered layer and named taps). Whole runs go
through ``./launch.sh`` from the directory holding the module (it must import from there).
"""

import json
import os
import shutil
import subprocess

import pytest

from conftest import ENV, REPO, tiny_config
import user_model_module
from kd_research import run_spec
from kd_research.common.errors import UserError
from kd_research.models import registry
from kd_research.models import user as user_models

MODULE = os.path.join(REPO, "tests", "user_model_module.py")


def launch(cwd, *args):
  return subprocess.run([os.path.join(REPO, "launch.sh"), *args], cwd=cwd, env=ENV,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_user_model_as_teacher_and_student_through_launch_sh(tmp_path):
  shutil.copy(MODULE, tmp_path / "my_models.py")
  run = tmp_path / "runs" / "user"
  result = launch(tmp_path, "pipeline", "--experiment=fashion_mnist:tiny", f"--workdir={run}",
                  "--config.teacher.model=my_models:small_cnn",
                  "--config.student.model=my_models:small_cnn",
                  '--config.student.kwargs={"filters": 4}',
                  "--config.distill.method=kd,rkd")  # rkd taps the user model's 'pooled'.
  assert result.returncode == 0, result.stderr[-3000:]
  teacher = json.load(open(run / "teacher" / "results.json"))
  student = json.load(open(run / "student_kd" / "results.json"))
  # Independent counts: the same function built here, in this process.
  assert teacher["params"] == user_model_module.small_cnn((28, 28, 1), 10).count_params()
  assert student["params"] == user_model_module.small_cnn((28, 28, 1), 10, 4).count_params()
  assert teacher["model"] == "my_models:small_cnn" and student["test_accuracy"] > 0.3
  config = json.load(open(run / "student_kd" / "config.json"))
  assert json.loads(config["model"]["kwargs"]) == {"filters": 4}
  model = registry.load_keras(str(run / "student_kd" / "model.keras"))  # safe mode
  assert type(model.get_layer("scaled")).__name__ == "Scale"
  assert model.count_params() == student["params"]
  report = json.load(open(run / "student_kd" / "export" / "export_report.json"))
  assert {"saved_model", "tflite_float32", "tflite_int8"} <= set(report["artifacts"])
  assert report["artifacts"]["tflite_float32"]["agreement_with_keras"] > 0.99
  # A fresh process loads the custom layer through the run's own config (eval imports it).
  evaluated = launch(tmp_path, "eval", f"--workdir={run / 'student_kd'}")
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]
  assert json.load(open(run / "student_kd" / "eval.json"))["accuracy"] == pytest.approx(
      student["test_accuracy"], abs=1e-6)


def test_a_user_model_is_built_with_the_data_shape_and_kwargs():
  model = registry.build("user_model_module:small_cnn", (12, 12, 3), 5, kwargs={"filters": 2})
  assert model.input_shape == (None, 12, 12, 3) and model.output_shape == (None, 5)
  assert model.get_layer("stage1").filters == 2


@pytest.mark.parametrize("spec, kwargs, message", [
    ("no_such_module_kd:build", {}, "cannot import module 'no_such_module_kd'"),
    ("user_model_module:missing", {}, "its functions: small_cnn"),
    ("user_model_module:small_cnn", {"depth": 3}, "kwargs ['depth'] failed"),
])
def test_bad_user_models_are_named(spec, kwargs, message):
  with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
    registry.build(spec, (12, 12, 3), 5, kwargs=kwargs)


def test_a_user_model_that_does_not_fit_the_data_is_refused(monkeypatch):
  monkeypatch.setattr(user_model_module, "wrong", lambda input_shape, num_classes:
                      user_model_module.small_cnn(input_shape, num_classes + 1), raising=False)
  with pytest.raises(UserError, match="the data has 5 classes"):
    registry.build("user_model_module:wrong", (12, 12, 3), 5)
  monkeypatch.setattr(user_model_module, "wrong", lambda input_shape, num_classes: "a model")
  with pytest.raises(UserError, match="returned a str, not a keras.Model"):
    registry.build("user_model_module:wrong", (12, 12, 3), 5)


def _softmax_cnn(input_shape, num_classes, how):
  """The common Keras classifier: small_cnn with its probabilities as the output."""
  import keras  # pylint: disable=g-import-not-at-top
  logits_model = user_model_module.small_cnn(input_shape, num_classes)
  features = logits_model.get_layer("pooled").output
  if how == "dense":
    out = keras.layers.Dense(num_classes, activation="softmax")(features)
  elif how == "layer":
    out = keras.layers.Softmax()(keras.layers.Dense(num_classes)(features))
  else:  # Hidden inside a subclassed model's call: only the outputs tell.
    out = keras.layers.Lambda(keras.activations.softmax)(keras.layers.Dense(num_classes)(features))
  return keras.Model(logits_model.inputs, out, name="softmax_cnn")


@pytest.mark.parametrize("how, message", [
    ("dense", "last layer 'dense.*' is a softmax"), ("layer", "last layer 'softmax.*' is a softmax"),
    ("lambda", "outputs on a probe batch are non-negative and sum to 1")])
def test_a_model_that_returns_probabilities_is_refused_with_how_to_return_logits(
    monkeypatch, tmp_path, how, message):
  from kd_research.train import teachers  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(user_model_module, "probabilities",
                      lambda input_shape, num_classes: _softmax_cnn(input_shape, num_classes, how),
                      raising=False)
  with pytest.raises(UserError, match=message + r".*without activation='softmax'"):
    registry.build("user_model_module:probabilities", (12, 12, 3), 5)
  if how != "lambda":  # A teacher file saved from a softmax model (Lambda: not safe-mode).
    path = str(tmp_path / "softmax_teacher.keras")
    _softmax_cnn((12, 12, 3), 5, how).save(path)
    with pytest.raises(UserError, match=r"teacher: teacher .*softmax_teacher.keras returns "
                       r"probabilities, not logits"):
      teachers.load_teacher(path, (12, 12, 3), 5)


@pytest.mark.parametrize("overrides, message", [
    ({"student.kwargs": "{depth: 3}"}, "is not JSON"),
    ({"student.kwargs": "[3]"}, "must be a JSON object"),
    ({"student.kwargs": '{"width": 3}'}, "is for a user model"),
    ({"student.init": "/nonexistent/start.keras"}, "must be an existing .keras file"),
    ({"student.model": "resnet_sed"}, "or your own package.module:function"),
])
def test_bad_model_entries_are_refused_before_any_run(overrides, message):
  with pytest.raises(UserError, match=message):
    run_spec.parse(tiny_config(**overrides))


def test_kwargs_and_init_are_absent_from_old_identities(tmp_path):
  """Runs that set neither keep the identity they had before these fields existed."""
  from kd_research.train import workdir
  identity = workdir.run_identity(tiny_config(), "student")
  assert "kwargs" not in identity["model"] and "init" not in identity["model"]
  start = tmp_path / "start.keras"
  registry.build("mlp", (28, 28, 1), 10, width=8).save(start)
  identity = workdir.run_identity(tiny_config(**{"student.init": str(start)}), "student")
  assert identity["model"]["init"] == user_models.file_digest(start)


@pytest.mark.slow
def test_the_python_api_with_arrays_a_spec_teacher_and_a_keras_model_student(tmp_path):
  """kd_research.train_teacher / distill / evaluate / compare from Python: the same run
  directories and guarantees as the CLI (results.json is what the call returned, a
  rerun reports the finished run, the student object's architecture is what trained)."""
  import keras
  import numpy as np
  import kd_research as kd
  rng = np.random.default_rng(0)
  prototypes = rng.uniform(0, 255, (3, 12, 12, 1))

  def draw(n):
    y = rng.integers(0, 3, n)
    return np.clip(prototypes[y] * .6 + rng.normal(0, 40, (n, 12, 12, 1)) + 50, 0, 255), y

  data = (*draw(600), *draw(100))  # float pixels in [0, 255], int64 labels
  small = {"validation_size": 100, "global_batch_size": 50,
           "optimizer.learning_rate.start": 0.02}
  teacher = kd.train_teacher("user_model_module:small_cnn", data=data, epochs=4,
                             workdir=str(tmp_path / "teacher"), overrides=small)
  assert teacher.results == json.load(open(tmp_path / "teacher" / "results.json"))
  inputs = keras.Input((12, 12, 1))
  hidden = keras.layers.Dense(16, activation="relu", name="pooled")(
      keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs)))
  student_model = keras.Model(inputs, keras.layers.Dense(3)(hidden), name="api_mlp")
  student = kd.distill(student_model, teacher, data=data, method="kd,rkd", epochs=2,
                       workdir=str(tmp_path / "kd"), overrides=small)
  assert student.results["role"] == "distill" and student.results["model"] == "api_mlp"
  assert student.results["params"] == student_model.count_params()
  assert student.model().count_params() == student_model.count_params()
  again = kd.distill(student_model, teacher, data=data, method="kd,rkd", epochs=2,
                     workdir=str(tmp_path / "kd"), overrides=small)
  assert again.results == student.results  # reported, not retrained
  evaluated = kd.evaluate(student)
  assert evaluated["accuracy"] == pytest.approx(student.test_accuracy, abs=1e-6)
  baseline = kd.train_student("user_model_module:small_cnn", data=data, epochs=1,
                              workdir=str(tmp_path / "labels"), overrides=small, seed=3)
  assert baseline.results["model"] == "user_model_module:small_cnn"
  assert baseline.results["seed"] == 3 and baseline.results["role"] == "student"
  table = kd.compare(str(tmp_path))
  assert f"{100 * student.test_accuracy:.2f}%" in table and (tmp_path / "report.md").exists()
  with pytest.raises(kd.UserError, match="no field"):
    kd.make_config(overrides={"distill.no_such_field": 1})
