"""Test setup: 4 logical CPU devices (before TF initialises) and shared helpers."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tensorflow as tf  # noqa: E402

_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(4)])

import pytest  # noqa: E402


def load_experiment(name, arg=None):
  """Imports experiments/<name>.py by path and returns get_config(arg) (unlocked copy)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      f"experiments.{name}", os.path.join(REPO, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg is not None else module.get_config()


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


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
  """A teacher of the tiny preset (synthetic data, MLP), trained once per test session."""
  from kd_research.train import runs  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("teacher"))
  runs.train_and_evaluate(tiny_config(), workdir, "teacher", tf.distribute.get_strategy())
  return os.path.join(workdir, "model.keras")
