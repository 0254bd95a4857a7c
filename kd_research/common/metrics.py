"""Metrics by name: packing named sums around the one all-reduce, ensemble probabilities, ECE.

Step functions compute per-replica sums as a dict {name: tensor}; ``SumLayout``
packs them into one float vector so that a single SUM all-reduce moves every
metric, and unpacks the reduced vector (or a host-side accumulation of several)
back into named NumPy values. Nothing outside this module decodes metric vectors
by position.
"""

import numpy as np
import tensorflow as tf

ECE_BINS = 15


class SumLayout:
  """An ordered set of named sums, each a scalar or a fixed-shape array."""

  def __init__(self, shapes):
    """``shapes``: {name: shape tuple} in packing order (``()`` for a scalar)."""
    self.shapes = dict(shapes)
    self.sizes = {name: int(np.prod(shape, dtype=np.int64)) for name, shape in self.shapes.items()}
    self.size = sum(self.sizes.values())

  def pack(self, sums):
    """{name: tensor} -> one float32 vector (every name of the layout must be present)."""
    missing = set(self.shapes) - set(sums)
    if missing:
      raise KeyError(f"metric sums lack {sorted(missing)}")
    return tf.concat([tf.reshape(tf.cast(sums[name], tf.float32), [-1])
                      for name in self.shapes], 0)

  def zeros(self):
    """A packed vector of zeros (the start of an accumulation)."""
    return tf.zeros([self.size], tf.float32)

  def unpack(self, vector):
    """A packed vector (NumPy or tensor) -> {name: float or float64 array}."""
    vector = np.asarray(vector, np.float64)
    out, offset = {}, 0
    for name, shape in self.shapes.items():
      part = vector[offset:offset + self.sizes[name]]
      out[name] = float(part[0]) if shape == () else part.reshape(shape)
      offset += self.sizes[name]
    return out


def all_reduce_sums(strategy, per_replica_sums):
  """SUM over replicas of a per-replica packed vector: one collective for every metric."""
  return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica_sums, axis=None)


def ensemble_probs(teacher_logits, weights, temperature=1.0):
  """Weighted mean of the teachers' softmax(z / T): [K, B, C] logits -> [B, C] probabilities."""
  logits = tf.cast(teacher_logits, tf.float32)
  w = tf.constant(np.asarray(weights, np.float32))
  return tf.einsum("k,kbc->bc", w, tf.nn.softmax(logits / tf.cast(temperature, tf.float32), -1))


def calibration_sums(probs, labels, weight):
  """Per-bin [3, ECE_BINS] (count, sum of confidence, sum of correct), weighted; in TF."""
  confidence = tf.reduce_max(probs, -1)
  correct = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32)
  bins = tf.clip_by_value(tf.cast(tf.math.ceil(confidence * ECE_BINS), tf.int32) - 1, 0,
                          ECE_BINS - 1)
  one_hot = tf.one_hot(bins, ECE_BINS) * weight[:, None]
  return tf.stack([tf.reduce_sum(one_hot, 0), tf.reduce_sum(one_hot * confidence[:, None], 0),
                   tf.reduce_sum(one_hot * correct[:, None], 0)])


def ece_from_sums(sums):
  """Expected calibration error from calibration_sums (summed over batches and replicas)."""
  sums = np.asarray(sums, np.float64)
  count = sums[0].sum()
  if count == 0:
    return 0.0
  gap = np.abs(sums[1] - sums[2])  # |sum confidence - sum correct| per bin.
  return float(gap.sum() / count)


def expected_calibration_error(probs, labels):
  """ECE of [N, C] probabilities against [N] labels (NumPy inputs), ECE_BINS equal bins."""
  sums = calibration_sums(tf.constant(probs, tf.float32), tf.constant(labels, tf.int32),
                          tf.ones([len(labels)], tf.float32))
  return ece_from_sums(sums.numpy())
