"""Machine-independence and bad input: precision choice, profiles, teachers, pickles, paths."""

import json
import os
import pickle
import subprocess
import sys

import keras
import numpy as np
import pytest

from kd_research.data import sources
from kd_research.common import fileio
from kd_research.train import end_to_end
from kd_research.runtime import precision
from kd_research.tools import profiling
from kd_research.train import summaries
from kd_research.train import teachers
from kd_research.common.errors import UserError
from conftest import DEFAULT, ENV, REPO, tiny_config
from generated_data import write_fake_cifar10



# --- mixed_precision=auto ------------------------------------------------------------------

@pytest.mark.parametrize("flags,gpus,used,why", [
    ({"avx2", "fma", "amx_bf16", "amx_tile"}, [], "bf16", "amx_bf16"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16"}, [], "bf16", "amx_bf16"),
    ({"avx2", "avx512f", "avx512_bf16"}, [], "none", "avx512_bf16 but no AMX"),
    ({"avx2", "avx512f"}, [], "none", "no native bf16"),
    ({"avx2", "fma"}, [], "none", "no native bf16"),
    (set(), [(8, 0), (9, 0)], "bf16", "compute capability 8.0"),
    ({"amx_bf16"}, [(7, 0)], "none", "7.0 < 8.0"),
])
def test_auto_precision_follows_the_hardware(flags, gpus, used, why):
  choice = precision.choose("auto", flags=flags, gpus=gpus)
  assert (choice.requested, choice.used) == ("auto", used)
  assert why in choice.reason


def test_explicit_precision_is_kept_and_bad_names_refused():
  for name in ("none", "bf16", "fp16"):
    choice = precision.choose(name, flags={"amx_bf16"}, gpus=[])
    assert choice.used == name and "explicitly" in choice.reason
  with pytest.raises(UserError, match="valid: none, bf16, fp16, auto"):
    precision.choose("bf32", flags=set(), gpus=[])


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
  assert precision.cpu_flags(str(cpuinfo)) == {"fpu", "avx2", "avx512_bf16"}
  assert precision.cpu_flags(str(tmp_path / "missing")) == set()


def test_auto_run_records_the_resolved_precision(tmp_path, monkeypatch):
  """A run with mixed_precision=auto records what it used and why; fake an AVX2-only CPU."""
  monkeypatch.setattr(precision, "cpu_flags", lambda *a: {"avx2", "fma"})
  config = tiny_config(**{"mixed_precision": "auto", "student.epochs": 1})
  results = end_to_end.train_and_evaluate(config, str(tmp_path / "s"), "student", DEFAULT)
  assert results["precision"]["requested"] == "auto"
  assert results["precision"]["used"] == "none"
  assert "no native bf16" in results["precision"]["reason"]
  identity = json.load(open(tmp_path / "s" / "config.json"))
  assert identity["mixed_precision"] == "none"  # The identity holds the concrete choice.


# --- profiles that do not depend on the CPU's kernels ---------------------------------------

def test_op_families_group_cpu_specific_kernels():
  assert profiling.op_family("_MklNativeFusedMatMul") == "MatMul"
  assert profiling.op_family("_FusedMatMul") == "MatMul"
  assert profiling.op_family("MatMul") == "MatMul"
  assert profiling.op_family("_MklSoftmax") == "Softmax"
  assert profiling.op_family("_FusedConv2D") == "Conv2D"
  assert profiling.op_family("_MklNativeConv2DBackpropFilter") == "Conv2DBackpropFilter"
  assert profiling.op_family("FusedBatchNormV3") == "FusedBatchNormV3"
  assert profiling.op_family("_MklFusedBatchNormV3") == "FusedBatchNormV3"
  families = profiling.family_times({"_MklNativeFusedMatMul": 2.0, "MatMul": 1.0, "Add": 0.5})
  assert families == {"MatMul": (3.0, ["MatMul", "_MklNativeFusedMatMul"]), "Add": (0.5, ["Add"])}


# --- usage errors are one paragraph with exit status 2 ---------------------------------------

def run_main(*args):
  return subprocess.run([sys.executable, "-m", "kd_research.main", *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["--experiment=fashion_mnist:quik"], "unknown preset 'quik' for experiment fashion_mnist"),
    (["--experiment=fashion_mnist_results:quick"], "takes no preset"),
    (["--experiment=cifar10_article:maxi"], "valid presets: mini"),
    (["--experiment=fashion_mnist:tiny", "--config.distil.alpha=0.5"],
     "--config.distil.alpha=0.5: the config has no field 'distil' (did you mean 'distill'?)"),
    (["--experiment=fashion_mnist:tiny", "--config.distill.temprature=4"],
     "no field 'temprature' (did you mean 'temperature'?)"),
    (["--experiment=fashion_mnist:tiny", "--config.distill.alpha.start=abc"], "could not convert"),
    (["--experiment=fashion_mnist:tiny", "--config.distill.alpha=0.5"],
     "--config.distill.alpha is a group of fields"),
])
def test_usage_errors_exit_2_without_traceback(tmp_path, args, message):
  out = run_main("distill", f"--workdir={tmp_path}/w", *args)
  assert out.returncode == 2, out.stderr[-2000:]
  errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert not (tmp_path / "w").exists()


def test_every_experiment_refuses_unknown_presets():
  from kd_research import main  # pylint: disable=g-import-not-at-top
  from conftest import load_experiment
  for name in main.experiment_names():
    presets = main.experiment_presets(name)
    with pytest.raises(UserError, match="Unknown preset 'no_such_preset'"):
      load_experiment(name, "no_such_preset")
    for preset in presets:
      load_experiment(name, preset)


# --- broken teachers are refused before any student step ------------------------------------

def _distill(tmp_path, teacher_path, **overrides):
  config = tiny_config(**{"teacher.path": teacher_path, "student.epochs": 1, **overrides})
  workdir = tmp_path / "kd"
  return workdir, lambda: end_to_end.train_and_evaluate(config, str(workdir), "distill", DEFAULT,
                                                        teacher_paths=(teacher_path,))


def test_teacher_with_nan_weights_is_refused(tmp_path, teacher_file):
  model = keras.models.load_model(teacher_file, compile=False)
  kernel = model.weights[0]
  kernel.assign(np.full(kernel.shape, np.nan, np.float32))
  broken = str(tmp_path / "broken.keras")
  model.save(broken)
  workdir, run = _distill(tmp_path, broken)
  with pytest.raises(UserError, match=r"broken.keras has non-finite \(NaN or inf\) weights"):
    run()
  assert not (workdir / "results.json").exists() and not (workdir / "checkpoints").exists()


def test_teacher_at_chance_is_refused_unless_allowed(tmp_path, teacher_file):
  model = keras.models.load_model(teacher_file, compile=False)
  for w in model.weights:  # A finite but useless teacher: constant logits.
    w.assign(np.zeros(w.shape, np.float32))
  useless = str(tmp_path / "untrained.keras")
  model.save(useless)
  workdir, run = _distill(tmp_path, useless)
  with pytest.raises(UserError, match="not clearly above chance.*allow_weak_teacher"):
    run()
  assert not (workdir / "results.json").exists() and not (workdir / "checkpoints").exists()
  _, run_anyway = _distill(tmp_path, useless, **{"run.allow_weak_teacher": True})
  assert run_anyway()["test_count"] > 0


def test_chance_threshold():
  labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
  chance, required = teachers.chance_threshold(labels, 3)
  assert chance == pytest.approx(0.5)
  assert required == pytest.approx(0.5 + 3 * np.sqrt(0.25 / 100))  # 3 sd > 5 points here
  teachers.check_above_chance([0.8], ["good.keras"], labels, 3)
  with pytest.raises(UserError, match="weak.keras: 60.00%"):
    teachers.check_above_chance([0.8, 0.6], ["good.keras", "weak.keras"], labels, 3)


# --- data files never run code --------------------------------------------------------------

class _Exploit:
  """Unpickling this calls os.system: it writes a file as a proof of code execution."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_cifar_batch_that_runs_code_is_refused(tmp_path):
  directory = tmp_path / "cifar-10-batches-py"
  write_fake_cifar10(str(directory))
  marker = tmp_path / "pwned"
  with open(directory / "data_batch_3", "wb") as f:
    pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f)
  with pytest.raises(UserError, match="data_batch_3 .*refused to load global posix.system"):
    sources.load("cifar10", str(tmp_path))
  assert not marker.exists()


def test_real_cifar_layout_still_loads(tmp_path):
  """Batches as the CIFAR archive pickles them (NumPy array, list labels, bytes filenames)."""
  directory = tmp_path / "cifar-100-python"
  os.makedirs(directory)
  rng = np.random.default_rng(0)
  for name, n in (("train", 40), ("test", 10)):
    batch = {b"data": rng.integers(0, 255, (n, 3072)).astype(np.uint8),
             b"fine_labels": rng.integers(0, 100, n).tolist(),
             b"coarse_labels": rng.integers(0, 20, n).tolist(),
             b"filenames": [f"img_{i}.png".encode() for i in range(n)],
             b"batch_label": b"training batch 1 of 1"}
    with open(directory / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)
  raw = sources.load("cifar100", str(tmp_path))
  assert raw.train_x.shape == (40, 32, 32, 3) and raw.num_classes == 100


def test_keras_file_with_code_is_refused(tmp_path):
  inputs = keras.Input((28, 28, 1))
  outputs = keras.layers.Dense(10)(keras.layers.Lambda(lambda x: keras.ops.reshape(
      x, (-1, 784)))(inputs))
  path = str(tmp_path / "lambda.keras")
  keras.Model(inputs, outputs).save(path)
  with pytest.raises(UserError, match="lambda.keras.*Lambda"):
    teachers.load_teacher(path, (28, 28, 1), 10)


def test_teacher_cache_files_are_loaded_without_pickle(tmp_path):
  path = str(tmp_path / "train-abc.npz")
  np.savez(path, logits=np.array([object()], dtype=object), fingerprint=np.array("abc"))
  from kd_research.train import teacher_cache  # pylint: disable=g-import-not-at-top
  assert teacher_cache._load(path, "abc", {"logits": (1,)}) is None  # Refused, then recomputed.


# --- generated files work in any clone ------------------------------------------------------

def test_recorded_commands_are_relative_to_the_repository():
  command = (f"./launch.sh train --workdir={REPO}/runs/x "
             f"--config.teacher.path={REPO}/runs/t/model.keras --config.data_dir=/data")
  assert fileio.portable_command(command) == (
      "./launch.sh train --workdir=runs/x --config.teacher.path=runs/t/model.keras "
      "--config.data_dir=/data")


def test_committed_files_carry_no_machine_paths_or_missing_notes():
  tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
  for name in tracked:
    if not name.endswith((".py", ".md", ".sh", ".toml")):
      continue
    text = open(os.path.join(REPO, name)).read()
    assert REPO not in text, name
    for note in ("SEED_NOTES", "TF_NOTES", "DESIGN.md", "METHODS_NOTES"):
      assert note not in text or name == "tests/test_hardening.py", (name, note)


# --- TensorBoard --------------------------------------------------------------------------

def test_hparams_are_the_distinguishing_fields_in_order():
  from kd_research import config as config_lib  # pylint: disable=g-import-not-at-top
  from kd_research.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"distill.method": "dkd", "student.seed": 1})
  flat = config_lib.flatten(workdir_lib.run_identity(config, "distill", ("/a", "/b")))
  params = summaries.run_hparams(flat)
  assert params["01 method"] == "dkd" and params["04 seed"] == 1
  assert params["05 alpha"] == config.distill.alpha.start
  assert params["06 T"] == config.distill.temperature.start
  assert params["10 alpha_schedule"] == config.distill.alpha.kind
  assert params["13 teachers"] == 2
  assert params["19 learning_rate"] == config.optimizer.learning_rate.start
  names = [name for name, _ in summaries.HPARAM_COLUMNS]
  assert names == sorted(names)  # TensorBoard sorts columns by name: the rank survives it.
  labels_only = summaries.run_hparams({"role": "student", "model.model": "mlp"})
  assert labels_only == {"01 method": "labels", "02 model": "mlp", "08 role": "student"}


def session_hparams(workdir):
  """The hparams a run recorded, as TensorBoard's HParams dashboard reads them (the
  session-start info its session groups are built from)."""
  from tensorboard.backend.event_processing import event_accumulator
  from tensorboard.plugins.hparams import plugin_data_pb2
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={
      event_accumulator.TENSORS: 0})
  acc.Reload()
  content = acc.SummaryMetadata("_hparams_/session_start_info").plugin_data.content
  info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
  return {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
          for name, value in info.hparams.items()}


def test_distilled_run_records_alpha_and_temperature_in_hparams(tmp_path, teacher_file):
  config = tiny_config(**{"student.epochs": 1, "teacher.path": teacher_file,
                          "distill.alpha.start": 0.3, "distill.alpha.end": 0.3,
                          "distill.temperature.start": 3.0, "distill.temperature.end": 3.0})
  workdir = str(tmp_path / "student_kd")
  end_to_end.train_and_evaluate(config, workdir, "distill", DEFAULT, teacher_paths=(teacher_file,))
  recorded = session_hparams(workdir)
  assert recorded["01 method"] == "kd"
  assert recorded["05 alpha"] == pytest.approx(0.3) and recorded["06 T"] == pytest.approx(3.0)


def test_events_are_in_the_run_directory_with_declared_metrics(tmp_path):
  from tensorboard.backend.event_processing import event_accumulator
  workdir = str(tmp_path / "student_baseline")
  end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1}), workdir, "student", DEFAULT)
  acc = event_accumulator.EventAccumulator(workdir, size_guidance={
      event_accumulator.TENSORS: 0})
  acc.Reload()
  tags = acc.Tags()["tensors"]
  assert "eval/accuracy" in tags and "_hparams_/experiment" in tags
  from tensorboard.plugins.hparams import plugin_data_pb2
  content = acc.SummaryMetadata("_hparams_/experiment").plugin_data.content
  experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
  names = [h.name for h in experiment.hparam_infos]
  assert names == [column for column, _ in summaries.HPARAM_COLUMNS]
  metrics = [m.name.tag for m in experiment.metric_infos]
  assert "eval/accuracy" in metrics and "test/accuracy" in metrics
