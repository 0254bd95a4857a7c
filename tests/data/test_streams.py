"""Streamed splits keep the in-memory guarantees: order a function of (seed, epoch), exact
resume, the same global batches for 1, 2 and 4 replicas, and under several workers every
example once per epoch with each worker reading only its own shards."""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import global_batches
from generated_data import write_image_folder
from kd_research import config as config_lib
from kd_research.data import datasets
from kd_research.tools import tfrecord_shards

GB = 12


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp("streams")
  folder = write_image_folder(str(root / "images"), train=36)  # 108 training images
  tfrecord_shards.convert(f"folder:{folder}", str(root / "shards"), shards=6)
  return {"folder": f"folder:{folder}", "tfrecord": f"tfrecord:{root / 'shards'}"}


def train_split(dataset, view="inception", validation_size=12, shuffle_buffer=20):
  config = config_lib.base_config()
  config.dataset, config.validation_size, config.global_batch_size = dataset, validation_size, GB
  config.image_size, config.data.train_view = 12, view
  config.data.shuffle_buffer = shuffle_buffer
  return datasets.load_splits(datasets.data_spec(config)).train


def batches(split, steps, replicas=1, pipelines=1, start_step=0, seed=5):
  return global_batches(lambda ctx: split.train_fn(GB, seed, start_step=start_step)(ctx),
                        replicas, steps, pipelines)


@pytest.mark.parametrize("kind", ["folder", "tfrecord"])
def test_order_is_deterministic_and_changes_with_the_epoch(sources, kind):
  split = train_split(sources[kind])
  spe = split.steps_per_epoch(GB)
  assert spe == 96 // GB
  first, again = batches(split, 2 * spe), batches(split, 2 * spe)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])
  epoch0 = np.concatenate([b["index"] for b in first[:spe]])
  epoch1 = np.concatenate([b["index"] for b in first[spe:]])
  assert sorted(epoch0) == sorted(epoch1) == list(range(96))  # every example once per epoch
  assert not np.array_equal(epoch0, epoch1)
  assert [int(b["step"][0]) for b in first] == list(range(2 * spe))


@pytest.mark.parametrize("kind", ["folder", "tfrecord"])
def test_resume_and_replica_count_give_the_same_batches(sources, kind):
  split = train_split(sources[kind])
  spe = split.steps_per_epoch(GB)
  full = batches(split, spe + 3)
  resumed = batches(split, 6, start_step=spe - 3)  # across the epoch boundary
  for want, got in zip(full[spe - 3:], resumed):
    np.testing.assert_array_equal(want["index"], got["index"])
    np.testing.assert_array_equal(want["image"], got["image"])  # the same random crops
  for replicas in (2, 4):
    for want, got in zip(full, batches(split, spe + 3, replicas=replicas)):
      np.testing.assert_array_equal(want["index"], got["index"])
      np.testing.assert_array_equal(want["position"], got["position"])
      np.testing.assert_array_equal(want["image"], got["image"])


def test_each_worker_reads_only_its_shards_and_every_example_once(sources):
  split = train_split(sources["tfrecord"], validation_size=0)  # 6 whole shards of 18
  spe = split.steps_per_epoch(GB, num_pipelines=2)
  assert spe == 108 // GB
  rows_of_segment = {s.path: set(range(s.row, s.row + s.count)) for s in split.segments}
  seen = collections.defaultdict(list)
  for pid in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid,
                                     num_replicas_in_sync=4)
    stream = iter(split.train_fn(GB, seed=5)(ctx))
    for _ in range(2 * spe):  # two per-replica batches per step on each worker
      batch = next(stream)
      seen[pid].append(batch["index"].numpy())
  own = {pid: set(np.concatenate(seen[pid][:2 * spe])) for pid in range(2)}
  assert not own[0] & own[1]
  for pid in range(2):  # worker p owns shards p, p + 2, p + 4 of the sorted list
    files = [s.path for s in split.segments][pid::2]
    assert own[pid] == set().union(*(rows_of_segment[f] for f in files))
  epoch = np.concatenate([np.concatenate(seen[p][:2 * spe]) for p in range(2)])
  assert sorted(epoch) == list(range(108))


def test_center_view_of_the_stream_equals_the_eval_view(sources):
  split = train_split(sources["tfrecord"], view="center")
  batch = batches(split, 1)[0]
  evaluated = np.concatenate([b.numpy() for b in split.image_batches(32)])
  np.testing.assert_array_equal(batch["image"], evaluated[batch["index"]])


def test_row_file_reads_the_rows_asked_for(tmp_path):
  from kd_research.data import cache_rows
  rng = np.random.default_rng(0)
  array = rng.normal(size=(50, 2, 3)).astype(np.float32)
  files = cache_rows.write_rows({"x": str(tmp_path / "x.f32")},
                               ({"x": array[i:i + 16]} for i in range(0, 50, 16)))
  rows = files["x"]
  assert rows.shape == (50, 2, 3) and os.path.getsize(rows.path) == rows.expected_bytes()
  index = tf.constant([49, 0, 7, 7, 23], tf.int64)
  np.testing.assert_array_equal(rows.gather(index).numpy(), array[index.numpy()])
  ds = tf.data.Dataset.from_tensor_slices(tf.reshape(tf.range(50, dtype=tf.int64), [5, 10]))
  got = np.concatenate([b.numpy() for b in ds.map(rows.gather)])
  np.testing.assert_array_equal(got, array)
