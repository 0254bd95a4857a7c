"""RandAugment as a batch op: stateless, per example, replica-independent.

The strong view of MLKD (and FixMatch before it) is ``RandAugment(n=2)`` followed by a
random Cutout: each of ``layers`` rounds picks one of the 14 ops below per example,
uniformly, with a magnitude drawn uniformly from the op's range (the ranges of the
logit-standardization repository's ``mdistiller/dataset/cifar100.py``, which MLKD's
published runs used); then a grey square of side ``u * width / 2`` is cut out. The
choices and magnitudes come from ``draw(salt)``: uniforms keyed on (seed, step, salt)
over the global batch and gathered at each example's position (data/augment.py), so a
step's view is the same for any replica count and after a resume.

The ops work on float pixels in [0, 255] (clipped after each op), with these definitions
(the PIL ops they follow, without PIL's rounding to uint8 between ops):
  autocontrast  each channel stretched so its min -> 0 and max -> 255 (unchanged if flat)
  brightness    x * m                        m in [0.05, 0.95]
  color         g + m (x - g), g the luminance 0.299 R + 0.587 G + 0.114 B (grey: x)
  contrast      mu + m (x - mu), mu the image's mean luminance
  equalize      PIL's histogram equalisation per channel, on the pixels rounded to 0..255
  identity
  posterize     the top floor(m) bits of round(x) kept          m in [4, 8]
  rotate        by m degrees about the image centre             m in [-30, 30]
  sharpness     s + m (x - s), s the 3x3 smoothing [1 1 1; 1 5 1; 1 1 1] / 13 inside the
                border (border pixels kept)                     m in [0.05, 0.95]
  shear_x       out(x, y) = in(x + m y, y)                      m in [-0.3, 0.3]
  shear_y       out(x, y) = in(x, y + m x)
  solarize      x below the threshold m kept, others 255 - x    m in [0, 256]
  translate_x   out(x, y) = in(x + m W, y)                      m in [-0.3, 0.3]
  translate_y   out(x, y) = in(x, y + m H)
The geometric ops sample with nearest neighbour and fill with 0 (black, as PIL).
Cutout: side v = u * W / 2 (u uniform), corner (floor(max(0, x0 - v/2)), likewise y) for
a uniform centre (x0, y0); the pixels from the corner up to (not including) corner + v
take the reference's grey (125, 123, 114), or its luminance 123 for one channel.
"""

import math

import tensorflow as tf

OPS = ("autocontrast", "brightness", "color", "contrast", "equalize", "identity", "posterize",
       "rotate", "sharpness", "shear_x", "shear_y", "solarize", "translate_x", "translate_y")
RANGES = {"brightness": (0.05, 0.95), "color": (0.05, 0.95), "contrast": (0.05, 0.95),
          "posterize": (4.0, 8.0), "rotate": (-30.0, 30.0), "sharpness": (0.05, 0.95),
          "shear_x": (-0.3, 0.3), "shear_y": (-0.3, 0.3), "solarize": (0.0, 256.0),
          "translate_x": (-0.3, 0.3), "translate_y": (-0.3, 0.3)}
CUTOUT_GREY = (125.0, 123.0, 114.0)
SALT = 40  # salts SALT .. SALT + 2 * layers + 2 of the view's draws (augment.py uses 1..9)


def magnitude(op, u):
  """The op's magnitude for uniforms ``u`` in [0, 1) (0 for the ops without one)."""
  low, high = RANGES.get(op, (0.0, 0.0))
  return low + (high - low) * u


def luminance(images):
  """[b, H, W, 1]: 0.299 R + 0.587 G + 0.114 B, or the single channel itself."""
  if images.shape[-1] == 1:
    return images
  return tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), -1, keepdims=True)


def _column(m):
  return m[:, None, None, None]


def _blend(degenerate, images, m):
  return degenerate + _column(m) * (images - degenerate)


def _autocontrast(images, m):
  del m
  low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
  high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
  flat = high <= low
  scale = 255.0 / tf.where(flat, 1.0, high - low)
  return tf.where(flat, images, (images - low) * scale)


def _brightness(images, m):
  return images * _column(m)


def _color(images, m):
  return _blend(luminance(images), images, m)


def _contrast(images, m):
  return _blend(tf.reduce_mean(luminance(images), axis=[1, 2, 3], keepdims=True), images, m)


def _equalize(images, m):
  """PIL.ImageOps.equalize per image and channel: step = (pixels - count of the highest
  level present) // 256; level i -> (step // 2 + pixels below i) // step (identity when
  step is 0)."""
  del m
  b, height, width, channels = (tf.shape(images)[0], images.shape[1], images.shape[2],
                                images.shape[3])
  levels = tf.cast(tf.clip_by_value(tf.round(images), 0.0, 255.0), tf.int32)
  per_channel = tf.reshape(tf.transpose(levels, [0, 3, 1, 2]), [b, channels, height * width])
  ids = (tf.range(b * channels)[:, None] * 256
         + tf.reshape(per_channel, [b * channels, height * width]))
  counts = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, b * channels * 256),
                      [b, channels, 256])
  top = tf.reduce_max(per_channel, axis=-1)
  last = tf.gather(counts, top, batch_dims=2)
  step = (height * width - last) // 256
  below = tf.cumsum(counts, axis=-1, exclusive=True)
  safe = tf.maximum(step, 1)[..., None]
  lut = tf.where(step[..., None] > 0, (safe // 2 + below) // safe, tf.range(256)[None, None])
  lut = tf.minimum(lut, 255)
  out = tf.gather(lut, per_channel, batch_dims=2)
  return tf.transpose(tf.reshape(tf.cast(out, tf.float32), [b, channels, height, width]),
                      [0, 2, 3, 1])


def _identity(images, m):
  del m
  return images


def _posterize(images, m):
  shift = 2.0 ** (8.0 - tf.floor(m))
  return tf.floor(tf.round(images) / _column(shift)) * _column(shift)


def _affine(images, rows):
  """out(x, y) = in(a0 x + a1 y + a2, b0 x + b1 y + b2), per example (nearest, fill 0)."""
  zeros = tf.zeros_like(rows[0])
  transforms = tf.stack(list(rows) + [zeros, zeros], axis=1)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=[images.shape[1], images.shape[2]],
      fill_value=0.0, interpolation="NEAREST", fill_mode="CONSTANT")


def _rotate(images, m):
  height, width = images.shape[1], images.shape[2]
  angle = m * math.pi / 180.0
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  return _affine(images, (cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy))


def _sharpness(images, m):
  height, width, channels = images.shape[1], images.shape[2], images.shape[3]
  kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
  kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
  smooth = tf.nn.depthwise_conv2d(images, kernel, [1, 1, 1, 1], "SAME")
  inside = tf.pad(tf.ones([height - 2, width - 2, 1]), [[1, 1], [1, 1], [0, 0]])
  return _blend(inside * smooth + (1.0 - inside) * images, images, m)


def _shear_x(images, m):
  one, zero = tf.ones_like(m), tf.zeros_like(m)
  return _affine(images, (one, m, zero, zero, one, zero))


def _shear_y(images, m):
  one, zero = tf.ones_like(m), tf.zeros_like(m)
  return _affine(images, (one, zero, zero, m, one, zero))


def _solarize(images, m):
  return tf.where(images < _column(m), images, 255.0 - images)


def _translate_x(images, m):
  one, zero = tf.ones_like(m), tf.zeros_like(m)
  return _affine(images, (one, zero, m * images.shape[2], zero, one, zero))


def _translate_y(images, m):
  one, zero = tf.ones_like(m), tf.zeros_like(m)
  return _affine(images, (one, zero, zero, zero, one, m * images.shape[1]))


FUNCTIONS = dict(zip(OPS, (_autocontrast, _brightness, _color, _contrast, _equalize,
                           _identity, _posterize, _rotate, _sharpness, _shear_x, _shear_y,
                           _solarize, _translate_x, _translate_y)))


def apply_op(op, images, u):
  """``op`` on every image with the magnitude of uniforms ``u`` [b], clipped to [0, 255]."""
  return tf.clip_by_value(FUNCTIONS[op](images, magnitude(op, u)), 0.0, 255.0)


def choice(u):
  """The op index of uniforms ``u`` [b]: floor(u * 14)."""
  return tf.minimum(tf.cast(tf.floor(u * len(OPS)), tf.int32), len(OPS) - 1)


def one_round(images, u_op, u_magnitude):
  """Each image through its chosen op (every op runs on the batch; each keeps its own)."""
  candidates = tf.stack([apply_op(op, images, u_magnitude) for op in OPS])
  index = tf.stack([choice(u_op), tf.range(tf.shape(images)[0])], axis=1)
  return tf.gather_nd(candidates, index)


def cutout(images, u_size, u_y, u_x):
  """The grey square described in the module docstring."""
  height, width, channels = images.shape[1], images.shape[2], images.shape[3]
  side = u_size * 0.5 * width
  top = tf.floor(tf.maximum(0.0, u_y * height - side / 2.0))
  left = tf.floor(tf.maximum(0.0, u_x * width - side / 2.0))
  ys = tf.range(height, dtype=tf.float32)[None, :, None]
  xs = tf.range(width, dtype=tf.float32)[None, None, :]
  inside = ((ys >= top[:, None, None]) & (ys < (top + side)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + side)[:, None, None]))
  grey = tf.constant(CUTOUT_GREY if channels == 3 else (123.0,) * channels)
  return tf.where(inside[..., None], grey, images)


def randaugment(images, draw, layers):
  """``layers`` rounds of one random op per example, then the random Cutout."""
  for layer in range(layers):
    images = one_round(images, draw(SALT + 2 * layer), draw(SALT + 2 * layer + 1))
  salt = SALT + 2 * layers
  return cutout(images, draw(salt), draw(salt + 1), draw(salt + 2))
