"""Every experiment module loads, and every preset validates."""

import os

import pytest

from kd_research import config as config_lib
from conftest import REPO, load_experiment

PRESETS = {"fashion_mnist": ["quick", "full", "tiny"], "cifar10_seed": [None, "mini"],
           "fashion_mnist_schedules": [None], "fashion_mnist_multi_teacher": [None],
           "fashion_mnist_pretrained_teacher": [None, "imagenet"],
           "fashion_mnist_results": [None]}


def test_every_experiment_module_is_covered():
  names = {f[:-3] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".py")}
  assert names == set(PRESETS)


@pytest.mark.parametrize("name,preset", [(n, p) for n, ps in PRESETS.items() for p in ps])
def test_preset_validates_and_is_locked(name, preset):
  config = load_experiment(name, preset) if preset else load_experiment(name)
  config_lib.validate(config)
  with pytest.raises(AttributeError):
    config.distill.temprature = 4.0
  module = open(os.path.join(REPO, "experiments", f"{name}.py")).read()
  assert "./launch.sh" in module  # The docstring gives the launch command.


def test_cifar10_docstring_quotes_the_claimed_table():
  module = open(os.path.join(REPO, "experiments", "cifar10_seed.py")).read()
  for figure in ("92.1%", "86.3%", "89.7%"):
    assert figure in module
  from experiments import cifar10_seed  # The same figures, quoted by report --claims.
  for figure in ("92.1%", "86.3%", "89.7%"):
    assert figure in cifar10_seed.CLAIMED_TABLE
