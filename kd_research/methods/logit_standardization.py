"""Logit standardization (Sun et al., CVPR 2024): a modifier of kd and dkd.

``config.distill.logit_standardization=true`` standardises both networks' logits per
example before the temperature; the CE term keeps the raw logits.
"""

import tensorflow as tf

from kd_research.methods import base


def standardize(logits):
  """(z - mean(z)) / (1e-7 + std(z)) per example; std unbiased (n - 1), as the reference."""
  z = base.f32(logits)
  mean = tf.reduce_mean(z, -1, keepdims=True)
  n = tf.cast(tf.shape(z)[-1], tf.float32)
  std = tf.sqrt(tf.reduce_sum(tf.square(z - mean), -1, keepdims=True) / (n - 1.0))
  return (z - mean) / (1e-7 + std)


def maybe_standardize(logits, on):
  return standardize(logits) if on else logits
