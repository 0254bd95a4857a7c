"""Bad input found while trying the layout: each is one clear UserError before any step."""

import math
import os
import subprocess
import sys

import keras
import pytest

from conftest import REPO, tiny_config
from kd_research import run_spec
from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.methods import distill_spec
from kd_research.methods import registry as method_registry
from kd_research.models import registry as model_registry
from kd_research.train import teachers

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")


def test_workdir_below_a_file_is_a_usage_error(tmp_path):
  notes = tmp_path / "notes.txt"
  notes.write_text("not a directory\n")
  out = subprocess.run([sys.executable, "-m", "kd_research.main", "train",
                        "--experiment=fashion_mnist:tiny", f"--workdir={notes}/run"],
                       cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert f"{notes} is a file, not a directory" in out.stderr
  assert "Traceback" not in out.stderr


def test_truncated_teacher_file_is_named_as_truncated(tmp_path, teacher_file):
  truncated = tmp_path / "teacher.keras"
  truncated.write_bytes(open(teacher_file, "rb").read()[:2000])
  with pytest.raises(UserError, match="truncated or not a .keras file"):
    teachers.load_teacher(str(truncated), (28, 28, 1), 10)


@pytest.mark.parametrize("field,value", [
    ("distill.alpha.start", math.nan), ("distill.alpha.end", math.nan),
    ("distill.temperature.start", math.inf), ("distill.temperature.end", math.inf),
    ("optimizer.learning_rate.start", math.nan)])
def test_non_finite_schedule_values_are_refused_up_front(field, value):
  with pytest.raises(UserError, match=r"finite|got nan"):
    run_spec.parse(tiny_config(**{field: value}))


FEATURE_METHODS = [n for n, cls in method_registry.methods().items() if cls.kind == "feature"]


@pytest.mark.parametrize("student_model,teacher_model", [("cnn_article", "mlp"),
                                                         ("mlp", "cnn_article")])
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_feature_methods_across_model_kinds_build_or_refuse_clearly(method, student_model,
                                                                    teacher_model):
  """Every feature method between a convolutional and an MLP model either builds its
  objective (variables included) or raises a UserError: never another exception."""
  keras.utils.set_random_seed(0)
  student = model_registry.build(student_model, (28, 28, 1), 10, 4)
  teacher = model_registry.build(teacher_model, (28, 28, 1), 10, 8)
  fields = {"distill.method": method, "distill.crd.negatives": 16}
  if method == "crd":
    fields["distill.crd.negative_sampling"] = "uniform"
  distill = distill_spec.parse(tiny_config(**fields).distill)
  context = base.BuildContext(distill, student, teacher, [1.0], 10, 100,
                              base.TrainingSet(64, None, 16, 0))
  try:
    objective = method_registry.build(context)
    method_registry.build_variables(
        objective, student, teachers.TeacherEnsemble([teacher], ["t"]).tap(objective.teacher_taps))
  except UserError as e:
    assert str(e)  # One paragraph naming what is wrong.
    if method == "fitnets":
      assert "connector" in str(e) and "cannot map" in str(e)
