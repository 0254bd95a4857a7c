"""Reliability: SIGKILL and SIGTERM then resume exactly, bad input, teacher integrity,
atomic outputs."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_research.data import sources
from kd_research.common import fileio
from kd_research.train import end_to_end
from kd_research.train import teachers as teachers_lib
from kd_research.common.errors import PREEMPTED_EXIT_STATUS
from kd_research.common.errors import UserError
from conftest import DEFAULT, ENV, REPO, distill_cmd, kill_after_checkpoint, tiny_config
from conftest import killed_rerun_matches_uninterrupted, weights_of
from generated_data import write_fake_mnist



# One run holds every kind of state a resume must restore: kd with CTKD's learnable
# temperature, a schedule of alpha and augmentation; MLKD's strong view (a function of seed
# and step); CRD's memory banks, Z and embedding heads; OFD's connectors, ReviewKD's fusion
# modules, VID's regressors and variances (a conv teacher and student); DOT's two momentum
# buffers per variable (SGD; Adam's moments: the distilled ViT's run below). It is run
# uninterrupted once, and once interrupted twice: SIGTERM, then SIGKILL.
EVERY_STATE = ["--config.distill.method=kd,mlkd,crd,fitnets,ofd,reviewkd,vid",
               # cnn_article's 12x12 stage1 against resnet_article's 14x14 stage2.
               "--config.distill.fitnets.connector=resize",
               "--config.distill.ctkd.enabled=true", "--config.distill.ctkd.decay_epochs=2",
               "--config.distill.crd.negatives=64", "--config.distill.reviewkd.warmup_epochs=1",
               "--config.student.model=cnn_article", "--config.student.width=4",
               "--config.optimizer.name=sgd", "--config.optimizer.learning_rate.start=0.01",
               "--config.optimizer.dot_delta=0.075", "--config.optimizer.l2=5e-4",
               "--config.run.allow_weak_teacher=true"]


EPOCHS, STEPS_PER_EPOCH = 3, 28  # 84 steps: a kill after step 40 leaves a rerun's worth.


def _command(workdir, teacher_file, checkpoint_every_steps):
  return distill_cmd(workdir, teacher_file, EPOCHS) + EVERY_STATE + [
      f"--config.run.checkpoint_every_steps={checkpoint_every_steps}"]


def _sigterm_once_training(cmd):
  """Starts ``cmd``, sends SIGTERM once it logs its first training step; (status, stderr)."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  lines = []
  for line in proc.stderr:
    lines.append(line)
    if " distill step " in line:
      proc.send_signal(signal.SIGTERM)
      break
  lines.append(proc.communicate(timeout=120)[1])
  return proc.returncode, "".join(lines)


def test_sigterm_then_sigkill_then_rerun_matches_uninterrupted_run(tmp_path, conv_teacher):
  """SIGTERM mid-run (checkpoint interval 1000): the run saves at the next loop boundary
  and exits with the preemption status. Rerun (interval 10, which may change on resume):
  SIGKILL after a checkpoint of step >= 40. Rerun to the end: the weights, the results and
  every objective variable are bit-identical to the uninterrupted run's."""
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  done = subprocess.run(_command(full, conv_teacher, 10), cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  ckpt_dir = os.path.join(cut, "checkpoints")
  status, err = _sigterm_once_training(_command(cut, conv_teacher, 1000))
  assert status == PREEMPTED_EXIT_STATUS, err[-2000:]
  assert "preempted: stopped by SIGTERM at step" in err
  saved = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
  # Saved because of the signal (no periodic checkpoint before 1000).
  assert 0 < saved < EPOCHS * STEPS_PER_EPOCH
  assert not os.path.exists(os.path.join(cut, "results.json"))
  killed_at = kill_after_checkpoint(_command(cut, conv_teacher, 10), ckpt_dir, 40)
  assert 40 <= killed_at < EPOCHS * STEPS_PER_EPOCH
  assert not os.path.exists(os.path.join(cut, "results.json"))
  resumed = subprocess.run(_command(cut, conv_teacher, 10), cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"Resumed from {ckpt_dir}/ckpt-{killed_at}" in resumed.stderr, resumed.stderr[-2000:]
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(weights_of(full), weights_of(cut))]
  print(f"SIGTERM saved step {saved}, SIGKILL after checkpoint {killed_at}; "
        f"max |dw| vs uninterrupted: {max(diffs)}")
  assert max(diffs) == 0.0
  a = json.load(open(os.path.join(full, "results.json")))
  b = json.load(open(os.path.join(cut, "results.json")))
  assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
  readers = [tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(d, "checkpoints")))
             for d in (full, cut)]
  names = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("objective/")]
  # Connectors, fusion modules, regressors, variances, banks, heads, the temperature.
  assert len(names) > 40, names
  # DOT's two buffers per trained variable (the student's and the objective's: positional
  # names, optimizer/_variables/N) and its iteration count.
  trained = len(keras.models.load_model(os.path.join(full, "model.keras"),
                                        compile=False).trainable_weights)
  buffers = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("optimizer/")]
  assert len(buffers) > 2 * trained, (len(buffers), trained)
  for name in names + buffers:
    np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name))


def _distilled_vit_cmd(teacher_file):
  """DeiT's hard distillation with an OFA-KD branch (on block 3) and ViTKD from a ViT
  teacher into vit_mini_distilled (stochastic depth 0.2), one epoch."""
  return lambda workdir: distill_cmd(workdir, teacher_file, 1) + [
      "--config.student.model=vit_mini_distilled", "--config.student.width=16",
      "--config.student.drop_path=0.2", "--config.distill.method=deit,ofa,vitkd",
      "--config.augment.ops=('flip','crop','cutmix')", "--config.distill.ofa.stages=('block3',)",
      "--config.run.allow_weak_teacher=true"]


def test_sigkill_and_rerun_of_a_distilled_vit_matches_the_uninterrupted_run(tmp_path,
                                                                            vit_teacher):
  """The ViT's tokens and position embeddings, its two heads, OFA's branch, ViTKD's aligns,
  convs and mask token (and its masks' draws) and the optimizer's moments resume exactly:
  SIGKILL after a checkpoint of step >= 10 of 28."""
  killed_at, diff, (a, b) = killed_rerun_matches_uninterrupted(
      _distilled_vit_cmd(vit_teacher), tmp_path, 10, STEPS_PER_EPOCH)
  print(f"vit_mini_distilled (deit + ofa + vitkd) killed after checkpoint {killed_at}; "
        f"max |dw| vs uninterrupted: {diff}")
  assert diff == 0.0
  assert a["test_accuracy"] == b["test_accuracy"] and a["method"] == "deit,ofa,vitkd"
  readers = [tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / d /
                                                                     "checkpoints")))
             for d in ("full", "cut")]
  names = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("objective/")]
  for name in names:
    np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name))


def _sha(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_teacher_file_untouched_by_distillation(tmp_path, teacher_file):
  before = _sha(teacher_file)
  end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1}), str(tmp_path / "kd"), "distill",
                                DEFAULT, (teacher_file,))
  assert _sha(teacher_file) == before
  ckpt = tf.train.latest_checkpoint(str(tmp_path / "kd" / "checkpoints"))
  names = [name for name, _ in tf.train.list_variables(ckpt)]
  assert names and not any("teacher" in n for n in names)


def test_bad_teacher_files(tmp_path, teacher_file):
  shape, classes = (28, 28, 1), 10
  with pytest.raises(UserError, match="does not exist"):
    teachers_lib.load([str(tmp_path / "none.keras")], shape, classes)
  truncated = tmp_path / "truncated.keras"
  truncated.write_bytes(open(teacher_file, "rb").read()[:500])
  with pytest.raises(UserError, match="is truncated or not a .keras file"):
    teachers_lib.load([str(truncated)], shape, classes)
  with pytest.raises(UserError, match="predicts 10 classes, but the data has 5"):
    teachers_lib.load([teacher_file], shape, 5)
  with pytest.raises(UserError, match=r"inputs of shape \(28, 28, 1\).*\(32, 32, 3\)"):
    teachers_lib.load([teacher_file], (32, 32, 3), classes)
  with pytest.raises(UserError, match="not a .keras file"):
    teachers_lib.load([str(tmp_path / "x.h5")] if (tmp_path / "x.h5").write_text("x") else [],
                      shape, classes)
  with pytest.raises(UserError, match="at least one teacher"):
    teachers_lib.load([], shape, classes)
  workdir = tmp_path / "run"  # A run refuses a missing teacher before writing anything.
  with pytest.raises(UserError, match="teacher 0: teacher file .* does not exist"):
    end_to_end.train_and_evaluate(tiny_config(), str(workdir), "distill", DEFAULT,
                                  (str(tmp_path / "none.keras"),))
  assert not workdir.exists() or not os.listdir(workdir)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
  workdir = str(tmp_path / "w")
  end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1}), workdir, "student", DEFAULT)
  os.remove(os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "config.json")) as f:
    identity = json.load(f)
  identity["model"]["width"] = 64  # Pretend the run was configured with a wider model.
  fileio.atomic_write_json(os.path.join(workdir, "config.json"), identity)
  config = tiny_config(**{"student.epochs": 1, "student.width": 64})
  with pytest.raises(UserError, match="does not fit the configured mlp model"):
    end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)


def test_unreadable_data_and_unwritable_workdir(tmp_path, monkeypatch):
  write_fake_mnist(str(tmp_path / "d"))
  real_open = open

  def deny(path, *args, **kwargs):
    if "train-images" in str(path):
      raise PermissionError(13, "Permission denied", str(path))
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr("builtins.open", deny)
  monkeypatch.setattr("gzip.open", deny)
  with pytest.raises(UserError, match="permission denied"):
    sources.load("mnist", str(tmp_path / "d"))
  monkeypatch.undo()
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(UserError, match="is a file, not a directory"):
    end_to_end.train_and_evaluate(tiny_config(), str(blocker / "run"), "student", DEFAULT)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
  path = str(tmp_path / "results.json")
  fileio.atomic_write_json(path, {"ok": 1})

  class Boom:
    def __str__(self):
      raise RuntimeError("interrupted mid-write")

  with pytest.raises(RuntimeError):
    fileio.atomic_write_json(path, {"bad": Boom()})
  assert json.load(open(path)) == {"ok": 1}
  assert os.listdir(tmp_path) == ["results.json"]


def test_overwrite_discards_a_different_run(tmp_path):
  workdir = str(tmp_path / "w")
  end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1}), workdir, "student", DEFAULT)
  config = tiny_config(**{"student.epochs": 1, "student.width": 16})
  with pytest.raises(UserError, match="model.width: 32 -> 16"):
    end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  results = end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT, overwrite=True)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["width"] == 16
  assert results["params"] == json.load(open(os.path.join(workdir, "results.json")))["params"]


def _uskd_cmd(workdir):
  """A labels-only student trained by USKD (no teacher): its weak head is trained state."""
  return [sys.executable, "-m", "kd_research.main", "train", "--role=student",
          "--experiment=fashion_mnist:tiny", f"--workdir={workdir}",
          "--config.student.objective=uskd", "--config.student.model=cnn_article",
          "--config.student.width=4", "--config.deterministic=true", "--config.student.epochs=2",
          "--config.run.checkpoint_every_steps=6", "--config.run.steps_per_loop=2",
          "--config.augment.ops=('flip','crop')"]


def test_sigkill_and_rerun_of_a_uskd_student_matches_the_uninterrupted_run(tmp_path):
  """USKD's weak head and its Adam moments resume exactly: SIGKILL after a checkpoint of step
  >= 18 of 56, rerun; the model and every objective variable equal the uninterrupted run's."""
  killed_at, diff, (a, b) = killed_rerun_matches_uninterrupted(_uskd_cmd, tmp_path, 18,
                                                               2 * STEPS_PER_EPOCH)
  print(f"uskd student killed after checkpoint {killed_at}; max |dw| vs uninterrupted: {diff}")
  assert diff == 0.0 and a["test_accuracy"] == b["test_accuracy"]
  readers = [tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / d /
                                                                     "checkpoints")))
             for d in ("full", "cut")]
  head = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("objective/")]
  assert len(head) == 2, head
  for name in head:
    np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name))
