"""Wall-clock timing helpers: median of repeated calls, and inference latency of a model."""

import time

import numpy as np
import tensorflow as tf


def median_seconds(fn, repeats=20, warmup=3):
  """Median wall time (s) of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

  ``fn`` must block until its work is done (e.g. end in ``.numpy()``).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def inference_ms_per_batch(model, input_shape, batch_size=128, repeats=20, warmup=3):
  """Median wall time (ms) of one inference-mode forward pass on a batch, after warm-up
  (at most ``repeats`` warm-up passes: a smoke test's few timed passes need few)."""
  warmup = min(warmup, repeats)
  images = tf.random.uniform((batch_size,) + tuple(input_shape), 0, 255, seed=0)
  forward = tf.function(lambda x: model(x, training=False))
  return 1000.0 * median_seconds(lambda: forward(images).numpy(), repeats, warmup)
