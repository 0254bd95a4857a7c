"""TFRecord shards from an image folder or a built-in dataset, with a checked manifest.

    ./launch.sh convert --source=folder:PATH|fashion_mnist|cifar10|... --output=DIR --shards=N

Writes ``DIR/train-00000-of-0000N.tfrecord`` ... and ``DIR/test-*`` (``tf.train.Example``:
``image/encoded`` bytes, ``image/class/label`` int64 from 0), the examples in a seeded
random order dealt round-robin to the shards (every shard holds every class; counts differ
by at most one), then reads every shard back and checks its record count before it writes
``DIR/manifest.json`` (classes, counts, shard list with bytes and sha256, image sizes and
channels) last: a directory without a manifest is an unfinished conversion. Folder images
are copied as they are (no re-encoding) after a full decode check; built-in arrays are
encoded as PNG (lossless). ``--config.data.skip_corrupt`` style skipping: --skip_corrupt.
Then train with ``--config.dataset=tfrecord:DIR``.
"""

import hashlib
import os
import sys

from absl import app
from absl import flags
import numpy as np
import tensorflow as tf

from kd_research import config as config_lib
from kd_research.common import fileio
from kd_research.common.errors import UserError
from kd_research.data import folder
from kd_research.data import sources
from kd_research.data import tfrecord

MAX_SIZES = 16  # distinct image sizes recorded: enough to tell fixed from varied


def _example(encoded, label):
  return tf.train.Example(features=tf.train.Features(feature={
      "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
      "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
  })).SerializeToString()


def _builtin(name, data_dir):
  """{'train': encode(i) -> (bytes, label), n}, classes, channels of a built-in dataset."""
  raw = sources.load(name, data_dir)

  def of(x, y):
    return (lambda i: (tf.io.encode_png(x[i]).numpy(), int(y[i]))), len(x)

  splits = {"train": of(raw.train_x, raw.train_y), "test": of(raw.test_x, raw.test_y)}
  return splits, tuple(str(c) for c in range(raw.num_classes)), raw.train_x.shape[-1], {}


def _folder(path, skip_corrupt):
  data = config_lib.base_config().data
  data.skip_corrupt = skip_corrupt
  listed, classes, channels, _, skipped = folder.list_folder(path, data)

  def of(paths, labels):
    def read(i):
      with open(paths[i], "rb") as f:
        return f.read(), int(labels[i])
    return read, len(paths)

  return {split: of(*listed[split]) for split in listed}, classes, channels, skipped


def write_split(output, split, read, n, shards, seed, channels, sizes, skip_corrupt=False,
                check_decode=True):
  """Writes one split's shards from ``read(i) -> (encoded, label)``; returns their manifest
  entries and the skipped count. ``sizes`` collects the decoded image sizes."""
  shards = max(1, min(shards, n))
  order = np.random.default_rng(seed).permutation(n)
  entries, skipped = [], 0
  for s in range(shards):
    name = f"{split}-{s:05d}-of-{shards:05d}.tfrecord"
    path, count = os.path.join(output, name), 0
    with tf.io.TFRecordWriter(path + ".tmp") as writer:
      for i in order[s::shards]:
        encoded, label = read(int(i))
        if not check_decode:  # Generated images (the benchmarks): known to decode.
          writer.write(_example(encoded, label))
          count += 1
          continue
        try:
          shape = tf.io.decode_image(encoded, channels=channels, expand_animations=False).shape
        except tf.errors.InvalidArgumentError as e:
          if not skip_corrupt:
            raise UserError(f"Example {i} of the {split} split does not decode "
                            f"({e.message.splitlines()[0]}); fix it or pass --skip_corrupt.")
          skipped += 1
          continue
        if len(sizes) < MAX_SIZES:
          sizes.add((int(shape[0]), int(shape[1])))
        writer.write(_example(encoded, label))
        count += 1
    os.replace(path + ".tmp", path)
    entries.append({"file": name, "count": count})
  return entries, skipped


def verified(output, entries):
  """Reads every shard back: its record count must equal what was written."""
  for entry in entries:
    path = os.path.join(output, entry["file"])
    found = sum(1 for _ in tfrecord.read_records(path))
    if found != entry["count"]:
      raise UserError(f"{path}: wrote {entry['count']} records but read back {found}.")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
      for chunk in iter(lambda: f.read(1 << 22), b""):
        digest.update(chunk)
    entry.update(bytes=os.path.getsize(path), sha256=digest.hexdigest())
  return entries


def convert(source, output, shards, seed=0, skip_corrupt=False, data_dir=""):
  """Converts ``source`` into TFRecord shards in ``output``; returns the manifest."""
  if shards < 1:
    raise UserError(f"--shards must be >= 1, got {shards}.")
  if os.path.exists(os.path.join(output, tfrecord.MANIFEST)):
    raise UserError(f"{output} already holds a conversion ({tfrecord.MANIFEST}); choose "
                    "another --output or delete it.")
  if source.startswith("folder:"):
    splits, classes, channels, skipped = _folder(source.split(":", 1)[1], skip_corrupt)
  elif source in sources.names():
    splits, classes, channels, skipped = _builtin(source, data_dir)
  else:
    raise UserError(f"--source={source!r}: give folder:PATH or one of "
                    f"{', '.join(sources.names())}.")
  fileio.check_writable(output)
  os.makedirs(output, exist_ok=True)
  manifest = new_manifest(source, classes, channels, skipped)
  sizes = set()
  for split, (read, n) in splits.items():
    entries, bad = write_split(output, split, read, n, shards, seed, int(channels), sizes,
                               skip_corrupt)
    add_split(manifest, output, split, entries, n, bad)
  return write_manifest(manifest, output, sizes)


def new_manifest(source, classes, channels, skipped=None):
  """The manifest's fields before any split is written."""
  return {"format": tfrecord.MANIFEST_FORMAT, "source": source,
          "keys": list(tfrecord.KEY_CONVENTIONS[0]), "label_offset": 0,
          "classes": list(classes), "num_classes": len(classes), "channels": int(channels),
          "splits": {}, "skipped": dict(skipped or {})}


def add_split(manifest, output, split, entries, n, bad=0):
  """Reads the split's shards back (``verified``) and adds them to ``manifest``."""
  entries = verified(output, entries)
  count = sum(e["count"] for e in entries)
  if count + bad != n:
    raise UserError(f"{split}: {n} examples in the source, {count} written + {bad} skipped.")
  manifest["splits"][split] = {"count": count, "shards": entries}
  manifest["skipped"][split] = manifest["skipped"].get(split, 0) + bad


def write_manifest(manifest, output, sizes):
  """Writes DIR/manifest.json last (atomically): the conversion's commit point."""
  manifest["sizes"] = sorted([list(s) for s in sizes])
  fileio.atomic_write_json(os.path.join(output, tfrecord.MANIFEST), manifest)
  return manifest


def main(argv):
  del argv
  flags_ = flags.FLAGS
  if not flags_.source or not flags_.output:
    sys.stderr.write("error: --source and --output are required.\n")
    sys.exit(2)
  try:
    manifest = convert(flags_.source, flags_.output, flags_.shards, flags_.seed,
                       flags_.skip_corrupt, flags_.data_dir)
  except UserError as e:
    sys.stderr.write(f"error: {' '.join(str(e).split())}\n")
    sys.exit(2)
  counts = ", ".join(f"{s} {v['count']} in {len(v['shards'])} shards"
                     for s, v in manifest["splits"].items())
  print(f"convert: {counts}; {manifest['num_classes']} classes; skipped "
        f"{manifest['skipped']}; manifest {os.path.join(flags_.output, tfrecord.MANIFEST)}")


def define_flags():
  """The command's flags (defined only when it runs: the module is also a library)."""
  flags.DEFINE_string("source", None, "folder:PATH or a built-in dataset name.")
  flags.DEFINE_string("output", None, "Output directory (created; must hold no manifest yet).")
  flags.DEFINE_integer("shards", 8, "Shards per split (the test split gets fewer when small).")
  flags.DEFINE_integer("seed", 0, "Seed of the example order across the shards.")
  flags.DEFINE_bool("skip_corrupt", False, "Skip corrupt images (counted in the manifest) "
                    "instead of stopping at the first.")
  flags.DEFINE_string("data_dir", "", "Where to look for a built-in dataset first.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
