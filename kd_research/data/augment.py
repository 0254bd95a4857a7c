"""Batch augmentation that teacher and student see alike, independent of the replica count.

Augmentation runs in the input pipeline on each replica's batch, so the teacher
and the student are called on the very same augmented images. All randomness is
drawn with stateless RNGs keyed on (seed, global step) over the *global* batch
and then gathered at each example's position in it: the augmented batch of a
step is identical for 1, 2 or 4 replicas and after a resume.

Ops (``config.augment.ops``, comma-separated, applied in this order):
  flip     horizontal flip with probability 1/2
  crop     pad by ``crop_padding`` (zeros) and crop back at a random offset
  rotate   rotation by a uniform angle in [-rotation_degrees, rotation_degrees]
  cutout   zero a ``cutout_size`` square at a random centre (may overlap the border)
  mixup    x = lam x_i + (1 - lam) x_j, lam ~ Beta(mixup_alpha, mixup_alpha); labels mixed
  cutmix   paste a box of x_j into x_i (area 1 - lam, lam ~ Beta(cutmix_alpha, ...))
  randaugment  ``randaugment_layers`` random ops per example, then a random grey Cutout
               (data/randaugment.py; MLKD's strong view)
  erase    timm's RandomErasing as DeiT uses it (--reprob, mode 'pixel', count 1): with
           probability ``erase_prob`` a box of U(0.02, 1/3) of the area and aspect ratio
           exp(U(log 0.3, log 1 / 0.3)) (the first of 10 draws that fits), at a uniform
           position, filled with per-pixel N(0, 1) noise of the normalised image: timm
           erases after normalising by the ImageNet mean and std, so here, on [0, 255]
           pixels, 255 (mean_c + std_c z) (grey images: the channels' mean 0.449, std 0.226)
Mixing partners are neighbouring positions (0<->1, 2<->3, ...) of the shuffled
global batch, which stay on one replica whenever the per-replica batch is even. With both
mixup and cutmix (DeiT's recipe: 0.8 and 1.0), each example is cut-mixed with probability
1/2 and mixed up otherwise (timm's Mixup switch_prob 0.5, drawn per example here, as its
'elem' mode; lam is per example in both).
Extra views of the same images (data/views.py) draw with their own ``salt_offset``.
"""

import dataclasses
import math

import tensorflow as tf

from kd_research.common import example_draws
from kd_research.common.errors import UserError
from kd_research.data import randaugment as randaugment_lib

OPS = ("flip", "crop", "rotate", "cutout", "randaugment", "erase", "mixup", "cutmix")
MIXING = ("mixup", "cutmix")


def parse_ops(text):
  """('flip', 'crop') or 'flip,crop' -> ('flip', 'crop'); unknown names raise UserError."""
  if not isinstance(text, str):  # A tuple of op names (the config's form).
    text = ",".join(text)
  ops = tuple(o.strip() for o in text.split(",") if o.strip())
  for op in ops:
    if op not in OPS:
      raise UserError(f"Unknown augmentation {op!r} in config.augment.ops; valid: "
                      f"{', '.join(OPS)}.")
  return ops


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """config.augment parsed once: the main ops (checked names) and every op's parameters."""
  ops: tuple
  crop_padding: int
  rotation_degrees: float
  cutout_size: int
  mixup_alpha: float
  cutmix_alpha: float
  randaugment_layers: int
  erase_prob: float

  @property
  def mixing(self):
    """The mixup/cutmix op of the main ops, if any (as a tuple)."""
    return tuple(op for op in self.ops if op in MIXING)


def parse(section):
  """config.augment as an ``AugmentSpec`` (its views are parsed by views.py)."""
  return AugmentSpec(parse_ops(section.ops), section.crop_padding, section.rotation_degrees,
                     section.cutout_size, section.mixup_alpha, section.cutmix_alpha,
                     section.randaugment_layers, section.erase_prob)


def validate(cfg, input_shape, per_replica_batch, ops=None):
  """Checks the parameters (an ``AugmentSpec``) of ``ops`` (default: its main ops) against
  the image size and the batch split."""
  ops = cfg.ops if ops is None else tuple(ops)
  height, width = input_shape[:2]
  if "crop" in ops and not 0 < cfg.crop_padding < min(height, width):
    raise UserError(f"config.augment.crop_padding must be in [1, {min(height, width) - 1}], "
                    f"got {cfg.crop_padding}.")
  if "rotate" in ops and not 0 < cfg.rotation_degrees <= 180:
    raise UserError(f"config.augment.rotation_degrees must be in (0, 180], "
                    f"got {cfg.rotation_degrees}.")
  if "cutout" in ops and not 0 < cfg.cutout_size <= min(height, width):
    raise UserError(f"config.augment.cutout_size must be in [1, {min(height, width)}] for "
                    f"{height}x{width} images, got {cfg.cutout_size}.")
  if "erase" in ops and not 0 < cfg.erase_prob <= 1:
    raise UserError(f"config.augment.erase_prob must be in (0, 1], got {cfg.erase_prob}.")
  for op, alpha in (("mixup", cfg.mixup_alpha), ("cutmix", cfg.cutmix_alpha)):
    if op in ops and alpha <= 0:
      raise UserError(f"config.augment.{op}_alpha must be > 0, got {alpha}.")
  if "randaugment" in ops:
    if input_shape[-1] not in (1, 3):
      raise UserError(f"randaugment works on 1- or 3-channel images, got {input_shape[-1]} "
                      "channels.")
    if not (isinstance(cfg.randaugment_layers, int) and 1 <= cfg.randaugment_layers <= 20):
      raise UserError(f"config.augment.randaugment_layers must be an integer in [1, 20] (ops "
                      f"per image), got {cfg.randaugment_layers!r}.")
  if set(ops) & set(MIXING) and per_replica_batch % 2:
    raise UserError(f"{'/'.join(set(ops) & set(MIXING))} pairs neighbouring examples and needs "
                    f"an even per-replica batch, got {per_replica_batch}.")
  return ops


def _uniform(seed, step, salt, shape):
  key = tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt, tf.cast(step, tf.int64)])
  return tf.random.stateless_uniform(shape, seed=key)


def _beta(seed, step, salt, n, alpha):
  key_a = tf.stack([tf.cast(seed, tf.int64) * 1000003 + salt, tf.cast(step, tf.int64)])
  key_b = key_a + tf.constant([7919, 0], tf.int64)
  a = tf.random.stateless_gamma([n], seed=key_a, alpha=alpha)
  b = tf.random.stateless_gamma([n], seed=key_b, alpha=alpha)
  return a / (a + b)


def _flip(images, u):
  return tf.where(u[:, None, None, None] < 0.5, tf.reverse(images, axis=[2]), images)


def _crop(images, u_y, u_x, padding):
  n, height, width = tf.shape(images)[0], images.shape[1], images.shape[2]
  padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
  off_y = tf.floor(u_y * (2 * padding + 1))
  off_x = tf.floor(u_x * (2 * padding + 1))
  hp, wp = float(height + 2 * padding - 1), float(width + 2 * padding - 1)
  boxes = tf.stack([off_y / hp, off_x / wp, (off_y + height - 1) / hp,
                    (off_x + width - 1) / wp], axis=1)
  return tf.image.crop_and_resize(padded, boxes, tf.range(n), (height, width), method="nearest")


def _rotate(images, u, degrees):
  height, width = images.shape[1], images.shape[2]
  angle = (2.0 * u - 1.0) * degrees * math.pi / 180.0
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  cos, sin = tf.cos(angle), tf.sin(angle)
  # Output pixel (x, y) samples input at R^-1 (x - c) + c (projective transform rows a0..b2).
  transforms = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                         sin, cos, cy - sin * cx - cos * cy,
                         tf.zeros_like(u), tf.zeros_like(u)], axis=1)
  return tf.raw_ops.ImageProjectiveTransformV3(
      images=images, transforms=transforms, output_shape=[height, width], fill_value=0.0,
      interpolation="BILINEAR", fill_mode="CONSTANT")


def _box_mask(height, width, cy, cx, size_y, size_x):
  """[B, H, W, 1] mask, 1 inside the box centred at (cy, cx) of the given sizes."""
  ys = tf.range(height, dtype=tf.float32)[None, :, None]
  xs = tf.range(width, dtype=tf.float32)[None, None, :]
  inside = ((tf.abs(ys - cy[:, None, None]) < size_y[:, None, None] / 2) &
            (tf.abs(xs - cx[:, None, None]) < size_x[:, None, None] / 2))
  return tf.cast(inside, tf.float32)[..., None]


def _cutout(images, u_y, u_x, size):
  height, width = images.shape[1], images.shape[2]
  sizes = tf.fill(tf.shape(u_y), float(size))
  mask = _box_mask(height, width, tf.floor(u_y * height), tf.floor(u_x * width), sizes, sizes)
  return images * (1.0 - mask)


# timm's RandomErasing defaults (DeiT's): area fraction, log aspect ratio, attempts.
ERASE_AREA = (0.02, 1 / 3)
ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))
ERASE_ATTEMPTS = 10
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GREY_MEAN, GREY_STD = 0.449, 0.226
ERASE_SALT = 10  # one draw of [global batch, 1 + 4 attempts] uniforms; 11: the noise


def erase_boxes(u, height, width):
  """(a box fits, top, left, h, w) per example from uniforms ``u`` [B, 1 + 4 * attempts]
  (u[:, 0] is the erase-or-not draw): the first attempt whose box fits (timm: w < W and
  h < H); no box when none fits."""
  attempts = tf.reshape(u[:, 1:], [-1, ERASE_ATTEMPTS, 4])
  area = (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * attempts[..., 0]) * height * width
  ratio = tf.exp(ERASE_LOG_RATIO[0] + (ERASE_LOG_RATIO[1] - ERASE_LOG_RATIO[0])
                 * attempts[..., 1])
  h = tf.round(tf.sqrt(area * ratio))  # Python's round: half to even, as tf.round
  w = tf.round(tf.sqrt(area / ratio))
  fits = (w < width) & (h < height)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
  pick = lambda x: tf.gather(x, first, batch_dims=1)  # noqa: E731
  h, w = pick(h), pick(w)
  top = tf.floor(pick(attempts[..., 2]) * (height - h + 1))  # randint(0, H - h)
  left = tf.floor(pick(attempts[..., 3]) * (width - w + 1))
  return tf.reduce_any(fits, axis=1), top, left, h, w


def _erase(images, u, noise, probability):
  """RandomErasing of each image: ``u`` its uniforms, ``noise`` [B, H, W, C] N(0, 1)."""
  height, width, channels = images.shape[1], images.shape[2], images.shape[3]
  erase, top, left, h, w = erase_boxes(u, height, width)
  erase &= u[:, 0] < probability
  ys = tf.range(height, dtype=tf.float32)[None, :, None]
  xs = tf.range(width, dtype=tf.float32)[None, None, :]
  inside = ((ys >= top[:, None, None]) & (ys < (top + h)[:, None, None])
            & (xs >= left[:, None, None]) & (xs < (left + w)[:, None, None])
            & erase[:, None, None])
  mean, std = ((IMAGENET_MEAN, IMAGENET_STD) if channels == 3
               else ((GREY_MEAN,) * channels, (GREY_STD,) * channels))
  fill = 255.0 * (tf.constant(mean) + tf.constant(std) * noise)
  return tf.where(inside[..., None], fill, images)


SWITCH_SALT = 12  # mixup or cutmix per example, when both are on


def _mix(op, images, one_hot, partner, alpha, lam_draw, draw):
  """(images, labels) of ``op`` (mixup or cutmix) with each example's partner; ``lam_draw``
  gives each example's Beta(alpha, alpha) draw."""
  lam = lam_draw(alpha)
  if op == "mixup":
    lam4 = lam[:, None, None, None]
    mixed = lam4 * images + (1.0 - lam4) * tf.gather(images, partner)
  else:
    height, width = images.shape[1], images.shape[2]
    cut = tf.sqrt(1.0 - lam)
    mask = _box_mask(height, width, tf.floor(draw(8) * height), tf.floor(draw(9) * width),
                     cut * height, cut * width)
    mixed = images * (1.0 - mask) + tf.gather(images, partner) * mask
    lam = 1.0 - tf.reduce_mean(mask, axis=[1, 2, 3])  # The area actually pasted.
  return mixed, lam[:, None] * one_hot + (1.0 - lam[:, None]) * tf.gather(one_hot, partner)


def _partners(n):
  return tf.bitwise.bitwise_xor(tf.range(n), 1)


def augment_batch(batch, ops, cfg, seed, num_classes, global_batch_size, salt_offset=0):
  """Augments one replica's batch dict in place of 'image' (and 'label' for mixing ops).

  ``batch`` holds 'image' [b, H, W, C] float32, 'label' [b], 'step' [b] and the
  example's 'position' in the global batch [b]. Random numbers are drawn for the
  whole global batch (``global_batch_size``) and gathered at the positions; a view's
  ``salt_offset`` makes its draws independent of the other views'.
  """
  images, labels = batch["image"], batch["label"]
  step, pos = batch["step"][0], batch["position"]
  n_global = global_batch_size

  def draw(salt):
    return tf.gather(_uniform(seed, step, salt + salt_offset, [n_global]), pos)

  if "flip" in ops:
    images = _flip(images, draw(1))
  if "crop" in ops:
    images = _crop(images, draw(2), draw(3), cfg.crop_padding)
  if "rotate" in ops:
    images = _rotate(images, draw(4), cfg.rotation_degrees)
  if "cutout" in ops:
    images = _cutout(images, draw(5), draw(6), cfg.cutout_size)
  if "randaugment" in ops:
    images = randaugment_lib.randaugment(images, draw, cfg.randaugment_layers)
  if "erase" in ops:
    u = tf.gather(_uniform(seed, step, ERASE_SALT + salt_offset,
                           [n_global, 1 + 4 * ERASE_ATTEMPTS]), pos)
    noise = example_draws.per_example(tf.random.stateless_normal, seed,
                                      ERASE_SALT + 1 + salt_offset, step, pos, n_global,
                                      images.shape[1:])
    images = _erase(images, u, noise, cfg.erase_prob)
  out = dict(batch, image=images)
  mixing = [op for op in ops if op in MIXING]
  if mixing:
    one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
    partner = _partners(tf.shape(images)[0])
    mixed = {}
    for op in mixing:  # Salt 7 for one op (as runs of one always drew); cutmix of both: 13.
      salt = 13 if op == "cutmix" and len(mixing) == 2 else 7
      lam_draw = lambda alpha, salt=salt: tf.gather(  # noqa: E731
          _beta(seed, step, salt + salt_offset, n_global, alpha), pos)
      alpha = cfg.mixup_alpha if op == "mixup" else cfg.cutmix_alpha
      mixed[op] = _mix(op, images, one_hot, partner, alpha, lam_draw, draw)
    if len(mixed) == 1:
      out["image"], out["label"] = mixed[mixing[0]]
    else:  # Both: cutmix for half of the examples (a per-example draw), mixup for the rest.
      cut = draw(SWITCH_SALT) < 0.5
      out["image"] = tf.where(cut[:, None, None, None], mixed["cutmix"][0], mixed["mixup"][0])
      out["label"] = tf.where(cut[:, None], mixed["cutmix"][1], mixed["mixup"][1])
  return out
