"""folder:, tfrecord: and tfds: sources and the converter, on generated files only."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from generated_data import write_image_folder, write_tfds_dataset
from kd_research import config as config_lib
from kd_research import run_spec
from kd_research.common.errors import UserError
from kd_research.data import datasets
from kd_research.data import image_files
from kd_research.data import tfrecord
from kd_research.tools import tfrecord_shards


def config_for(dataset, **data):
  config = config_lib.base_config()
  config.dataset = dataset
  config.validation_size = data.pop("validation_size", 6)
  config.global_batch_size = data.pop("global_batch_size", 8)
  config.image_size = data.pop("image_size", 16)
  for key, value in data.items():
    config.data[key] = value
  return config


def all_labels(split):
  return np.sort(np.asarray(split.labels))


def test_image_files_inspect_reads_mode_size_and_truncation():
  rgb = tf.io.encode_jpeg(np.zeros((7, 9, 3), np.uint8)).numpy()
  grey = tf.io.encode_png(np.zeros((5, 4, 1), np.uint8)).numpy()
  rgba = tf.io.encode_png(np.zeros((3, 6, 4), np.uint8)).numpy()
  assert image_files.inspect(rgb) == image_files.ImageInfo("jpeg", 7, 9, 3)
  assert image_files.inspect(grey) == image_files.ImageInfo("png", 5, 4, 1)
  assert image_files.inspect(rgba).mode == "RGBA"
  assert "truncated JPEG" in image_files.inspect(rgb[:len(rgb) // 2])
  assert "truncated PNG" in image_files.inspect(grey[:-12])
  assert "not a JPEG or PNG" in image_files.inspect(b"GIF89a....")


def test_folder_source_lists_classes_and_needs_a_size_when_sizes_vary(tmp_path):
  root = write_image_folder(str(tmp_path / "images"))
  with pytest.raises(UserError, match="different sizes.*config.image_size"):
    datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}", image_size=0)))
  splits = datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}")))
  assert splits.classes == ("class_0", "class_1", "class_2")
  assert splits.input_shape == (16, 16, 3) and splits.num_classes == 3
  assert (splits.train.num_examples, splits.validation.num_examples,
          splits.test.num_examples) == (84, 6, 27)
  together = np.sort(np.concatenate([splits.train.labels, splits.validation.labels]))
  np.testing.assert_array_equal(together, np.repeat([0, 1, 2], 30))
  batch = next(iter(splits.test.eval_fn(27)(tf.distribute.InputContext())))
  assert batch["image"].shape == (27, 16, 16, 3) and batch["image"].dtype == tf.float32
  # The brightness that encodes the class survives decode + resize + centre crop.
  means = [float(tf.reduce_mean(batch["image"][batch["label"] == c])) for c in range(3)]
  np.testing.assert_allclose(means, [40, 125, 210], atol=6)


def test_folder_source_errors_name_the_file(tmp_path):
  root = write_image_folder(str(tmp_path / "images"), sizes=((16, 16),))
  bad = os.path.join(root, "train", "class_1", "0001.jpg")
  with open(bad, "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(UserError, match="0001.jpg: a truncated JPEG.*skip_corrupt"):
    datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}")))
  splits = datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}", skip_corrupt=True)))
  assert splits.skipped == {"train": 1, "test": 0}
  assert splits.train.num_examples + splits.validation.num_examples == 89
  os.makedirs(os.path.join(root, "train", "empty_class"))
  with pytest.raises(UserError, match="empty_class holds no image"):
    datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}", skip_corrupt=True)))
  with pytest.raises(UserError, match="is missing; expected"):
    datasets.load_splits(datasets.data_spec(config_for(f"folder:{tmp_path}")))


def test_folder_source_mixed_modes_need_channels(tmp_path):
  root = str(tmp_path / "images")
  write_image_folder(root, sizes=((16, 16),))
  write_image_folder(os.path.join(root, "grey"), train=2, test=1, sizes=((16, 16),), mode="grey")
  for split in ("train", "test"):  # grey images of class_0 among the RGB ones
    src = os.path.join(root, "grey", split, "class_0")
    for name in os.listdir(src):
      os.replace(os.path.join(src, name), os.path.join(root, split, "class_0", "g" + name))
  import shutil
  shutil.rmtree(os.path.join(root, "grey"))
  with pytest.raises(UserError, match="not all grey or all RGB.*grey: 3 image.*channels=3"):
    datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}")))
  splits = datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}", channels=3)))
  batch = next(iter(splits.test.eval_fn(10)(tf.distribute.InputContext())))
  assert batch["image"].shape[-1] == 3


def test_converter_round_trip_and_bad_shards(tmp_path):
  root = write_image_folder(str(tmp_path / "images"))
  out = str(tmp_path / "shards")
  manifest = tfrecord_shards.convert(f"folder:{root}", out, shards=4)
  counts = [s["count"] for s in manifest["splits"]["train"]["shards"]]
  assert sum(counts) == 90 and max(counts) - min(counts) <= 1
  assert manifest["classes"] == ["class_0", "class_1", "class_2"]
  assert len(manifest["sizes"]) == 3 and manifest["channels"] == 3
  with pytest.raises(UserError, match="already holds a conversion"):
    tfrecord_shards.convert(f"folder:{root}", out, shards=4)
  folder_splits = datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}", validation_size=0)))
  shard_splits = datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{out}", validation_size=0)))
  np.testing.assert_array_equal(all_labels(shard_splits.train), all_labels(folder_splits.train))
  assert shard_splits.classes == folder_splits.classes
  # Same files, same eval view: the multiset of image means is the same.
  def means(split):
    return np.sort(np.concatenate([b.numpy().mean((1, 2, 3)) for b in split.image_batches(32)]))
  np.testing.assert_allclose(means(shard_splits.test), means(folder_splits.test), atol=1e-3)
  shard = os.path.join(out, manifest["splits"]["train"]["shards"][2]["file"])
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 100)
  with pytest.raises(UserError, match=r"train-00002-of-00004.tfrecord has \d+ bytes.*truncated"):
    datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{out}")))


def test_tfrecord_glob_without_manifest(tmp_path):
  out = str(tmp_path / "shards")
  tfrecord_shards.convert(f"folder:{write_image_folder(str(tmp_path / 'images'))}", out, shards=3)
  os.remove(os.path.join(out, tfrecord.MANIFEST))
  splits = datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{out}/train-*", validation_size=0)))
  np.testing.assert_array_equal(all_labels(splits.train), np.repeat([0, 1, 2], 30))
  assert splits.test.num_examples == 27 and splits.num_classes == 3
  with pytest.raises(UserError, match=r"label 2 \(after label_offset 0\) is outside \[0, 1\]"):
    datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{out}/train-*", num_classes=2)))
  shard = os.path.join(out, "train-00001-of-00003.tfrecord")
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 5)
  with pytest.raises(UserError, match="train-00001-of-00003.tfrecord is truncated at record"):
    datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{out}/train-*")))
  with pytest.raises(UserError, match="has no manifest.json"):
    datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{out}")))


def test_tfds_source_reads_a_prepared_dataset(tmp_path):
  write_tfds_dataset(tmp_path / "tfds")
  splits = datasets.load_splits(datasets.data_spec(config_for("tfds:kd_toy", image_size=0,
                                           tfds_dir=str(tmp_path / "tfds"))))
  assert splits.classes == ("dark", "mid", "bright") and splits.input_shape == (16, 16, 3)
  together = np.concatenate([splits.train.labels, splits.validation.labels])
  np.testing.assert_array_equal(np.bincount(together), [30, 30, 30])
  batch = next(iter(splits.test.eval_fn(15)(tf.distribute.InputContext())))
  for c in range(3):
    assert abs(float(tf.reduce_mean(batch["image"][batch["label"] == c])) - 40 - 85 * c) < 4
  with pytest.raises(UserError, match="'kd_missing' is not prepared in .*tfds build kd_missing"):
    datasets.load_splits(datasets.data_spec(config_for("tfds:kd_missing", tfds_dir=str(tmp_path / "tfds"))))


def test_unknown_spec_and_image_size_on_builtins_are_refused():
  with pytest.raises(UserError, match="valid: .*folder:PATH, npz:PATH, tfds:NAME.*, tfrecord:PATTERN"):
    run_spec.parse(config_for("s3:bucket"))
  with pytest.raises(UserError, match="config.image_size=16 resizes the images of file"):
    run_spec.parse(config_for("synthetic"))
  with pytest.raises(UserError, match="lacks its argument"):
    run_spec.parse(config_for("folder:"))


def test_manifest_format_is_checked(tmp_path):
  os.makedirs(tmp_path / "d")
  with open(tmp_path / "d" / tfrecord.MANIFEST, "w") as f:
    json.dump({"format": "other"}, f)
  with pytest.raises(UserError, match="is not a kd_research.tfrecord/1 manifest"):
    datasets.load_splits(datasets.data_spec(config_for(f"tfrecord:{tmp_path / 'd'}")))


def test_converter_from_a_builtin_is_lossless(tmp_path):
  from kd_research.data import sources
  raw = sources.load("synthetic")
  manifest = tfrecord_shards.convert("synthetic", str(tmp_path / "shards"), shards=3)
  assert manifest["splits"]["train"]["count"] == len(raw.train_x)
  assert manifest["sizes"] == [list(raw.train_x.shape[1:3])]
  streamed = datasets.open_source(datasets.data_spec(config_for(f"tfrecord:{tmp_path / 'shards'}", image_size=0)))
  # PNG is lossless: the eval view of every record is the original image, label for label.
  images = np.concatenate([b.numpy() for b in streamed.test.image_batches(128)])
  def canonical(x, y):  # the examples sorted by (label, pixels): the shards' order differs
    order = sorted(range(len(x)), key=lambda i: (int(y[i]), x[i].astype(np.uint8).tobytes()))
    return x[order].astype(np.float32), y[order]

  got, want = canonical(images, streamed.test.labels), canonical(raw.test_x, raw.test_y)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])


def test_npz_arrays_source_round_trip_and_bad_files(tmp_path):
  """npz:PATH (what the Python API writes for arrays): the same pixels and labels back,
  float pixels rounded, [N, H, W] given a channel; bad files are named."""
  from kd_research.data import arrays
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 255, (40, 6, 6))
  y = rng.integers(0, 4, 40)
  path = arrays.write(str(tmp_path), x, y, x[:10], y[:10], classes=("a", "b", "c", "d"))
  assert path == arrays.write(str(tmp_path), x, y, x[:10], y[:10], classes=("a", "b", "c", "d"))
  config = tiny_config(dataset=f"npz:{path}", validation_size=8, global_batch_size=8)
  splits = datasets.load_splits(datasets.data_spec(config))
  assert splits.input_shape == (6, 6, 1) and splits.num_classes == 4
  assert splits.classes == ("a", "b", "c", "d") and splits.source == f"npz:{path}"
  got = np.concatenate([splits.validation.images, splits.train.images])
  assert sorted(map(bytes, got)) == sorted(map(bytes, np.round(x).astype(np.uint8)[..., None]))
  np.savez(tmp_path / "partial.npz", x_train=x, y_train=y)
  with pytest.raises(UserError, match="lacks x_test, y_test"):
    datasets.load_splits(datasets.data_spec(tiny_config(dataset=f"npz:{tmp_path / 'partial.npz'}")))
  (tmp_path / "broken.npz").write_bytes(b"not a zip")
  with pytest.raises(UserError, match="not a readable .npz file"):
    datasets.load_splits(datasets.data_spec(tiny_config(dataset=f"npz:{tmp_path / 'broken.npz'}")))
  with pytest.raises(UserError, match=r"pixel values must lie in \[0, 255\]"):
    arrays.write(str(tmp_path), x * 2, y, x, y)
  with pytest.raises(UserError, match="not one-hot"):
    arrays.write(str(tmp_path), x, np.eye(4)[y], x, y)


def test_float_images_in_zero_one_are_scaled_not_quantised(tmp_path):
  """x / 255 (every Keras tutorial's habit) through an npz: file or the API: scaled by 255
  with a log line, never rounded to {0, 1}; uint8 and [0, 255] floats are kept as they are."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  from kd_research.data import arrays  # pylint: disable=g-import-not-at-top
  pixels = np.random.default_rng(0).integers(0, 256, (20, 5, 5)).astype(np.uint8)
  messages = []
  original = logging.warning
  logging.warning = lambda msg, *args: messages.append(msg % args)
  try:
    scaled = arrays.as_images(pixels.astype(np.float32) / 255.0, "x_train")
  finally:
    logging.warning = original
  np.testing.assert_array_equal(scaled[..., 0], pixels)
  assert len(messages) == 1 and "x_train: float pixels in [0, 1]" in messages[0]
  np.testing.assert_array_equal(arrays.as_images(pixels, "x")[..., 0], pixels)
  np.testing.assert_array_equal(arrays.as_images(pixels.astype(np.float64), "x")[..., 0], pixels)
  np.savez(tmp_path / "floats.npz", x_train=pixels / 255.0, y_train=np.arange(20) % 2,
           x_test=pixels[:6] / 255.0, y_test=np.arange(6) % 2)
  splits = datasets.load_splits(datasets.data_spec(tiny_config(dataset=f"npz:{tmp_path / 'floats.npz'}",
                                            validation_size=4, global_batch_size=4)))
  got = np.concatenate([splits.validation.images, splits.train.images])
  assert sorted(map(bytes, got)) == sorted(map(bytes, pixels[..., None]))
  with pytest.raises(UserError, match="not standardised values"):
    arrays.as_images((pixels - 128.0) / 64.0, "x_train")


def test_folder_as_users_have_it_cmyk_png_named_jpg_stray_files_and_odd_names(tmp_path):
  """A folder as downloads and cameras leave it: CMYK JPEGs (ILSVRC-2012's train split holds
  22), PNG bytes behind a .jpg name, upper-case extensions, progressive JPEGs, 16-bit PNGs,
  class names with spaces, and stray .DS_Store / Thumbs.db files. Every image is read, in
  the colours it was saved with."""
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top  (tensorboard's dependency)
  root = tmp_path / "images"
  colours = {"red fox": (200, 30, 30), "blue jay": (30, 30, 200)}
  written = {}
  for split, count in (("train", 12), ("test", 6)):
    for name, rgb in colours.items():
      folder = root / split / name
      folder.mkdir(parents=True)
      (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
      (folder / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0" + bytes(64))
      for i in range(count):
        image = Image.fromarray(np.full((16, 16, 3), rgb, np.uint8))
        kind = ("cmyk", "png_as_jpg", "upper", "progressive", "png16", "plain")[i % 6]
        buffer, suffix = io.BytesIO(), ".jpg"
        if kind == "cmyk":
          image.convert("CMYK").save(buffer, "JPEG", quality=95)
        elif kind == "png_as_jpg":
          image.save(buffer, "PNG")
        elif kind == "upper":
          image.save(buffer, "JPEG", quality=95)
          suffix = ".JPEG"
        elif kind == "progressive":
          image.save(buffer, "JPEG", quality=95, progressive=True)
        elif kind == "png16":  # 16-bit RGB PNG, written by TensorFlow (PIL writes no such)
          buffer.write(tf.io.encode_png(tf.constant(
              np.full((16, 16, 3), np.array(rgb) * 257, np.uint16))).numpy())
          suffix = ".png"
        else:
          image.save(buffer, "JPEG", quality=95)
        path = folder / f"{i:03d}{suffix}"
        path.write_bytes(buffer.getvalue())
        written[kind] = str(path)
  head, tail = image_files.read_ends(written["cmyk"])
  assert image_files.inspect(head, tail).channels == 3  # Decoded to RGB.
  splits = datasets.load_splits(datasets.data_spec(config_for(f"folder:{root}", validation_size=4, image_size=0)))
  assert splits.classes == ("blue jay", "red fox") and splits.input_shape == (16, 16, 3)
  assert (splits.train.num_examples + splits.validation.num_examples,
          splits.test.num_examples) == (24, 12)
  batch = next(iter(splits.test.eval_fn(12)(tf.distribute.InputContext())))
  for label, name in enumerate(splits.classes):
    pixels = batch["image"][batch["label"] == label].numpy()
    np.testing.assert_allclose(pixels.mean((0, 1, 2)), colours[name], atol=3)
