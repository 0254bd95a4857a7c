"""RandAugment ops against NumPy transcriptions of their definitions; multi-view batches
are replica-independent, resumable, and drawn apart from the main view."""

import functools

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.data import augment
from kd_research.data import datasets
from kd_research.data import randaugment as ra
from kd_research.data import views
from conftest import global_batches

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (4, 12, 12, 3)).astype(np.float32)
LOW = RNG.integers(60, 110, (4, 12, 12, 1)).astype(np.float32)  # low contrast
# Equalize is the identity below 256 pixels (PIL's step is then 0): 28 x 28 and larger.
LOW32 = RNG.integers(60, 110, (3, 32, 32, 1)).astype(np.float32)
RGB32 = RNG.integers(0, 256, (3, 28, 28, 3)).astype(np.float32)


def run(op, images, m):
  """The op with magnitude m (a value in the op's range) on every image."""
  low, high = ra.RANGES.get(op, (0.0, 1.0))
  u = np.full(len(images), (m - low) / (high - low), np.float32)
  return ra.apply_op(op, tf.constant(images), tf.constant(u)).numpy()


def lum(x):
  return x if x.shape[-1] == 1 else (x @ np.array([0.299, 0.587, 0.114]))[..., None]


def np_equalize(channel):
  """PIL.ImageOps.equalize on one channel of integer levels (its loop, transcribed)."""
  h = np.bincount(channel.ravel(), minlength=256)
  histo = [c for c in h if c]
  if len(histo) <= 1:
    return channel
  step = (sum(histo) - histo[-1]) // 256
  if not step:
    return channel
  lut, n = [], step // 2
  for i in range(256):
    lut.append(min(n // step, 255))
    n += h[i]
  return np.asarray(lut)[channel]


def np_sample(image, src_x, src_y):
  """Nearest-neighbour sampling at source coordinates (fill 0); also the pixels whose
  rounding is ambiguous (within 1e-3 of a half), which the comparison skips."""
  h, w = image.shape[:2]
  xi, yi = np.floor(src_x + 0.5).astype(int), np.floor(src_y + 0.5).astype(int)
  inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
  out = np.where(inside[..., None], image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)], 0.0)
  frac = lambda v: np.abs(v - np.floor(v) - 0.5)  # noqa: E731
  return out, (frac(src_x) < 1e-3) | (frac(src_y) < 1e-3)


def np_affine(images, fn):
  h, w = images.shape[1:3]
  ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                       indexing="ij")
  outs, skips = zip(*(np_sample(img, *fn(xs, ys, h, w)) for img in images))
  return np.stack(outs), np.stack(skips)


@pytest.mark.parametrize("op,m,want", [
    ("brightness", 0.4, lambda x: 0.4 * x),
    ("color", 0.3, lambda x: lum(x) + 0.3 * (x - lum(x))),
    ("contrast", 0.7, lambda x: lum(x).mean(axis=(1, 2, 3), keepdims=True) * 0.3 + 0.7 * x),
    ("solarize", 100.0, lambda x: np.where(x < 100.0, x, 255.0 - x)),
    ("posterize", 5.0, lambda x: (np.round(x).astype(int) & ~7).astype(float)),
    ("autocontrast", 0.0, lambda x: (x - x.min(axis=(1, 2), keepdims=True)) * 255.0
     / (x.max(axis=(1, 2), keepdims=True) - x.min(axis=(1, 2), keepdims=True))),
    ("identity", 0.0, lambda x: x),
])
@pytest.mark.parametrize("images", [RGB, LOW], ids=["rgb", "grey"])
def test_pointwise_ops_match_numpy(op, m, want, images):
  np.testing.assert_allclose(run(op, images, m), np.clip(want(images.astype(np.float64)), 0,
                                                         255), rtol=1e-5, atol=1e-3)


def test_sharpness_blends_with_the_smoothed_interior():
  x = RGB.astype(np.float64)
  kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13.0
  smooth = x.copy()
  for i in range(1, x.shape[1] - 1):
    for j in range(1, x.shape[2] - 1):
      smooth[:, i, j] = np.einsum("bhwc,hw->bc", x[:, i - 1:i + 2, j - 1:j + 2], kernel)
  want = np.clip(smooth + 0.6 * (x - smooth), 0, 255)
  np.testing.assert_allclose(run("sharpness", RGB, 0.6), want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("images", [RGB32, LOW32, LOW], ids=["rgb", "grey", "small"])
def test_equalize_is_pils_algorithm(images):
  levels = np.round(images).astype(int)
  want = np.stack([np.stack([np_equalize(img[..., c]) for c in range(img.shape[-1])], -1)
                   for img in levels]).astype(np.float32)
  got = run("equalize", images, 0.0)
  np.testing.assert_array_equal(got, want)
  if images is LOW32:
    assert got.max() - got.min() > 3 * (images.max() - images.min())  # contrast spread


@pytest.mark.parametrize("op,m,source", [
    ("translate_x", 0.2, lambda x, y, h, w: (x + 0.2 * w, y)),
    ("translate_y", -0.27, lambda x, y, h, w: (x, y - 0.27 * h)),
    ("shear_x", 0.23, lambda x, y, h, w: (x + 0.23 * y, y)),
    ("shear_y", -0.17, lambda x, y, h, w: (x, y - 0.17 * x)),
    ("rotate", 17.0, lambda x, y, h, w: (
        np.cos(np.radians(17)) * (x - (w - 1) / 2) - np.sin(np.radians(17)) * (y - (h - 1) / 2)
        + (w - 1) / 2,
        np.sin(np.radians(17)) * (x - (w - 1) / 2) + np.cos(np.radians(17)) * (y - (h - 1) / 2)
        + (h - 1) / 2)),
])
def test_geometric_ops_sample_where_their_definition_says(op, m, source):
  want, ambiguous = np_affine(RGB, source)
  got = run(op, RGB, m)
  assert ambiguous.mean() < 0.02
  np.testing.assert_array_equal(got[~ambiguous], want[~ambiguous])
  assert (got == 0).all(axis=-1).mean() > 0.02  # something moved out of the frame


def draws(n, seed=3):
  return lambda salt: tf.random.stateless_uniform([n], seed=[seed, salt])


def test_each_example_goes_through_its_own_chosen_op():
  n = 64
  images = RNG.integers(0, 256, (n, 10, 10, 3)).astype(np.float32)
  draw = draws(n)
  got = ra.one_round(tf.constant(images), draw(1), draw(2)).numpy()
  chosen = ra.choice(draw(1)).numpy()
  assert len(set(chosen.tolist())) >= 12  # nearly every op is picked in a batch of 64
  for i in range(n):
    one = ra.apply_op(ra.OPS[chosen[i]], tf.constant(images[i:i + 1]), draw(2)[i:i + 1])
    np.testing.assert_allclose(got[i], one.numpy()[0], atol=1e-3)


def test_cutout_is_the_grey_square_of_its_definition():
  n, h, w = 16, 10, 10
  images = RNG.integers(0, 256, (n, h, w, 3)).astype(np.float32)
  u_size, u_y, u_x = (RNG.uniform(size=n).astype(np.float32) for _ in range(3))
  got = ra.cutout(tf.constant(images), u_size, u_y, u_x).numpy()
  want = images.copy()
  for i in range(n):
    side = u_size[i] * 0.5 * w
    top, left = np.floor(max(0, u_y[i] * h - side / 2)), np.floor(max(0, u_x[i] * w - side / 2))
    rows = (np.arange(h) >= top) & (np.arange(h) < top + side)
    cols = (np.arange(w) >= left) & (np.arange(w) < left + side)
    want[i][np.ix_(rows, cols)] = ra.CUTOUT_GREY
  np.testing.assert_array_equal(got, want)


def params(**kw):
  base = dict(ops=("flip",), crop_padding=2, rotation_degrees=20.0, cutout_size=3,
              mixup_alpha=0.4, cutmix_alpha=1.0, randaugment_layers=2, erase_prob=0.25)
  base.update(kw)
  return augment.parse(ml_collections.ConfigDict(base))


def view_stream(gb=16, start_step=0, views_text="strong=flip,crop,randaugment;plain=", **kw):
  rng = np.random.default_rng(1)
  x = rng.integers(0, 255, (64, 8, 8, 3)).astype(np.uint8)
  y = rng.integers(0, 5, 64).astype(np.int32)
  cfg = params(**kw)
  extra = views.parse(views_text)
  main = functools.partial(augment.augment_batch, ops=cfg.ops, cfg=cfg, seed=7, num_classes=5,
                           global_batch_size=gb) if cfg.ops else None
  transform = views.transform(main, extra, cfg, 7, 5, gb)
  return datasets.train_dataset_fn(x, y, gb, seed=3, start_step=start_step, transform=transform)


@pytest.mark.parametrize("replicas", [2, 4])
def test_views_are_the_same_for_any_replica_count(replicas):
  reference = global_batches(view_stream(), 1, 4)
  got = global_batches(view_stream(), replicas, 4)
  for a, b in zip(reference, got):
    for key in ("image", "view_strong", "view_plain"):
      np.testing.assert_allclose(a[key], b[key], atol=1e-3)


def test_views_resume_and_are_drawn_apart_from_the_main_view():
  full = global_batches(view_stream(), 1, 6)
  resumed = global_batches(view_stream(start_step=4), 1, 2)
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["view_strong"], b["view_strong"])
  first = full[0]
  original = global_batches(view_stream(ops=(), views_text="plain="), 1, 1)[0]["image"]
  np.testing.assert_array_equal(first["view_plain"], original)  # a view of the clean image
  assert not np.allclose(first["view_strong"], first["image"])
  assert not np.allclose(full[0]["view_strong"], full[1]["view_strong"])


@pytest.mark.parametrize("text,match", [
    ("strong", "NAME=OPS"), ("Strong=flip", "NAME=OPS"), ("a=flip;a=crop", "NAME=OPS"),
    ("a=flip,blur", "valid: flip"), ("a=mixup", "mixes labels"),
])
def test_bad_views_are_refused(text, match):
  with pytest.raises(UserError, match=match):
    views.parse(text)


def test_randaugment_checks_channels_and_layers():
  with pytest.raises(UserError, match="1- or 3-channel"):
    augment.validate(params(), (8, 8, 2), 16, ("randaugment",))
  with pytest.raises(UserError, match="randaugment_layers"):
    augment.validate(params(randaugment_layers=0), (8, 8, 3), 16, ("flip", "randaugment"))
