"""Random draws of one example, keyed on (seed, salt, step, position in the global batch).

The input pipeline and the training step see each example at a known global position of a
known step: draws keyed on those are the same whichever replica holds the example, for any
replica count, and after a resume. Used where a draw has the size of an image or a layer
(random erasing's noise, stochastic depth's masks) and a draw over the whole global batch,
gathered at the positions, would cost too much.
"""

import tensorflow as tf

KEY_MULTIPLIER = 1000003  # seed * KEY_MULTIPLIER + salt: distinct salts of one seed


def per_example(draw, seed, salt, step, positions, global_batch_size, shape):
  """[len(positions), *shape]: ``draw(shape, seed=key)`` (a tf.random.stateless_* op) per
  example with key (seed * KEY_MULTIPLIER + salt, step * global_batch_size + position)."""
  keys = tf.stack([
      tf.fill(tf.shape(positions), tf.cast(seed, tf.int64) * KEY_MULTIPLIER + salt),
      tf.cast(step, tf.int64) * global_batch_size + tf.cast(positions, tf.int64)], axis=1)
  return tf.map_fn(lambda key: draw(shape, seed=key), keys, fn_output_signature=tf.float32)
