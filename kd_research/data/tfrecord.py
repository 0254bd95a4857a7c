"""``tfrecord:PATTERN``: sharded ``tf.train.Example`` files with encoded images, streamed.

PATTERN is either the converter's output directory (``./launch.sh convert``), whose
``manifest.json`` lists classes, counts, shards, sizes and checksums, or a glob of training
shards such as ``/data/imagenet/train-*``; the test shards are then the same glob with
``train`` replaced by ``validation``, ``val`` or ``test`` (the first that matches).

Feature keys (the first pair a record has):
    image/encoded + image/class/label   the converter's, and the common ImageNet converters'
                                        (which number classes from 1: set
                                        --config.data.label_offset=1)
    image + label                       TFDS' own files
A glob without a manifest is scanned once when the run starts (every record read, its
label checked and its image's head and tail inspected); a manifest is trusted after each
shard's byte size is checked against it.
"""

import glob
import json
import os
import struct

import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.data import preprocess
from kd_research.data import scan
from kd_research.data import sources
from kd_research.data import splits
from kd_research.data import streams

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "kd_research.tfrecord/1"
KEY_CONVENTIONS = (("image/encoded", "image/class/label"), ("image", "label"))
TEST_NAMES = ("validation", "val", "test")


def read_records(path):
  """Yields every record's bytes of one TFRecord file; a truncated file is a UserError."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    index = 0
    while f.tell() < size:
      header = f.read(12)
      length = struct.unpack("<Q", header[:8])[0] if len(header) == 12 else None
      if length is None or f.tell() + length + 4 > size:
        raise UserError(f"TFRecord shard {path} is truncated at record {index} (byte "
                        f"{f.tell() - len(header)} of {size}); re-copy or re-convert it.")
      yield f.read(length)
      f.seek(4, 1)
      index += 1


def make_parse(image_key, label_key, label_offset=0):
  """parse(serialized) -> (encoded image, int32 label), in the graph."""
  spec = {image_key: tf.io.FixedLenFeature([], tf.string),
          label_key: tf.io.FixedLenFeature([], tf.int64)}

  def parse(record):
    features = tf.io.parse_single_example(record, spec)
    return features[image_key], tf.cast(features[label_key] - label_offset, tf.int32)

  return parse


def keys_of(example, where):
  """The (image, label) key pair of a parsed tf.train.Example."""
  feature = example.features.feature
  for image_key, label_key in KEY_CONVENTIONS:
    if image_key in feature and label_key in feature:
      return image_key, label_key
  raise UserError(f"{where}: the record has features {sorted(feature)[:8]}, none of the known "
                  f"(image, label) pairs {KEY_CONVENTIONS}.")


def segments_of(files_and_counts):
  """Whole-file Segments in canonical (sorted) order."""
  out, row = [], 0
  for path, count in sorted(files_and_counts):
    out.append(streams.Segment(path, 0, count, row))
    row += count
  return tuple(out)


def _from_manifest(directory):
  path = os.path.join(directory, MANIFEST)
  try:
    with open(path) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f"Cannot read {path}: {e}. Re-run the converter.")
  if manifest.get("format") != MANIFEST_FORMAT:
    raise UserError(f"{path} is not a {MANIFEST_FORMAT} manifest (format "
                    f"{manifest.get('format')!r}).")
  for split in ("train", "test"):
    for shard in manifest["splits"][split]["shards"]:
      file = os.path.join(directory, shard["file"])
      if not os.path.isfile(file):
        raise UserError(f"{path} lists shard {file}, which is missing.")
      if os.path.getsize(file) != shard["bytes"]:
        raise UserError(f"TFRecord shard {file} has {os.path.getsize(file)} bytes, the "
                        f"manifest says {shard['bytes']}: it is truncated or was changed. "
                        "Re-copy or re-convert it.")
  return manifest


def _scan_files(files, label_offset, num_classes, image_scan):
  """(counts per file, keys, largest label) from one pass over every record."""
  counts, keys, largest = {}, None, -1
  for path in files:
    n = 0
    for n, record in enumerate(read_records(path), 1):
      where = f"{path} record {n - 1}"
      example = tf.train.Example.FromString(record)
      keys = keys or keys_of(example, where)
      feature = example.features.feature
      if keys[0] not in feature or keys[1] not in feature:
        raise UserError(f"{where} lacks feature {keys[0]!r} or {keys[1]!r}.")
      label = feature[keys[1]].int64_list.value[0] - label_offset
      if label < 0 or (num_classes and label >= num_classes):
        raise UserError(f"{where}: label {label} (after label_offset {label_offset}) is "
                        f"outside [0, {num_classes - 1 if num_classes else 'K-1'}].")
      largest = max(largest, label)
      image_scan.add(where, feature[keys[0]].bytes_list.value[0])
    counts[path] = n
  return counts, keys, largest


def _test_files(pattern):
  if "train" not in os.path.basename(pattern):
    raise UserError(f"config.dataset=tfrecord:{pattern}: the glob's file name must contain "
                    "'train' so the test shards can be found (train -> validation/val/test), "
                    "or give the converter's output directory.")
  head, tail = os.path.split(pattern)
  for name in TEST_NAMES:
    found = sorted(glob.glob(os.path.join(head, tail.replace("train", name))))
    if found:
      return found
  raise UserError(f"No test shards for tfrecord:{pattern}: tried "
                  f"{', '.join(os.path.join(head, tail.replace('train', n)) for n in TEST_NAMES)}.")


def _open_glob(pattern, spec):
  files = sorted(glob.glob(pattern))
  if not files:
    raise UserError(f"config.dataset=tfrecord:{pattern} matches no file.")
  test_files = _test_files(pattern)
  image_scan = scan.ImageScan(f"tfrecord:{pattern}")
  data = spec.data
  train_counts, keys, largest = _scan_files(files, data.label_offset, data.num_classes,
                                            image_scan)
  test_counts, _, test_largest = _scan_files(test_files, data.label_offset, data.num_classes,
                                             image_scan)
  if image_scan.corrupt and data.skip_corrupt:
    raise UserError(f"tfrecord:{pattern}: config.data.skip_corrupt skips files of folder "
                    "sources; for TFRecord shards, re-convert them (the converter skips and "
                    "counts corrupt images).")
  channels, sizes, _ = image_scan.finish(data)
  num_classes = data.num_classes or max(largest, test_largest) + 1
  return (segments_of(train_counts.items()), segments_of(test_counts.items()), keys,
          data.label_offset, tuple(str(c) for c in range(num_classes)), channels, sizes)


def _open_directory(directory, spec):
  manifest = _from_manifest(directory)
  def segs(split):
    return segments_of((os.path.join(directory, s["file"]), s["count"])
                       for s in manifest["splits"][split]["shards"])
  sizes = {tuple(s) for s in manifest["sizes"]}  # up to a few distinct sizes: enough to
  channels = spec.data.channels or manifest["channels"]  # tell fixed from varied
  return (segs("train"), segs("test"), tuple(manifest["keys"]), manifest.get("label_offset", 0),
          tuple(manifest["classes"]), channels, sizes)


def open_tfrecord(pattern, spec):
  """Train and test ShardSplits of the shards at ``pattern`` (see module docstring)."""
  opener = _open_directory if os.path.isdir(pattern) and os.path.exists(
      os.path.join(pattern, MANIFEST)) else _open_glob
  if os.path.isdir(pattern) and opener is _open_glob:
    raise UserError(f"config.dataset=tfrecord:{pattern}: the directory has no {MANIFEST}; "
                    "give the converter's output directory or a glob of shards "
                    f"(tfrecord:{pattern}/train-*).")
  train, test, keys, offset, classes, channels, sizes = opener(pattern, spec)
  view = preprocess.view_from_config(spec.data, spec.image_size, channels, sizes)
  parse = make_parse(*keys, offset)
  make = lambda segments: splits.ShardSplit(segments, parse, view, spec.data.shuffle_buffer)
  return sources.Opened(make(train), make(test), len(classes), classes, f"tfrecord:{pattern}")


sources.register(sources.SpecSource("tfrecord", open_tfrecord, "tfrecord:PATTERN"))
