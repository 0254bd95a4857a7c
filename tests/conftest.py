"""Test setup: 4 logical CPU devices (before TF initialises) and every shared helper.

One tiny teacher (``teacher_file``) and one convolutional teacher (``conv_teacher``) per
session (shared by the xdist workers), the weights loader, the CLI runner, the scalar
reader, the interrupt-and-resume harness and the NumPy comparison: test modules import these
from here, the generated datasets from generated_data.py (and the methods' NumPy helpers
from methods/method_references.py), and never from each other.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)])

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
DEFAULT = tf.distribute.get_strategy()
def load_experiment(name, arg=None):
  """experiments/<name>.py's get_config(arg) (the API's loader)."""
  from kd_research import api  # pylint: disable=g-import-not-at-top
  return api.load_experiment(name, arg)


def tiny_config(**overrides):
  """The synthetic 'tiny' preset, unlocked for per-test changes, then re-locked."""
  config = load_experiment("fashion_mnist", "tiny")
  with config.unlocked():
    for key, value in overrides.items():
      target = config
      parts = key.split(".")
      for part in parts[:-1]:
        target = target[part]
      target[parts[-1]] = value
  return config


def gradients_on_one_and_two_replicas(objective, batch, two_replicas):
  """(max |g1 - g2|, max |g1|): the student's gradient after one step of ``objective`` on
  ``batch`` (16 examples of 8x8x1, 5 classes) on one device and on ``two_replicas`` (SGD
  with learning rate 1: the weight change is the gradient); MLP teacher (width 16) and
  student (width 8) from seed 0, the live teacher tapped for the objective's taps and views."""
  from kd_research.models import registry as model_registry  # pylint: disable=g-import-not-at-top
  from kd_research.train import steps  # pylint: disable=g-import-not-at-top
  from kd_research.train import teacher_sources  # pylint: disable=g-import-not-at-top
  from kd_research.train import teachers  # pylint: disable=g-import-not-at-top
  grads = []
  for strategy in (DEFAULT, two_replicas):
    with strategy.scope():
      keras.utils.set_random_seed(0)
      teacher = model_registry.build("mlp", (8, 8, 1), 5, 16)
      student = model_registry.build("mlp", (8, 8, 1), 5, 8)
      opt = keras.optimizers.SGD(1.0)
      opt.build(student.trainable_variables)
      step = tf.Variable(0, dtype=tf.int64)
    ensemble = teachers.TeacherEnsemble([teacher], ["t"]).tap(objective.teacher_taps)
    source = teacher_sources.live_teachers(ensemble, objective.teacher_taps, objective.views)
    before = [w.numpy().copy() for w in student.trainable_variables]
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat())
    steps.make_train_loop(strategy, student, opt, step, 16, objective, source)(
        iter(ds), tf.constant(1))
    grads.append([b - w.numpy() for b, w in zip(before, student.trainable_variables)])
  return (max(float(np.abs(a - b).max()) for a, b in zip(*grads)),
          max(float(np.abs(g).max()) for g in grads[0]))


def mlp_sgd(strategy, input_shape, num_classes, width, learning_rate):
  """The tests' MLP + SGD set-up, built in ``strategy.scope()`` from seed 0: (model,
  optimizer built for its variables, step variable)."""
  from kd_research.models import registry as model_registry  # pylint: disable=g-import-not-at-top
  with strategy.scope():
    keras.utils.set_random_seed(0)
    model = model_registry.build("mlp", input_shape, num_classes, width)
    optimizer = keras.optimizers.SGD(learning_rate)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
  return model, optimizer, step


@pytest.fixture
def strategy_factory():
  """Returns make(n): default strategy for n == 1, MirroredStrategy over n logical CPUs else."""
  def make(n):
    if n == 1:
      return tf.distribute.get_strategy()
    # Several MirroredStrategy sizes in one process clash in collective group keys
    # ("joining a group with size4, but that group has size 2"); reduce-to-one has none.
    return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(n)],
                                          cross_device_ops=tf.distribute.ReductionToOneDevice())
  return make


def built_once(tmp_path_factory, name, train):
  """The model file of ``train(workdir)``, trained once per test session: the first test
  process (xdist worker) trains it under a file lock in the directory the workers share,
  the others wait for it and load it."""
  import fcntl  # pylint: disable=g-import-not-at-top
  shared = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    shared = shared.parent  # pytest-N/, above every worker's popen-gwK/.
  workdir = os.path.join(str(shared), name)
  with open(os.path.join(str(shared), f"{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not os.path.exists(os.path.join(workdir, "results.json")):
      train(workdir)
  return os.path.join(workdir, "model.keras")


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
  """A teacher of the tiny preset (synthetic data, MLP), trained once per test session."""
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top

  def train(workdir):
    results = end_to_end.train_and_evaluate(tiny_config(), workdir, "teacher", DEFAULT)
    assert results["test_accuracy"] > 0.9  # Synthetic data is easy for the teacher.
  return built_once(tmp_path_factory, "teacher", train)


def weights_of(workdir):
  model = keras.models.load_model(os.path.join(workdir, "model.keras"), compile=False)
  return [w.numpy() for w in model.weights]


def read_scalars(logdir):
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    values = [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
    if all(v.ndim == 0 for _, v in values):  # Scalars; images are string tensors.
      out[tag] = [(step, float(v)) for step, v in values]
  return out


class Interrupted(Exception):
  pass


def interrupt_then_resume(config, workdir, teacher_path, monkeypatch, stop_after,
                          expected_checkpoint):
  """Stops a distillation run once it passes ``stop_after`` steps, then reruns it."""
  from kd_research.train import driver  # pylint: disable=g-import-not-at-top
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top
  original = driver.Driver._check_finite

  def interrupt(self, sums, step, n):
    original(self, sums, step, n)
    if step + n > stop_after:
      raise Interrupted()

  monkeypatch.setattr(driver.Driver, "_check_finite", interrupt)
  with pytest.raises(Interrupted):
    end_to_end.train_and_evaluate(config, workdir, "distill", DEFAULT, (teacher_path,))
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
  assert latest.endswith(f"-{expected_checkpoint}")
  monkeypatch.setattr(driver.Driver, "_check_finite", original)
  end_to_end.train_and_evaluate(config, workdir, "distill", DEFAULT, (teacher_path,))


def kill_after_checkpoint(cmd, checkpoint_dir, at_least, timeout=240):
  """Starts ``cmd``, SIGKILLs it once a checkpoint of step >= ``at_least`` exists; returns
  the newest checkpoint's step after the kill."""
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    latest = (tf.train.latest_checkpoint(checkpoint_dir) if os.path.isdir(checkpoint_dir)
              else None)
    if latest and int(latest.rsplit("-", 1)[1]) >= at_least:
      break
    time.sleep(0.01)
  assert proc.poll() is None, "the run finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  return int(tf.train.latest_checkpoint(checkpoint_dir).rsplit("-", 1)[1])


def killed_rerun_matches_uninterrupted(command, tmp_path, at_least, total_steps):
  """Runs ``command(workdir)`` uninterrupted in ``tmp_path/full``; in ``tmp_path/cut`` it is
  SIGKILLed after a checkpoint of step >= ``at_least`` (< ``total_steps``), then rerun to the
  end, which must say it resumed. Returns (the killed run's step, max |w_full - w_cut|, the
  two results.json)."""
  full, cut = str(tmp_path / "full"), str(tmp_path / "cut")
  done = subprocess.run(command(full), cwd=REPO, env=ENV, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  killed_at = kill_after_checkpoint(command(cut), os.path.join(cut, "checkpoints"), at_least)
  assert at_least <= killed_at < total_steps
  assert not os.path.exists(os.path.join(cut, "results.json"))
  resumed = subprocess.run(command(cut), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f"ckpt-{killed_at}" in resumed.stderr and "Resumed" in resumed.stderr
  diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights_of(full), weights_of(cut)))
  results = [json.load(open(os.path.join(d, "results.json"))) for d in (full, cut)]
  return killed_at, diff, results


@pytest.fixture(scope="session")
def conv_teacher(tmp_path_factory):
  """A small convolutional teacher with stage taps (resnet_article w8 on the synthetic data)."""
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"teacher.model": "resnet_article", "teacher.width": 8,
                          "teacher.epochs": 2})
  return built_once(tmp_path_factory, "conv_teacher",
                    lambda workdir: end_to_end.train_and_evaluate(config, workdir, "teacher",
                                                                  DEFAULT))


@pytest.fixture(scope="session")
def vit_teacher(tmp_path_factory):
  """A ViT teacher (vit_mini w24, one epoch on the synthetic data) for the methods between
  transformers (ViTKD), trained once per session."""
  from kd_research.train import end_to_end  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"teacher.model": "vit_mini", "teacher.width": 24,
                          "teacher.epochs": 1})
  return built_once(tmp_path_factory, "vit_teacher",
                    lambda workdir: end_to_end.train_and_evaluate(config, workdir, "teacher",
                                                                  DEFAULT))


def method_config(method, **overrides):
  return tiny_config(**{"student.model": "cnn_article", "student.width": 4, "student.epochs": 1,
                        "distill.method": method, "run.allow_weak_teacher": True,
                        "distill.dkd.warmup_epochs": 1, "distill.crd.negatives": 64,
                        "distill.reviewkd.warmup_epochs": 1,
                        # cnn_article's 12x12 stage1 against resnet_article's 14x14 stage2: a pair
                        # ConvReg does not map (test_connectors.py checks the reference one).
                        "distill.fitnets.connector": "resize",
                        **overrides})


RELATIVE = {}  # name -> max relative error vs NumPy, printed for the closing notes.


def check(name, got, want, rtol=1e-4, atol=1e-6):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
  rel = float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
  RELATIVE[name] = max(RELATIVE.get(name, 0.0), rel)
  print(f"{name}: max relative error {rel:.2e}")


def global_batches(fn, replicas, steps, pipelines=1):
  """Concatenates the per-replica batches of every pipeline back into global batches."""
  streams = []
  for pid in range(pipelines):
    ctx = tf.distribute.InputContext(pipelines, pid, replicas)
    streams.append(iter(fn(ctx)))
  per_pipeline = replicas // pipelines
  out = []
  for _ in range(steps):
    parts = [next(s) for s in streams for _ in range(per_pipeline)]
    out.append({k: np.concatenate([p[k].numpy() for p in parts]) for k in parts[0]})
  return out


# Lines TensorFlow, TFLite and absl print on their own: a run shows none unless --verbose.
TF_CHATTER = ("oneDNN", "cpu_feature_guard", "Sharding callback", "Assets written",
              "fingerprint", "XNNPACK", "fully_quantize", "absl::InitializeLog")


def run_main(*args, cwd=REPO, env=ENV):
  return subprocess.run([sys.executable, "-m", "kd_research.main", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def run_main_module(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=ENV,
                        capture_output=True, text=True, timeout=600)


def distill_cmd(workdir, teacher_file, epochs=4):
  return [sys.executable, "-m", "kd_research.main", "distill", "--experiment=fashion_mnist:tiny",
          f"--workdir={workdir}", f"--config.teacher.path={teacher_file}",
          "--config.deterministic=true", f"--config.student.epochs={epochs}",
          "--config.run.checkpoint_every_steps=10", "--config.run.steps_per_loop=2",
          "--config.run.log_every_steps=2", "--config.augment.ops=('flip','crop','cutout')",
          "--config.distill.alpha.kind=linear", "--config.distill.alpha.end=0.2"]


# The fast tier (./launch.sh test --fast) leaves these out: whole runs in subprocesses or
# several processes, real-data end to end, and every test that needs a trained teacher.
SLOW_MODULES = {"test_e2e_fashion_mnist", "test_distribute", "test_reliability", "test_driver",
                "test_pipeline", "test_cli", "test_keras_peer", "test_export",
                "test_streamed_runs", "test_notebook", "test_slurm", "test_user_models",
                "test_mutual_learning_runs"}
SLOW_FIXTURES = {"teacher_file", "conv_teacher", "vit_teacher"}


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: whole runs; left out by ./launch.sh test --fast")


# ./launch.sh test spreads the tests over the cores (pytest-xdist, --dist loadgroup): each
# test goes to the next free worker, except the modules whose module-scoped fixture is a
# server or trained runs (a Slurm cluster; teachers, shards, exports), which stay on one
# worker so that it is built once.
GROUPED_MODULES = {"test_slurm", "test_teachers", "test_streams", "test_export",
                   "test_streamed_runs"}


def pytest_collection_modifyitems(config, items):
  """Marks the slow tests, and puts them first (a stable sort, so each module's tests stay
  in order): the longest work starts while the units are left to fill the last gaps."""
  for item in items:
    module = item.module.__name__.rsplit(".", 1)[-1]
    if module in SLOW_MODULES or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
      item.add_marker(pytest.mark.slow)
  # The grouped modules are the largest units a worker takes (every test of the module, one
  # after the other): they go first, as a scheduler places the largest jobs first, so that
  # neither worker is left with a long block while the other idles at the end.
  items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                               item.module.__name__.rsplit(".", 1)[-1] not in GROUPED_MODULES))


def pytest_xdist_make_scheduler(config, log):
  """--dist loadgroup with the groups named by GROUPED_MODULES: a scheduler that reads the
  module from each test id. (xdist_group marks no longer group under pytest 9, which
  ignores the id suffix xdist 3.8 writes into ``item._nodeid``: the tests of one module
  ran on both workers and built its fixture twice.)"""
  if config.getvalue("dist") != "loadgroup":
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class ModuleGroups(LoadScopeScheduling):

    def _split_scope(self, nodeid):
      module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
      return module if module in GROUPED_MODULES else nodeid

  return ModuleGroups(config, log)
