"""``tfds:NAME[:VERSION]``: a TFDS dataset already prepared in a local data dir, streamed.

Nothing is downloaded or prepared here: the dataset must exist as
``DATA_DIR/NAME/VERSION/`` (``dataset_info.json`` and TFRecord shards), where DATA_DIR is
config.data.tfds_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. The builder is
rebuilt from that directory (``tfds.builder_from_directory``: no dataset code needed), and
its shards feed the same sharded stream as ``tfrecord:`` (TFDS stores an Image feature as
encoded bytes under its name, a ClassLabel as int64). The test split is ``test``, else
``validation``. Needs the ``tensorflow-datasets`` package (installed by ./launch.sh setup).
"""

import os

from kd_research.common.errors import UserError
from kd_research.data import preprocess
from kd_research.data import sources
from kd_research.data import splits
from kd_research.data import tfrecord

TEST_SPLITS = ("test", "validation")


def data_dir(spec):
  return (spec.data.tfds_dir or os.environ.get("TFDS_DATA_DIR", "")
          or os.path.expanduser("~/tensorflow_datasets"))


def _how_to_prepare(name, root):
  return (f"Prepare it where it can be downloaded (or from manual files): `tfds build {name} "
          f"--data_dir={root}`, or in Python `tfds.builder({name!r}, data_dir={root!r})"
          ".download_and_prepare()`; then copy the directory here, or point "
          "--config.data.tfds_dir at it.")


def builder_dir(name, version, root):
  """DATA_DIR/NAME/VERSION (the newest prepared version when none is given)."""
  base = os.path.join(root, name)
  if version:
    candidate = os.path.join(base, version)
    if not os.path.exists(os.path.join(candidate, "dataset_info.json")):
      raise UserError(f"TFDS dataset {name}:{version} is not prepared in {root} (no "
                      f"{candidate}/dataset_info.json). {_how_to_prepare(name, root)}")
    return candidate
  versions = sorted((d for d in (os.listdir(base) if os.path.isdir(base) else ())
                     if os.path.exists(os.path.join(base, d, "dataset_info.json"))),
                    key=lambda v: tuple(int(p) if p.isdigit() else 0 for p in v.split(".")))
  if not versions:
    raise UserError(f"TFDS dataset {name!r} is not prepared in {root} (no "
                    f"{base}/<version>/dataset_info.json). {_how_to_prepare(name, root)}")
  return os.path.join(base, versions[-1])


def _image_and_label(info, where):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  features = info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
  if not images or not labels:
    raise UserError(f"{where}: needs an Image and a ClassLabel feature; it has "
                    f"{dict((k, type(f).__name__) for k, f in features.items())}.")
  return images[0], labels[0]


def open_tfds(argument, spec):
  """Train and test ShardSplits of a prepared TFDS dataset (see module docstring)."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("tfds: datasets need the tensorflow-datasets package: run ./launch.sh "
                    "setup, or pip install tensorflow-datasets.")
  name, _, version = argument.partition(":")
  root = data_dir(spec)
  directory = builder_dir(name, version, root)
  builder = tfds.builder_from_directory(directory)
  info = builder.info
  where = f"tfds:{name} ({directory})"
  if info.file_format.value != "tfrecord":
    raise UserError(f"{where} is stored as {info.file_format.value}; only TFRecord-prepared "
                    "datasets are read (prepare it with --file_format=tfrecord).")
  test_name = next((s for s in TEST_SPLITS if s in info.splits), None)
  if "train" not in info.splits or test_name is None:
    raise UserError(f"{where} has splits {sorted(info.splits)}; needs train and one of "
                    f"{', '.join(TEST_SPLITS)}.")
  image_key, label_key = _image_and_label(info, where)
  shape = info.features[image_key].shape
  channels = spec.data.channels or shape[-1]
  if not channels:
    raise UserError(f"{where}: the images' channel count varies; set --config.data.channels.")
  sizes = {tuple(shape[:2])} if None not in shape[:2] else None  # None: sizes vary
  view = preprocess.view_from_config(spec.data, spec.image_size, channels, sizes)
  parse = tfrecord.make_parse(image_key, label_key)

  def split_of(split_name):
    split_info = info.splits[split_name]
    files = [os.path.join(directory, os.path.basename(str(p))) for p in split_info.filepaths]
    missing = [f for f in files if not os.path.exists(f)]
    if missing:
      raise UserError(f"{where}: shard {missing[0]} is missing ({len(missing)} of {len(files)}).")
    segments = tfrecord.segments_of(zip(files, split_info.shard_lengths))
    return splits.ShardSplit(segments, parse, view, spec.data.shuffle_buffer)

  classes = tuple(info.features[label_key].names)
  return sources.Opened(split_of("train"), split_of(test_name), len(classes), classes, where)


sources.register(sources.SpecSource("tfds", open_tfds, "tfds:NAME[:VERSION]"))
