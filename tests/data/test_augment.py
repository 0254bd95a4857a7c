"""Augmentation: replica-independent, resumable, same batch for teacher and student, errors."""

import functools
import math

import keras
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from kd_research.data import augment
from kd_research.data import datasets
from kd_research.train import teachers as teachers_lib
from kd_research.methods import hinton_kd
from kd_research.train import teacher_sources
from kd_research.train import steps
from kd_research.common.errors import UserError
from conftest import global_batches

ALL = ("flip", "crop", "rotate", "cutout", "mixup")


def params(**kw):
  base = dict(ops="", crop_padding=2, rotation_degrees=20.0, cutout_size=3, mixup_alpha=0.4,
              cutmix_alpha=1.0, randaugment_layers=2, erase_prob=0.5)
  base.update(kw)
  return augment.parse(ml_collections.ConfigDict(base))


def dataset(n=64, size=8, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 255, (n, size, size, 1)).astype(np.uint8),
          rng.integers(0, 5, n).astype(np.int32))


def train_fn(ops, gb=16, start_step=0, repeats=1, **kw):
  x, y = dataset()
  transform = functools.partial(augment.augment_batch, ops=ops, cfg=params(**kw), seed=7,
                                num_classes=5, global_batch_size=gb)
  return datasets.train_dataset_fn(x, y, gb, seed=3, start_step=start_step, transform=transform,
                                   repeats=repeats)


@pytest.mark.parametrize("ops", [("flip", "crop", "rotate", "cutout", "mixup"), ("cutmix",),
                                 ("erase",), ("mixup", "cutmix")])
@pytest.mark.parametrize("replicas", [2, 4])
def test_same_augmented_batch_for_any_replica_count(ops, replicas):
  reference = global_batches(train_fn(ops), 1, 6)
  got = global_batches(train_fn(ops), replicas, 6)
  for a, b in zip(reference, got):
    # Pixels are 0..255; bilinear rotation on a differently sized batch differs by ~1e-4.
    np.testing.assert_allclose(a["image"], b["image"], rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(a["label"], b["label"], atol=1e-6)


@pytest.mark.parametrize("replicas", [1, 2, 4])
def test_repeated_augmentation_copies_each_image_with_its_own_augmentation(replicas):
  """repeats 3 at batch 16: 6 images per batch at positions k, k + 6, k + 12, neighbours
  different images; each copy flipped / cropped / erased on its own; 4 steps per epoch of
  64 (24 distinct images); the same batches for any replica count and after a resume."""
  ops = ("flip", "crop", "erase")
  batches = global_batches(train_fn(ops, repeats=3), replicas, 5)
  reference = global_batches(train_fn(ops, repeats=3), 1, 5)
  for got, want in zip(batches, reference):
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-3)
    index = got["index"]
    np.testing.assert_array_equal(index, np.tile(index[:6], 3)[:16])
    assert len(set(index[:6])) == 6 and all(index[::2] != index[1::2])
    for k in range(6):  # The copies of one image differ by their augmentation.
      copies = got["image"][[k, k + 6, k + 12]] if k < 4 else got["image"][[k, k + 6]]
      assert not all(np.array_equal(copies[0], c) for c in copies[1:])
  epoch = np.concatenate([b["index"][:6] for b in batches[:4]])
  assert len(set(epoch)) == 24
  resumed = global_batches(train_fn(ops, repeats=3, start_step=3), 1, 2)
  for a, b in zip(batches[3:], resumed):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)


def test_repeated_augmentation_is_checked():
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserError, match=r"augment.repeats must be an integer in \[1, 64\]"):
    run_spec.parse(tiny_config(**{"augment.repeats": 0}))
  with pytest.raises(UserError, match="teacher cache of augmented views"):
    run_spec.parse(tiny_config(**{"augment.repeats": 3, "augment.ops": ("flip",),
                                  "distill.cache_teacher": True}))


def test_augmentation_stream_resumes():
  full = global_batches(train_fn(ALL), 1, 9)
  resumed = global_batches(train_fn(ALL, start_step=5), 1, 4)
  for a, b in zip(full[5:], resumed):
    np.testing.assert_allclose(a["image"], b["image"], atol=1e-6)
  # Different steps get different randomness.
  assert not np.allclose(full[0]["image"], full[5]["image"])


def test_mixup_mixes_images_and_labels_of_partners():
  plain = global_batches(train_fn(()), 1, 1)[0]
  mixed = global_batches(train_fn(("mixup",)), 1, 1)[0]
  labels = mixed["label"]
  np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-6)
  one_hot = np.eye(5)[plain["label"]]
  partner = np.arange(16) ^ 1
  # lam is recovered from the label of the first class mixed in.
  for i in range(16):
    if plain["label"][i] == plain["label"][partner[i]]:
      continue
    lam = labels[i, plain["label"][i]]
    np.testing.assert_allclose(labels[i], lam * one_hot[i] + (1 - lam) * one_hot[partner[i]],
                               atol=1e-6)
    np.testing.assert_allclose(mixed["image"][i],
                               lam * plain["image"][i] + (1 - lam) * plain["image"][partner[i]],
                               atol=1e-3)


def test_mixup_and_cutmix_together_pick_one_per_example():
  """DeiT's mixup 0.8 + cutmix 1.0: each example is either cut-mixed (every pixel its own
  or its partner's, the label weighted by the pasted area) or mixed up (the image and the
  label by the same lam); both kinds occur in a batch."""
  plain = global_batches(train_fn(()), 1, 1)[0]
  both = global_batches(train_fn(("mixup", "cutmix"), mixup_alpha=0.8), 1, 1)[0]
  kinds = []
  for i in range(16):
    j = i ^ 1
    x, y, image, label = plain["image"][i], plain["image"][j], both["image"][i], both["label"][i]
    own = np.isclose(image, x).all(-1)
    pasted = np.isclose(image, y).all(-1) & ~own
    if (own | pasted).all() and not np.allclose(x, y):
      area = pasted.mean()
      want = (1 - area) * np.eye(5)[plain["label"][i]] + area * np.eye(5)[plain["label"][j]]
      if np.allclose(label, want, atol=1e-5):
        kinds.append("cutmix")
        continue
    lam = np.clip(np.sum((image - y) * (x - y)) / np.sum((x - y) ** 2), 0, 1)
    np.testing.assert_allclose(image, lam * x + (1 - lam) * y, atol=1e-3)
    np.testing.assert_allclose(label, lam * np.eye(5)[plain["label"][i]]
                               + (1 - lam) * np.eye(5)[plain["label"][j]], atol=1e-3)
    kinds.append("mixup")
  assert 0 < kinds.count("cutmix") < 16, kinds


def test_flip_crop_and_cutout_geometry():
  plain = global_batches(train_fn(()), 1, 1)[0]["image"]
  flipped = global_batches(train_fn(("flip",)), 1, 1)[0]["image"]
  for a, b in zip(plain, flipped):
    assert np.array_equal(a, b) or np.array_equal(a[:, ::-1], b)
  assert any(not np.array_equal(a, b) for a, b in zip(plain, flipped))
  cropped = global_batches(train_fn(("crop",)), 1, 1)[0]["image"]
  for a, b in zip(plain, cropped):  # Some shift (dy, dx) in [-2, 2]^2 explains the crop.
    padded = np.pad(a, [(2, 2), (2, 2), (0, 0)])
    assert any(np.array_equal(padded[2 + dy:10 + dy, 2 + dx:10 + dx], b)
               for dy in range(-2, 3) for dx in range(-2, 3))
  cut = global_batches(train_fn(("cutout",)), 1, 1)[0]["image"]
  changed = (cut != plain).reshape(16, -1).sum(1)
  assert np.all(changed <= 9) and np.all((cut == 0) | (cut == plain))


def reference_random_erasing(image, u, noise, probability, mean, std):
  """timm's RandomErasing._erase (count 1, mode 'pixel') on one [H, W, C] image, its
  random.random / uniform / randint calls read from ``u`` in order, its per-pixel normal
  draws from ``noise``, applied after Normalize(mean, std) (hence the 255 (mean + std z)
  in pixel units)."""
  image = image.astype(np.float64).copy()
  height, width = image.shape[:2]
  if u[0] >= probability:
    return image
  for attempt in range(10):
    a, r, t, l = u[1 + 4 * attempt:5 + 4 * attempt]
    target_area = (0.02 + (1 / 3 - 0.02) * a) * height * width
    aspect_ratio = math.exp(math.log(0.3) + (math.log(1 / 0.3) - math.log(0.3)) * r)
    h = int(round(math.sqrt(target_area * aspect_ratio)))
    w = int(round(math.sqrt(target_area / aspect_ratio)))
    if w < width and h < height:
      top, left = int(t * (height - h + 1)), int(l * (width - w + 1))  # randint(0, H - h)
      image[top:top + h, left:left + w] = 255 * (np.asarray(mean) + np.asarray(std)
                                                 * noise[top:top + h, left:left + w])
      break
  return image


@pytest.mark.parametrize("channels", [1, 3])
def test_erase_is_timms_random_erasing(channels):
  rng = np.random.default_rng(channels)
  n, size = 64, 16
  images = rng.uniform(0, 255, (n, size, size, channels)).astype(np.float32)
  u = rng.uniform(0, 1, (n, 41)).astype(np.float32)
  u[:4, 1::4] = u[:4, 2::4] = 0.999  # 1/3 of the area at ratio 3.3: never fits, no erase
  noise = rng.normal(0, 1, images.shape).astype(np.float32)
  got = augment._erase(  # pylint: disable=protected-access
      tf.constant(images), tf.constant(u), tf.constant(noise), 0.5).numpy()
  mean, std = ((augment.IMAGENET_MEAN, augment.IMAGENET_STD) if channels == 3
               else ((augment.GREY_MEAN,), (augment.GREY_STD,)))
  want = np.stack([reference_random_erasing(images[i], u[i].astype(np.float64), noise[i], 0.5,
                                            mean, std) for i in range(n)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-3)
  erased = (got != images).any(axis=(1, 2, 3))
  assert not erased[:4].any() and 0 < erased.mean() < 0.7


class _Recorder(keras.layers.Layer):
  """Stores the last input it saw in a variable, then flattens it to logits."""

  def build(self, shape):
    self.seen = self.add_weight(shape=(16,) + tuple(shape[1:]), initializer="zeros",
                                trainable=False)

  def call(self, x):
    self.seen.assign(x)
    return x


def _recording_model(trainable):
  inputs = keras.Input((8, 8, 1))
  recorder = _Recorder()
  x = keras.layers.Flatten()(recorder(inputs))
  model = keras.Model(inputs, keras.layers.Dense(5, trainable=trainable)(x))
  return model, recorder


def test_teacher_and_student_receive_the_same_augmented_batch():
  teacher, teacher_seen = _recording_model(False)
  student, student_seen = _recording_model(True)
  strategy = tf.distribute.get_strategy()
  opt = keras.optimizers.SGD(0.01)
  opt.build(student.trainable_variables)
  step = tf.Variable(0, dtype=tf.int64)
  ensemble = teachers_lib.TeacherEnsemble([teacher], ["t"])
  loop = steps.make_train_loop(strategy, student, opt, step, 16,
                               hinton_kd.HintonKD(lambda s: 0.5, lambda s: 2.0),
                               teacher_sources.live_teachers(ensemble))
  ds = strategy.distribute_datasets_from_function(train_fn(ALL))
  loop(iter(ds), tf.constant(2))
  second = global_batches(train_fn(ALL), 1, 2)[1]["image"]
  np.testing.assert_array_equal(teacher_seen.seen.numpy(), student_seen.seen.numpy())
  np.testing.assert_allclose(student_seen.seen.numpy(), second, atol=1e-5)
  assert not np.allclose(second, global_batches(train_fn(()), 1, 2)[1]["image"])


@pytest.mark.parametrize("kw,match", [
    (dict(ops="flip,blur"), "valid: flip, crop"),
    (dict(ops="rotate", rotation_degrees=0.0), "rotation_degrees"),
    (dict(ops="cutout", cutout_size=9), "cutout_size"),
    (dict(ops="mixup", mixup_alpha=0.0), "mixup_alpha"),
    (dict(ops="crop", crop_padding=8), "crop_padding"),
    (dict(ops="erase", erase_prob=0.0), "erase_prob must be in"),
])
def test_bad_augmentation_config(kw, match):
  with pytest.raises(UserError, match=match):
    augment.validate(params(**kw), (8, 8, 1), 16)


def test_mixing_needs_even_replica_batch():
  with pytest.raises(UserError, match="even per-replica batch"):
    augment.validate(params(ops="mixup"), (8, 8, 1), 15)
