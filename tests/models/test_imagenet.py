"""The ImageNet family: published parameter counts, PyTorch conventions, taps, any input."""

import numpy as np
import pytest

from kd_research.models import imagenet
from kd_research.models import registry


def trainable(model):
  return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize("name", sorted(imagenet.PUBLISHED_PARAMS))
def test_parameter_counts_at_1000_classes_equal_the_published_ones(name):
  model = registry.build(name, (224, 224, 3), 1000)
  assert trainable(model) == imagenet.PUBLISHED_PARAMS[name]
  assert model.get_layer("pooled").output.shape[-1] == (2048 if name == "resnet50" else
                                                         1024 if name == "mobilenetv1" else 512)
  strides = [224 // model.get_layer(f"stage{i}").output.shape[1] for i in range(1, 5)]
  assert strides == [4, 8, 16, 32]


def test_pytorch_conventions_and_any_input():
  import keras
  model = registry.build("resnet18", (64, 48, 1), 7)
  bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
  assert bns and all(l.momentum == 0.9 and l.epsilon == 1e-5 for l in bns)
  convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
  # Kaiming normal, fan-out: std sqrt(2 / (k * k * out)) for the stem's 7x7x64 kernel.
  stem = convs[0].kernel.numpy()
  assert stem.std() == pytest.approx(np.sqrt(2 / (7 * 7 * 64)), rel=0.05)
  logits = model.get_layer("logits")
  bound = 1 / np.sqrt(512)
  assert np.abs(logits.kernel.numpy()).max() <= bound and np.abs(logits.bias.numpy()).max() > 0
  out = model(np.full((2, 64, 48, 1), 128.0, np.float32))
  assert out.shape == (2, 7) and np.all(np.isfinite(out))


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv1"])
def test_initial_weights_follow_the_seed_and_differ_between_layers(name):
  """An unseeded Keras initializer shared by every layer draws its seed once, at creation:
  every conv of the same shape then started from the same kernel (15 identical pairs in
  resnet18), whatever keras.utils.set_random_seed said."""
  import keras
  def kernels(seed):
    keras.utils.set_random_seed(seed)
    model = registry.build(name, (64, 64, 3), 10, width=8)
    return [w.numpy() for w in model.weights if "kernel" in w.path and w.ndim == 4]
  first, again, other = kernels(0), kernels(0), kernels(1)
  assert all(np.array_equal(a, b) for a, b in zip(first, again))
  assert not any(np.array_equal(a, b) for a, b in zip(first, other))
  assert not any(a.shape == b.shape and np.array_equal(a, b)
                 for i, a in enumerate(first) for b in first[:i])
