"""The teacher-output cache that works with augmentation: outputs per training *view*.

Our views are stateless: the example at (step, position of the global batch) is a function
of the order seed and the epoch (data/streams.py), and its crop, flip, Cutout, Mixup or
CutMix a function of (seed, step, position) (data/augment.py, data/preprocess.py). So the
teachers' outputs on every view a run will train on are known before it starts: one pass
over the distillation steps' training stream (the same stream, augmented, one global batch
per step) computes them into row files, row ``step * global_batch + position``
(cache_rows.ViewRows), and the student's stream reads its rows by (step, position): memory
one batch, results independent of the replica count.

Which students share a cache: those whose views are the same, i.e. the same teachers,
data and split, student seed (it seeds both the order and the augmentation), global batch,
augmentation config, training view, distillation steps, precision and combine mode: the
methods and candidates of a sweep at one seed share one cache (in a shared
``config.run.cache_dir``); another seed, batch or budget makes another one. The
fingerprint holds all of these. The pass costs one teacher forward per example-epoch,
once; the storage is printed before it is written.
"""

import hashlib
import itertools
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.data import cache_rows
from kd_research.train import teacher_cache

DTYPES = ("float32", "float16")


def needed(ops, view):
  """True when the training views change from epoch to epoch (augmentation, random crop)."""
  return bool(ops) or (view is not None and view.train_view != "center")


def fingerprint(teacher_paths, split, config, seed, steps, taps=()):
  """A hex digest of everything the views and the teachers' outputs on them depend on."""
  h = hashlib.sha256()
  for path in teacher_paths:
    with open(path, "rb") as f:
      h.update(hashlib.sha256(f.read()).digest())
  split.digest(h)
  h.update(json.dumps([config.augment.to_dict(), int(seed), int(steps),
                       int(config.global_batch_size), config.mixed_precision,
                       config.distill.combine, config.distill.cache_dtype,
                       config.distill.cache_topk, list(taps), "views-v1"], sort_keys=True,
                      default=str).encode())
  return h.hexdigest()


def storage_bytes(expected, dtype):
  """Bytes of the cache's row files (``expected``: {key: shape})."""
  return sum(int(np.prod(shape)) for shape in expected.values()) * np.dtype(dtype).itemsize


def _compressed(expected, k):
  """The shapes stored for top-k logits: values, indices and the tail's log-sum-exp."""
  n, teachers, classes = expected.pop("logits")
  if not 0 < k < classes:
    raise UserError(f"config.distill.cache_topk={k} must be in [1, {classes - 1}] for "
                    f"{classes} classes (0 stores the full logits).")
  return {"topk_values": (n, teachers, k), "topk_indices": (n, teachers, k),
          "tail_lse": (n, teachers, 1), **expected}


def _top_k_batches(outputs, k):
  for batch in outputs:
    values, indices, tail = cache_rows.top_k(tf.constant(batch.pop("logits")), k)
    yield {"topk_values": values.numpy(), "topk_indices": indices.numpy(),
           "tail_lse": tail.numpy(), **batch}


def load_or_compute(cache_dir, ensemble, split, transform, seed, steps, global_batch_size,
                    digest, taps=(), write=True, dtype="float32", steps_per_epoch=None,
                    topk=0):
  """{key: ViewRows} of the teachers' outputs on the first ``steps`` global batches of
  ``split``'s training stream (``transform``: the run's augmentation); with ``topk`` the
  logits are stored as their top k (cache_rows.TopKViewRows)."""
  directory = os.path.join(cache_dir, f"views-{digest[:16]}")
  expected = teacher_cache.expected_shapes(ensemble, steps * global_batch_size, taps)
  classes = expected["logits"][-1]
  if topk:
    expected = _compressed(expected, topk)
  dtypes = {key: "int32" if key == "topk_indices" else dtype for key in expected}
  size = sum(storage_bytes({key: shape}, dtypes[key]) for key, shape in expected.items())
  per_epoch = size * (steps_per_epoch or steps) / max(steps, 1)
  logging.info("Teacher view cache %s: %d steps x %d views, %s%s, %.1f MB (%.1f MB per "
               "epoch).", directory, steps, global_batch_size, dtype,
               f", top {topk} logits" if topk else "", size / 1e6, per_epoch / 1e6)
  stream = split.train_fn(global_batch_size, seed, transform=transform)(
      tf.distribute.InputContext())
  images = (batch["image"] for batch in itertools.islice(iter(stream), steps))
  outputs = teacher_cache.output_batches(ensemble, images, taps, steps * global_batch_size)
  files = teacher_cache.rows_cache(directory, digest, expected,
                                   _top_k_batches(outputs, topk) if topk else outputs,
                                   write, dtypes)
  views = {key: cache_rows.ViewRows(rows, global_batch_size) for key, rows in files.items()
           if key in ("logits",) + tuple(taps)}
  if topk:
    views["logits"] = cache_rows.TopKViewRows(files["topk_values"], files["topk_indices"],
                                             files["tail_lse"], classes, global_batch_size)
  return views
