"""Encoded image -> model input, in the graph: the training and the evaluation view.

Views (``config.data.train_view``; evaluation always uses ``eval_view``):
  inception  random-resized ("inception") crop + horizontal flip, the ImageNet training view
             of every KD paper: area in [``crop_area_min``, 1] of the image, aspect ratio in
             [3/4, 4/3], resized to ``image_size``. JPEGs take the fused
             ``decode_and_crop_jpeg`` (only the crop's blocks are decoded).
  center     resize the shorter side to ``image_size / eval_crop_fraction`` and take the
             central ``image_size`` square (ImageNet's resize 256 + centre crop 224); with
             ``image_size`` 0 the image is decoded as it is (fixed-size sources).
The random numbers of a view are stateless, keyed on (seed, global step, position in the
global batch) like the batch augmentations (augment.py): the view of an example at a step
is the same for any replica count and after a resume, and the teacher sees that view.
"""

import dataclasses

import tensorflow as tf

from kd_research.common.errors import UserError

TRAIN_VIEWS = ("center", "inception")
_SALT = 1009  # Keeps the crop's random numbers apart from augment.py's salts.


@dataclasses.dataclass(frozen=True)
class View:
  """How encoded images of one source become [size, size, channels] float32 in 0..255."""
  image_size: int           # 0: decode at the source's own fixed size
  channels: int
  fixed_shape: tuple = ()   # (H, W) of a fixed-size source, for image_size 0
  train_view: str = "center"
  crop_area_min: float = 0.08
  eval_crop_fraction: float = 0.875

  @property
  def shape(self):
    if self.image_size:
      return (self.image_size, self.image_size, self.channels)
    return tuple(self.fixed_shape) + (self.channels,)


def view_from_config(data_config, image_size, channels, sizes):
  """The View of a source whose images have ``sizes`` ({(h, w)}; None: they vary)."""
  if data_config.train_view not in TRAIN_VIEWS:
    raise UserError(f"config.data.train_view={data_config.train_view!r}; valid: "
                    f"{', '.join(TRAIN_VIEWS)}.")
  if not 0 < data_config.crop_area_min <= 1:
    raise UserError(f"config.data.crop_area_min must be in (0, 1], got "
                    f"{data_config.crop_area_min}.")
  if not 0 < data_config.eval_crop_fraction <= 1:
    raise UserError(f"config.data.eval_crop_fraction must be in (0, 1], got "
                    f"{data_config.eval_crop_fraction}.")
  if image_size < 0:
    raise UserError(f"config.image_size must be >= 0 (0: the source's own size), got "
                    f"{image_size}.")
  fixed = ()
  if not image_size:
    if sizes is None or len(sizes) != 1:
      examples = ", ".join(f"{h}x{w}" for h, w in sorted(sizes or ())[:4]) or "varied"
      raise UserError(f"The images have different sizes ({examples}, ...): set "
                      "--config.image_size=N to resize and crop them to NxN.")
    if data_config.train_view == "inception":
      raise UserError("config.data.train_view=inception needs --config.image_size=N (the "
                      "crop's output size).")
    fixed = next(iter(sizes))
  return View(image_size, channels, tuple(fixed), data_config.train_view,
              data_config.crop_area_min, data_config.eval_crop_fraction)


def _decode(encoded, channels):
  return tf.io.decode_image(encoded, channels=channels, expand_animations=False)


def _resize(image, size):
  """Bilinear without antialiasing, as big_vision's and TF-slim's inception crops: the
  crop is at most a few times the output size, and antialiasing doubles the view's cost
  (measured: 870 vs 1,610 500x375 JPEGs/s on one core)."""
  return tf.image.resize(tf.cast(image, tf.float32), [size, size])


def eval_image(encoded, view):
  """Resize + centre crop (or the plain decode at the fixed size): float32 0..255."""
  image = _decode(encoded, view.channels)
  if not view.image_size:
    image.set_shape(view.shape)
    return tf.cast(image, tf.float32)
  shape = tf.cast(tf.shape(image)[:2], tf.float32)
  scale = view.image_size / view.eval_crop_fraction / tf.reduce_min(shape)
  resized = tf.cast(tf.round(shape * scale), tf.int32)
  image = tf.image.resize(tf.cast(image, tf.float32), tf.maximum(resized, view.image_size),
                          antialias=True)
  size = view.image_size
  top = (tf.shape(image)[0] - size) // 2
  left = (tf.shape(image)[1] - size) // 2
  image = image[top:top + size, left:left + size]
  image.set_shape(view.shape)
  return tf.clip_by_value(image, 0.0, 255.0)


def _crop_box(shape, key, area_min):
  """(offset_y, offset_x, height, width) of a random-resized crop of an image ``shape``."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, tf.zeros([0, 0, 4], tf.float32), seed=key, min_object_covered=0.0,
      aspect_ratio_range=(3 / 4, 4 / 3), area_range=(area_min, 1.0), max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return begin[0], begin[1], size[0], size[1]


def inception_image(encoded, view, key):
  """Random-resized crop + flip, keyed on ``key`` (a [2] int64 stateless seed)."""
  def jpeg():
    y, x, h, w = _crop_box(tf.io.extract_jpeg_shape(encoded), key, view.crop_area_min)
    return tf.io.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=view.channels)

  def other():
    image = _decode(encoded, view.channels)
    y, x, h, w = _crop_box(tf.shape(image), key, view.crop_area_min)
    return image[y:y + h, x:x + w]

  image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  image = _resize(image, view.image_size)
  flip = tf.random.stateless_uniform([], seed=key + tf.constant([0, 1], tf.int64)) < 0.5
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  image.set_shape(view.shape)
  return tf.clip_by_value(image, 0.0, 255.0)


def train_image(encoded, view, seed, step, position):
  """The training view of one example at (``step``, ``position``) of the global batch."""
  if view.train_view == "center":
    return eval_image(encoded, view)
  key = tf.stack([tf.cast(seed, tf.int64) * 1000003 + _SALT,
                  tf.cast(step, tf.int64) * 1000003 + tf.cast(position, tf.int64)])
  return inception_image(encoded, view, key)
