"""The training driver and its state: a signal after the last loop boundary, damaged
checkpoints, the run lock, one gradient all-reduce per step, named metric sums and
config.json migration (SIGTERM mid-run is in test_reliability.py, beside SIGKILL)."""

import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from kd_research.common import metrics
from kd_research.methods import base
from kd_research.train import end_to_end
from kd_research.train import steps
from kd_research.train import workdir as workdir_lib
from kd_research.common.errors import Preempted
from kd_research.common.errors import UserError
from conftest import DEFAULT, mlp_sgd, tiny_config



def test_sigterm_after_the_last_loop_boundary_finishes_the_run_then_stops(tmp_path,
                                                                          monkeypatch):
  """A signal that arrives during the final evaluation is not lost: the run completes
  (results.json written), then Preempted stops the caller (a pipeline would otherwise go on
  to its next run); rerunning finds the run finished."""
  config = tiny_config()
  workdir = str(tmp_path / "run")
  final_results = end_to_end._final_results  # pylint: disable=protected-access

  def signalled(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # The guard is still installed: only a flag.
    return final_results(*args)
  monkeypatch.setattr(end_to_end, "_final_results", signalled)
  with pytest.raises(Preempted, match="after the run finished"):
    end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  monkeypatch.setattr(end_to_end, "_final_results", final_results)
  written = json.load(open(os.path.join(workdir, "results.json")))
  assert end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT) == written


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  config = tiny_config(**{"student.epochs": 2, "run.keep_checkpoints": 3})
  workdir = str(tmp_path / "run")
  end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  latest = tf.train.latest_checkpoint(ckpt_dir)
  data_file = latest + ".data-00000-of-00001"
  with open(data_file, "r+b") as f:
    f.truncate(os.path.getsize(data_file) // 2)
  os.remove(os.path.join(workdir, "results.json"))  # As if the run died after saving.
  with caplog.at_level("WARNING"):
    results = end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  assert f"Skipped damaged checkpoint {latest}" in caplog.text
  assert results["steps"] == 2 * (1800 // 64)
  for path in tf.train.get_checkpoint_state(ckpt_dir).all_model_checkpoint_paths:
    with open(path + ".data-00000-of-00001", "rb"):
      pass
  # Every checkpoint damaged: a clear error, not a traceback.
  for name in os.listdir(ckpt_dir):
    if ".data-" in name:
      open(os.path.join(ckpt_dir, name), "r+b").truncate(10)
  os.remove(os.path.join(workdir, "results.json"))
  with pytest.raises(UserError, match="No checkpoint in .* can be read"):
    end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)


def test_second_process_on_a_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / "busy")
  with workdir_lib.RunLock(workdir):
    with pytest.raises(UserError, match=r"is in use by pid \d+ on "):
      end_to_end.train_and_evaluate(tiny_config(), workdir, "student", DEFAULT)
  end_to_end.train_and_evaluate(tiny_config(**{"student.epochs": 1}), workdir, "student", DEFAULT)


def _count_all_reduces(monkeypatch):
  calls = []
  original = tf.distribute.ReplicaContext.all_reduce

  def counting(self, reduce_op, value, options=None):
    calls.append(len(tf.nest.flatten(value)))
    return original(self, reduce_op, value, options)

  monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting)
  return calls


def test_one_gradient_all_reduce_per_step(monkeypatch, strategy_factory):
  """On 2 replicas a traced step all-reduces the gradients once (Keras' optimizer would add a
  second one); the logged global norm and the update stay those of a single device."""
  strategy = strategy_factory(2)
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (16, 4, 4, 1)).astype(np.float32)
  labels = rng.integers(0, 3, 16).astype(np.int32)
  results = {}
  for name, strat in (("one", DEFAULT), ("two", strategy)):
    model, opt, step = mlp_sgd(strat, (4, 4, 1), 3, 8, 0.1)
    calls = _count_all_reduces(monkeypatch)
    ds = strat.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat())
    objective = base.Objective()
    loop = steps.make_train_loop(strat, model, opt, step, 16, objective)
    sums = steps.train_layout(objective.terms_names).unpack(loop(iter(ds), tf.constant(3)))
    results[name] = (calls, sums["grad_norm"], [w.numpy() for w in model.weights])
    monkeypatch.undo()
  gradients = len(results["two"][2])
  # Each of the 2 replicas traces the step once and all-reduces all its gradients once (with
  # Keras' optimizer reducing again, every replica would show a second call).
  assert results["two"][0] == [gradients, gradients]
  assert results["one"][0] == []
  assert results["two"][1] == pytest.approx(results["one"][1], rel=1e-5)
  for a, b in zip(results["one"][2], results["two"][2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sum_layout_packs_and_unpacks_by_name():
  layout = metrics.SumLayout({"loss": (), "calibration": (3, 2), "count": ()})
  packed = layout.pack({"count": 4.0, "loss": 2.5, "calibration": tf.ones([3, 2]) * 7})
  assert packed.shape == (8,)
  out = layout.unpack(packed.numpy() * 2)
  assert out["loss"] == 5.0 and out["count"] == 8.0
  np.testing.assert_array_equal(out["calibration"], np.full((3, 2), 14.0))
  with pytest.raises(KeyError, match="count"):
    layout.pack({"loss": 1.0, "calibration": tf.zeros([3, 2])})


def test_format1_config_json_is_migrated(tmp_path):
  """A run directory written before nested schedules is still recognised as the same run."""
  config = tiny_config(**{"student.epochs": 1})
  workdir = str(tmp_path / "old")
  first = end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  identity = json.load(open(os.path.join(workdir, "config.json")))
  lr = identity["optimizer"].pop("learning_rate")
  identity["optimizer"].update(
      learning_rate=lr["start"], learning_rate_end=lr["end"], learning_rate_schedule=lr["kind"],
      learning_rate_boundaries="", learning_rate_values="", learning_rate_warmup_steps=0,
      learning_rate_warmup_from=0.0)
  identity["augment"]["ops"] = ""
  del identity["format"]
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(identity, f)
  again = end_to_end.train_and_evaluate(config, workdir, "student", DEFAULT)
  assert again["test_accuracy"] == first["test_accuracy"]  # Found finished, not refused.


def test_a_run_refused_at_set_up_leaves_no_workdir_that_blocks_the_next_config(tmp_path):
  """A run stopped before its first checkpoint (config.json written, then refused at set-up,
  e.g. a method that does not fit the models) holds nothing to resume: the next config takes
  the workdir over. With a checkpoint or results, a different config is still refused."""
  from kd_research.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  first, second = (workdir_lib.run_identity(tiny_config(**{"student.width": w}), "student")
                   for w in (8, 16))
  assert workdir_lib.prepare(workdir, first) is None
  assert workdir_lib.prepare(workdir, second) is None  # the first never saved anything
  assert json.load(open(os.path.join(workdir, "config.json"))) == second
  os.makedirs(os.path.join(workdir, "checkpoints"))
  open(os.path.join(workdir, "checkpoints", "checkpoint"), "w").close()
  with pytest.raises(UserError, match="holds a run with a different config"):
    workdir_lib.prepare(workdir, first)
