"""The optimizers' decoupled weight decay: which variables it reaches."""

import keras
import ml_collections
import numpy as np
import pytest

from kd_research.common import schedules
from kd_research.models import registry as model_registry
from kd_research.train import optimizers


def _decayed(name, decay_all):
  """{variable path: whether one AdamW step with zero gradients changed it} for a distilled
  vit_mini (LayerNorms, biases, tokens, position embeddings, kernels)."""
  keras.utils.set_random_seed(0)
  model = model_registry.build("vit_mini_distilled", (8, 8, 1), 3, 16)
  cfg = ml_collections.ConfigDict(dict(name=name, momentum=0.9, weight_decay=0.5,
                                       decay_norms_biases_tokens=decay_all))
  optimizer = optimizers.make_optimizer(cfg, schedules.Schedule("constant", 1, 0.1))
  optimizer.build(model.trainable_variables)
  for v in model.trainable_variables:  # Non-zero values: a decay would move every one.
    v.assign(np.full(v.shape, 0.5, np.float32))
  optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v)
                             for v in model.trainable_variables])
  return {v.path: not np.allclose(v.numpy(), 0.5) for v in model.trainable_variables}


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_norms_biases_and_tokens_can_be_spared_from_weight_decay(name):
  """timm's rule (no decay on 1-D parameters and on the tokens and position embeddings),
  as DeiT trains: every kernel decays, nothing else; by default everything decays."""
  spared = _decayed(name, decay_all=False)
  kernels = [p for p in spared if p.endswith("kernel")]
  others = [p for p in spared if not p.endswith("kernel")]
  assert kernels and all(spared[p] for p in kernels)
  assert {p.rsplit("/", 1)[-1] for p in others} == {"bias", "gamma", "beta", "tokens",
                                                     "positions"}
  assert not any(spared[p] for p in others), [p for p in others if spared[p]]
  assert all(_decayed(name, decay_all=True).values())


def test_the_choice_is_in_a_run_identity_only_when_it_departs_from_the_default():
  """Runs recorded before the option keep their identity (the default decays everything)."""
  from kd_research.train import workdir  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  default = workdir.run_identity(tiny_config(), "student")["optimizer"]
  spared = workdir.run_identity(
      tiny_config(**{"optimizer.decay_norms_biases_tokens": False}), "student")["optimizer"]
  assert "decay_norms_biases_tokens" not in default
  assert spared["decay_norms_biases_tokens"] is False
