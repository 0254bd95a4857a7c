"""A generated, learnable toy dataset for tests and quick runs (no files)."""

import numpy as np

from kd_research.data import sources


def synthetic(num_train=2000, num_test=500, shape=(28, 28, 1), num_classes=10, seed=1234):
  """A learnable toy dataset: noisy copies of one random prototype image per class."""
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(0, 255, size=(num_classes,) + tuple(shape))

  def draw(n):
    labels = rng.integers(0, num_classes, size=n).astype(np.int32)
    noise = rng.normal(0, 60, size=(n,) + tuple(shape))
    return np.clip(prototypes[labels] * 0.6 + noise + 50, 0, 255).astype(np.uint8), labels

  train_x, train_y = draw(num_train)
  test_x, test_y = draw(num_test)
  return sources.RawData(train_x, train_y, test_x, test_y, num_classes, "synthetic")


sources.register(sources.Source("synthetic", lambda directory: synthetic()))
