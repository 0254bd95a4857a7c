"""The benchmark's FLOP count (its GFLOP/s and share-of-peak columns) against the
multiply-add counts written out by hand."""

import keras

from kd_research.models import registry as model_registry
from kd_research.tools import bench_runs


def test_tokens_attention_and_convolutions_are_counted():
  inputs = keras.Input((5, 8))  # 5 tokens of width 8
  x = keras.layers.Dense(16)(inputs)
  x = keras.layers.MultiHeadAttention(2, 4)(x, x)  # 2 heads of 4: inner width 8
  model = keras.Model(inputs, x)
  dense = 2 * 5 * 8 * 16
  attention = 2 * 5 * 16 * 8 * 4 + 2 * 2 * 5 * 5 * 8  # q, k, v, out; scores and values
  assert bench_runs.forward_flops(model) == dense + attention
  images = keras.Input((6, 6, 3))
  conv = keras.Model(images, keras.layers.Conv2D(4, 3, padding="same")(images))
  assert bench_runs.forward_flops(conv) == 2 * 6 * 6 * 4 * 9 * 3


def test_vit_mini_counts_every_block():
  """vit_mini_distilled at width 64 on 28x28: 49 patches + 2 tokens, 4 blocks."""
  t, d = 51, 64
  block = 2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * 4 * d
  patches = 2 * 7 * 7 * d * 16
  heads = 2 * 2 * d * 10
  model = model_registry.build("vit_mini_distilled", (28, 28, 1), 10, 64)
  assert bench_runs.forward_flops(model) == 4 * block + patches + heads
