"""Generated datasets for the tests, written in each source's own file format: IDX
(Fashion-MNIST's layout), CIFAR's python pickles, a class-per-subdirectory image folder and a
prepared TFDS dataset. Nothing is downloaded."""

import gzip
import os
import pickle

import numpy as np
import tensorflow as tf


def write_idx(path, array, gz=True):
  header = bytes([0, 0, 8, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  payload = header + array.astype(np.uint8).tobytes()
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(payload)


def write_fake_mnist(directory, n_train=300, n_test=100, gz=True):
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  ext = ".gz" if gz else ""
  arrays = {"train-images-idx3-ubyte": rng.integers(0, 255, (n_train, 28, 28)),
            "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
            "t10k-images-idx3-ubyte": rng.integers(0, 255, (n_test, 28, 28)),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
  for name, array in arrays.items():
    write_idx(os.path.join(directory, name + ext), array, gz)
  return arrays


def write_fake_cifar10(directory, per_batch=20, test=30):
  rng = np.random.default_rng(1)
  os.makedirs(directory, exist_ok=True)
  for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", test)]:
    batch = {b"data": rng.integers(0, 255, (n, 3072)).astype(np.uint8),
             b"labels": rng.integers(0, 10, n).tolist()}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(batch, f)


def write_fake_cifar100(directory, train=200, test=40):
  """CIFAR-100's python format: 'train' and 'test' pickles with fine (and coarse) labels."""
  rng = np.random.default_rng(2)
  os.makedirs(directory, exist_ok=True)
  for name, n in (("train", train), ("test", test)):
    batch = {b"data": rng.integers(0, 255, (n, 3072)).astype(np.uint8),
             b"fine_labels": rng.integers(0, 100, n).tolist(),
             b"coarse_labels": rng.integers(0, 20, n).tolist()}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(batch, f)


def write_image_folder(root, classes=3, train=30, test=9, sizes=((20, 24), (18, 18), (26, 20)),
                       seed=0, png_every=3, mode="RGB"):
  """A class-per-subdirectory folder of JPEG and PNG images of varied sizes whose mean
  brightness encodes the class (learnable); returns ``root``."""
  rng = np.random.default_rng(seed)
  channels = {"grey": 1, "RGB": 3, "RGBA": 4}[mode]
  for split, n in (("train", train), ("test", test)):
    for c in range(classes):
      directory = os.path.join(root, split, f"class_{c}")
      os.makedirs(directory, exist_ok=True)
      for i in range(n):
        h, w = sizes[(i + c) % len(sizes)]
        level = 40 + 170 * c / max(classes - 1, 1)
        image = np.clip(rng.normal(level, 12, (h, w, channels)), 0, 255).astype(np.uint8)
        png = i % png_every == 0 or channels == 4
        data = (tf.io.encode_png(image) if png else tf.io.encode_jpeg(image, quality=95))
        with open(os.path.join(directory, f"{i:04d}.{'png' if png else 'jpg'}"), "wb") as f:
          f.write(data.numpy())
  return root


_TFDS_BUILDERS = {}


def write_tfds_dataset(data_dir, dataset_name="kd_toy", train=90, test=15, size=16):
  """Prepares a small TFDS dataset ``name`` offline in ``data_dir`` (generated images, 3
  classes, brightness = class); returns the prepared directory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if dataset_name not in _TFDS_BUILDERS:
    class Toy(tfds.core.GeneratorBasedBuilder):
      name = dataset_name
      VERSION = tfds.core.Version("1.0.0")

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3)),
            "label": tfds.features.ClassLabel(names=["dark", "mid", "bright"])}))

      def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(train, 0),
                "test": self._generate_examples(test, 1)}

      def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
          image = rng.normal(40 + 85 * (i % 3), 12, (size, size, 3))
          yield i, {"image": np.clip(image, 0, 255).astype(np.uint8), "label": i % 3}

    _TFDS_BUILDERS[dataset_name] = Toy
  builder = _TFDS_BUILDERS[dataset_name](data_dir=str(data_dir))
  builder.download_and_prepare()
  return builder.data_dir
