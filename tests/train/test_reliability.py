"""Reliability: SIGKILL and SIGTERM then resume exactly, bad input, teacher integrity,
atomic outputs."""

import hashlib
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf

from kd_research.data import sources
from kd_research.common import fileio
from kd_research.train import runs
from kd_research.train import teachers as teachers_lib
from kd_research.common.errors import PREEMPTED_EXIT_STATUS
from kd_research.common.errors import UserError
from conftest import DEFAULT, ENV, REPO, distill_cmd, kill_after_checkpoint, tiny_config
from conftest import weights_of



# Three runs cover every kind of state: 'ctkd' (kd, a schedule of alpha, augmentation, and
# CTKD's learnable temperature); 'mlkd_crd' (MLKD's strong view, a function of seed and
# step, with CRD's memory banks, Z and embedding heads); 'features' (ofd, reviewkd, vid, nst,
# cc together, a conv teacher: OFD's connectors, ReviewKD's fusion modules, VID's
# regressors and variances). Each is run uninterrupted once (per test process: the module
# is one xdist group), and the SIGKILL and SIGTERM runs are compared with it.

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """uninterrupted(method, teacher_file) -> the workdir of that run, finished (run once)."""
  done = {}

  def get(method, teacher_file):
    if method not in done:
      workdir = str(tmp_path_factory.mktemp(f"uninterrupted_{method}"))
      out = subprocess.run(distill_cmd(workdir, teacher_file, method), cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)
      assert out.returncode == 0, out.stderr[-2000:]
      done[method] = workdir
    return done[method]
  return get


@pytest.mark.parametrize("method,teacher", [("ctkd", "teacher_file"),
                                            ("mlkd_crd", "teacher_file"),
                                            ("features", "conv_teacher")])
def test_sigkill_and_rerun_matches_uninterrupted_run(tmp_path, request, method, teacher,
                                                      uninterrupted):
  teacher_file = request.getfixturevalue(teacher)
  full, cut = uninterrupted(method, teacher_file), str(tmp_path / "cut")
  ckpt_dir = os.path.join(cut, "checkpoints")
  killed_at = kill_after_checkpoint(distill_cmd(cut, teacher_file, method), ckpt_dir, 40)
  assert 40 <= killed_at < 4 * 28
  assert not os.path.exists(os.path.join(cut, "results.json"))
  resumed = subprocess.run(distill_cmd(cut, teacher_file, method), cwd=REPO, env=ENV,
                           capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Resumed" in resumed.stderr
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(weights_of(full), weights_of(cut))]
  print(f"killed after checkpoint {killed_at}; max |dw| vs uninterrupted: {max(diffs)}")
  assert max(diffs) == 0.0
  a = json.load(open(os.path.join(full, "results.json")))
  b = json.load(open(os.path.join(cut, "results.json")))
  assert a["test_accuracy"] == b["test_accuracy"] and a["test_loss"] == b["test_loss"]
  readers = [tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(d, "checkpoints")))
             for d in (full, cut)]
  names = [n for n in readers[0].get_variable_to_shape_map() if n.startswith("objective/")]
  assert names  # The objectives' variables are checkpointed.
  if method == "features":  # Connectors, fusion modules, regressors, variances, BN stats.
    assert len(names) > 40, names
  for name in names:
    np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name))


def test_sigterm_checkpoints_then_rerun_matches_uninterrupted_run(tmp_path, teacher_file,
                                                                  uninterrupted):
  """SIGTERM mid-run (long checkpoint interval): the run saves at the next loop boundary,
  exits with the preemption status, and the rerun ends bit-identical to the uninterrupted
  'ctkd' run (which checkpoints every 10 steps: the interval does not change training)."""
  def command(workdir):
    return distill_cmd(workdir, teacher_file, "ctkd") + [
        "--config.run.checkpoint_every_steps=1000"]
  full, cut = uninterrupted("ctkd", teacher_file), str(tmp_path / "cut")
  proc = subprocess.Popen(command(cut), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  events = lambda: [n for n in os.listdir(cut) if n.startswith("events")] if os.path.isdir(
      cut) else []
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and not events():
    time.sleep(0.05)
  time.sleep(1.0)  # Training is under way (the events file exists from the first step on).
  assert proc.poll() is None, "the run finished before it could be stopped"
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == PREEMPTED_EXIT_STATUS, err[-2000:]
  assert "preempted: stopped by SIGTERM at step" in err
  saved = int(tf.train.latest_checkpoint(os.path.join(cut, "checkpoints")).rsplit("-", 1)[1])
  assert 0 < saved < 4 * 28 and saved % 1000 != 0  # Saved because of the signal.
  assert not os.path.exists(os.path.join(cut, "results.json"))
  resumed = subprocess.run(command(cut), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  diffs = [float(np.max(np.abs(a - b))) for a, b in zip(weights_of(full), weights_of(cut))]
  print(f"SIGTERM: checkpoint at step {saved}; max |dw| vs uninterrupted: {max(diffs)}")
  assert max(diffs) == 0.0


def _sha(path):
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_teacher_file_untouched_by_distillation(tmp_path, teacher_file):
  before = _sha(teacher_file)
  runs.train_and_evaluate(tiny_config(**{"student.epochs": 1}), str(tmp_path / "kd"), "distill",
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


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
  workdir = str(tmp_path / "w")
  runs.train_and_evaluate(tiny_config(**{"student.epochs": 1}), workdir, "student", DEFAULT)
  os.remove(os.path.join(workdir, "results.json"))
  with open(os.path.join(workdir, "config.json")) as f:
    identity = json.load(f)
  identity["model"]["width"] = 64  # Pretend the run was configured with a wider model.
  fileio.atomic_write_json(os.path.join(workdir, "config.json"), identity)
  config = tiny_config(**{"student.epochs": 1, "student.width": 64})
  with pytest.raises(UserError, match="does not fit the configured mlp model"):
    runs.train_and_evaluate(config, workdir, "student", DEFAULT)


def test_unreadable_data_and_unwritable_workdir(tmp_path, monkeypatch):
  from conftest import write_fake_mnist
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
    runs.train_and_evaluate(tiny_config(), str(blocker / "run"), "student", DEFAULT)


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
  runs.train_and_evaluate(tiny_config(**{"student.epochs": 1}), workdir, "student", DEFAULT)
  config = tiny_config(**{"student.epochs": 1, "student.width": 16})
  with pytest.raises(UserError, match="model.width: 32 -> 16"):
    runs.train_and_evaluate(config, workdir, "student", DEFAULT)
  results = runs.train_and_evaluate(config, workdir, "student", DEFAULT, overwrite=True)
  assert json.load(open(os.path.join(workdir, "config.json")))["model"]["width"] == 16
  assert results["params"] == json.load(open(os.path.join(workdir, "results.json")))["params"]
