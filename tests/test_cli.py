"""The command line: launch.sh and python -m kd_research.main, good and bad input."""

import json
import os
import subprocess

import pytest

from conftest import REPO, TF_CHATTER, run_main, run_main_module, tiny_config
from kd_research import run_spec
from kd_research.common.errors import UserError



def test_launch_help_and_unknown_command():
  ok = subprocess.run(["./launch.sh", "help"], cwd=REPO, capture_output=True, text=True)
  assert ok.returncode == 0
  for command in ("setup", "quickstart", "test", "train", "distill", "pipeline", "eval"):
    assert command in ok.stdout
  bad = subprocess.run(["./launch.sh", "frobnicate"], cwd=REPO, capture_output=True, text=True)
  assert bad.returncode == 2 and "unknown command: frobnicate" in bad.stderr


def test_helpfull_lists_config_overrides():
  out = run_main("train", "--helpfull")
  assert out.returncode == 0
  assert "--workdir" in out.stdout and "--experiment" in out.stdout


def test_unknown_experiment_lists_valid_names(tmp_path):
  out = run_main("train", "--experiment=imagenet", f"--workdir={tmp_path}/w")
  assert out.returncode == 2
  assert "unknown experiment 'imagenet'" in out.stderr and "fashion_mnist" in out.stderr


def test_bad_config_fails_before_training(tmp_path):
  """Through the command line: exit status 1, the message, no traceback, nothing written
  (the other bad values below take the same path: config.validate before any write)."""
  workdir = tmp_path / "w"
  out = run_main("distill", "--experiment=fashion_mnist:tiny", f"--workdir={workdir}",
                 "--config.distill.alpha.start=1.5")
  assert out.returncode == 1, out.stderr
  assert "config.distill.alpha" in out.stderr and "Traceback" not in out.stderr
  assert not workdir.exists() or not os.listdir(workdir)


@pytest.mark.parametrize("field,value,message", [
    ("distill.temperature.start", 0.0, "T > 0"),
    ("global_batch_size", 0, "config.global_batch_size"),
    ("student.epochs", 0, "config.student.epochs"),
    ("dataset", "imagenet", "fashion_mnist"),
    ("distill.combine", "median", "prob_mean"),
    ("student.model", "vgg", "cnn_article"),
])
def test_bad_config_values_are_refused_by_validation(field, value, message):
  with pytest.raises(UserError) as error:
    run_spec.parse(tiny_config(**{field: value}))
  assert message in str(error.value)


def test_slurm_and_job_on_a_directory_without_a_plan_say_how_to_write_one(tmp_path):
  for command in (["slurm", f"--plan={tmp_path}"], ["job", f"--plan={tmp_path}", "--job=x"]):
    out = run_main(*command)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert "no plan.json there" in out.stderr and "--plan" in out.stderr, out.stderr


def test_distill_without_teacher_path(tmp_path):
  out = run_main("distill", "--experiment=fashion_mnist:tiny", f"--workdir={tmp_path}/w")
  assert out.returncode == 1 and "config.teacher.path" in out.stderr


def test_train_then_eval_command(tmp_path):
  """train (with --verbose: TensorFlow's own lines and absl's prefixed records come back;
  quiet by default, as tests/test_e2e_fashion_mnist.py checks on a whole pipeline), then
  eval of the finished run, and eval of a directory without one."""
  workdir = str(tmp_path / "student")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  out = run_main("train", "--experiment=fashion_mnist:tiny", f"--workdir={workdir}",
                 "--role=student", "--config.student.epochs=1", "--verbose", env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  # Which TF lines depends on the CPU: oneDNN's notice on some, the feature guard on others.
  assert [c for c in TF_CHATTER if c in out.stderr], out.stderr[-2000:]
  assert "] student finished" in out.stderr
  results = json.load(open(os.path.join(workdir, "results.json")))
  out = run_main("eval", "--experiment=fashion_mnist:tiny", f"--workdir={workdir}",
                 "--config.student.epochs=1")
  assert out.returncode == 0, out.stderr[-2000:]
  evaluated = json.load(open(os.path.join(workdir, "eval.json")))
  assert evaluated["count"] == 500
  assert evaluated["accuracy"] == pytest.approx(results["test_accuracy"], abs=1e-9)
  missing = run_main("eval", "--experiment=fashion_mnist:tiny", f"--workdir={tmp_path}/none")
  assert missing.returncode == 1 and "model.keras" in missing.stderr


def test_bench_quick_smoke(tmp_path):
  """The benchmark command runs every row and writes its JSON (no timing assertions)."""
  out = run_main_module("kd_research.tools.bench", "--quick", "--dataset=synthetic",
                        "--teacher=mlp", "--teacher_width=64", "--student=mlp",
                        "--student_width=16", f"--output={tmp_path}/bench.json",
                        "--profile=b", "--rows=a,b,c,d,e,f,g,h,i,j,k,l,m,n")
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(tmp_path / "bench.json"))
  assert [r["row"] for r in report["rows"]] == list("abcdefghijklmn")
  assert "the view cache of" in out.stdout  # row (l) builds its cache apart from the timing

  assert all(r["examples_per_second"] > 0 and r["gflops"] > 0 for r in report["rows"])
  assert "| (f) | best combination" in out.stdout
  # The profiled row: MLPs spend op time in MatMul (forward and backward). The table groups
  # kernels by op family, so oneDNN's CPU-specific _MklNativeFusedMatMul/_FusedMatMul count
  # as MatMul on every machine.
  assert "where the time goes in row (b)" in out.stdout
  assert "| MatMul |" in report["profiles"]["b"]
  assert "mixed_precision=auto would use" in out.stdout and report["auto_precision"]["used"] in (
      "none", "bf16")
  bad = run_main_module("kd_research.tools.bench", "--quick", "--rows=a,b", "--profile=g")
  assert bad.returncode == 2 and "--profile='g'" in bad.stderr
