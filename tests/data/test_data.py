"""Data: IDX/CIFAR readers and their errors, splits, and replica-independent pipelines."""

import pickle

import numpy as np
import pytest
import tensorflow as tf

from kd_research.data import datasets
from kd_research.data import sources
from kd_research.data import synthetic
from kd_research.common.errors import UserError
from conftest import global_batches, tiny_config
from generated_data import write_idx, write_fake_mnist, write_fake_cifar10


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
  arrays = write_fake_mnist(str(tmp_path), gz=gz)
  raw = sources.load("mnist", str(tmp_path))
  np.testing.assert_array_equal(raw.train_x[..., 0], arrays["train-images-idx3-ubyte"])
  np.testing.assert_array_equal(raw.test_y, arrays["t10k-labels-idx1-ubyte"])
  assert raw.train_x.shape == (300, 28, 28, 1) and raw.num_classes == 10


def test_corrupt_idx_magic_and_truncation(tmp_path):
  write_fake_mnist(str(tmp_path), gz=False)
  path = tmp_path / "train-images-idx3-ubyte"
  good = path.read_bytes()
  path.write_bytes(b"\x00\x00\x09\x03" + good[4:])
  with pytest.raises(UserError, match="magic bytes"):
    sources.load("mnist", str(tmp_path))
  path.write_bytes(good[:-100])
  with pytest.raises(UserError, match="truncated"):
    sources.load("mnist", str(tmp_path))


def test_labels_out_of_range(tmp_path):
  write_fake_mnist(str(tmp_path), gz=False)
  write_idx(str(tmp_path / "t10k-labels-idx1-ubyte"), np.full(100, 12), gz=False)
  with pytest.raises(UserError, match=r"labels must lie in \[0, 9\]"):
    sources.load("mnist", str(tmp_path))


def test_missing_data_lists_every_place(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv("KD_DATA_DIR", raising=False)
  with pytest.raises(UserError) as err:
    sources.load("mnist", str(tmp_path))
  assert str(tmp_path) in str(err.value) and "/usr/share/datasets/mnist" in str(err.value)


def test_cifar10_python_batches(tmp_path):
  write_fake_cifar10(str(tmp_path / "cifar-10-batches-py"))
  raw = sources.load("cifar10", str(tmp_path))
  assert raw.train_x.shape == (100, 32, 32, 3) and raw.test_x.shape == (30, 32, 32, 3)
  with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
    first = pickle.load(f)
  # Channel-first rows become HWC images: pixel (0,0) of image 0 is bytes 0, 1024, 2048.
  np.testing.assert_array_equal(raw.train_x[0, 0, 0], first[b"data"][0, [0, 1024, 2048]])
  (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"not a pickle")
  with pytest.raises(UserError, match="test_batch"):
    sources.load("cifar10", str(tmp_path))


def test_validation_split_is_disjoint_and_sized():
  config = tiny_config(validation_size=300, train_size=1000)
  splits = datasets.load_splits(datasets.data_spec(config))
  assert len(splits.validation.images) == 300 and len(splits.train.images) == 1000
  train_rows = {r.tobytes() for r in splits.train.images}
  assert not any(r.tobytes() in train_rows for r in splits.validation.images)
  with pytest.raises(UserError, match="train_size"):
    datasets.load_splits(datasets.data_spec(tiny_config(train_size=10**6)))
  with pytest.raises(UserError, match="validation_size"):
    datasets.load_splits(datasets.data_spec(tiny_config(validation_size=2000)))


@pytest.mark.parametrize("replicas,pipelines", [(2, 1), (4, 1), (4, 2), (2, 2)])
def test_train_batches_do_not_depend_on_replicas(replicas, pipelines):
  x = np.arange(100 * 4, dtype=np.uint8).reshape(100, 2, 2, 1)
  y = np.arange(100, dtype=np.int32) % 10
  fn = datasets.train_dataset_fn(x, y, 8, seed=3)
  reference = global_batches(fn, 1, 30)
  got = global_batches(fn, replicas, 30, pipelines)
  for a, b in zip(reference, got):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # 30 steps cover more than two epochs of 12 steps; each epoch is a permutation.
  first_epoch = np.concatenate([b["index"] for b in reference[:12]])
  assert len(set(first_epoch.tolist())) == 96


def test_train_stream_resumes_at_any_step():
  x = np.zeros((50, 2, 2, 1), np.uint8)
  y = np.zeros(50, np.int32)
  full = global_batches(datasets.train_dataset_fn(x, y, 10, seed=1), 1, 17)
  resumed = global_batches(datasets.train_dataset_fn(x, y, 10, seed=1, start_step=7), 1, 10)
  for a, b in zip(full[7:], resumed):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["step"], b["step"])


@pytest.mark.parametrize("replicas", [1, 3, 4])
def test_eval_covers_every_example_once(replicas):
  n = 195
  x = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  y = np.zeros(n, np.int32)
  gb = 64 if replicas != 3 else 63
  fn = datasets.eval_dataset_fn(x, y, gb)
  seen = []
  for pid_batches in global_batches(fn, replicas, -(-n // gb)):
    keep = pid_batches["weight"] > 0
    seen.extend(pid_batches["index"][keep].tolist())
  assert sorted(seen) == list(range(n))


def test_batch_not_divisible_by_replicas():
  fn = datasets.train_dataset_fn(np.zeros((20, 1, 1, 1), np.uint8), np.zeros(20, np.int32), 10, 0)
  with pytest.raises(UserError, match="not divisible by the 4 replicas"):
    fn(tf.distribute.InputContext(1, 0, 4))


def test_wrong_shapes_and_empty_splits():
  good = synthetic.synthetic(num_train=20, num_test=10)
  flat = sources.RawData(good.train_x[:, :, :, 0], good.train_y, good.test_x, good.test_y,
                              10, "flat")
  with pytest.raises(UserError, match=r"must be \[N, H, W, C\]"):
    sources.check_arrays(flat)
  empty = sources.RawData(good.train_x, good.train_y, good.test_x[:0], good.test_y[:0],
                               10, "empty")
  with pytest.raises(UserError, match="test split is empty"):
    sources.check_arrays(empty)
  mismatch = sources.RawData(good.train_x, good.train_y, good.test_x[:, :20], good.test_y,
                                  10, "mismatch")
  with pytest.raises(UserError, match="differ in shape"):
    sources.check_arrays(mismatch)
  with pytest.raises(UserError, match="fewer than one global batch"):
    datasets.load_splits(datasets.data_spec(tiny_config(train_size=10, global_batch_size=64)))


def test_train_stream_is_not_autotuned():
  """tf.data's autotuning thread sleeps up to a minute and deleting the iterator waits for
  it: the end of every run stalled for tens of seconds. The stream turns it off."""
  fn = datasets.train_dataset_fn(np.zeros((20, 1, 1, 1), np.uint8), np.zeros(20, np.int32), 10, 0)
  assert fn(tf.distribute.InputContext()).options().autotune.enabled is False
