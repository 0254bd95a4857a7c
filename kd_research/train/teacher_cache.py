"""Teacher-output cache: every teacher's logits on a split, computed once and fingerprinted.

When the student's inputs do not change from epoch to epoch (no random
augmentation), the teachers' outputs on the training split are fixed, so running
them on every step wastes most of a distillation step. The cache stores the
per-teacher logits [N, K, C] (so every combine mode still works), and for methods that
read a teacher's vector feature (``pooled``: RKD, PKT, CRD) that feature [N, K, D], in
``RUN/teacher_cache/<split>-<digest>.npz`` next to a fingerprint of teacher weights, data,
precision, combine mode and taps; any mismatch or a corrupt file means a recompute.
"""

import hashlib
import json
import os
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

from kd_research.common import console
from kd_research.common import fileio
from kd_research.common.errors import UserError
from kd_research.data import cache_rows
from kd_research.data import splits as splits_lib


def fingerprint(teacher_paths, split, mixed_precision, combine, taps=()):
  """A hex digest of everything the cached outputs depend on (the tapped features too).

  ``split`` is a data/splits.py split, or an image array (an in-memory split's images)."""
  h = hashlib.sha256()
  for path in teacher_paths:
    with open(path, "rb") as f:
      h.update(hashlib.sha256(f.read()).digest())
  if isinstance(split, splits_lib.ArraySplit):
    split = split.images
  if isinstance(split, np.ndarray):  # The in-memory digest, as before streamed splits.
    h.update(np.ascontiguousarray(split).data)
    described = [list(split.shape), str(split.dtype)]
  else:
    described = [splits_lib.digest_of(split), list(split.example_shape)]
  h.update(json.dumps(described + [mixed_precision, combine, "rescale-in-model-v1"]
                      + ([list(taps)] if taps else [])).encode())
  return h.hexdigest()


def refuse_feature_maps(ensemble, taps):
  """Only vector features (e.g. ``pooled``) are small enough to cache."""
  for model in ensemble.models:
    for tap in taps:
      shape = tuple(model.get_layer(tap).output.shape[1:])
      if len(shape) != 1:
        raise UserError(
            f"config.distill.cache_teacher=true caches vector features only, but the method "
            f"taps the teacher's {tap!r} of shape {shape} (a feature map). Turn the cache off "
            "(the teacher then runs live) or tap 'pooled'.")


def output_batches(ensemble, images, taps=(), total=None):
  """The teachers' outputs on an iterable of image batches ({key: [b, K, D]} numpy); with
  ``total`` (the number of images), a progress bar or log line while they are computed."""
  if taps:
    ensemble.tap(taps)

  def forward(x):
    if not taps:
      return {"logits": tf.transpose(ensemble.logits(x), [1, 0, 2])}
    out = ensemble.outputs(x, taps)
    features = {t: tf.stack([f[t] for f in out["features"]], 1) for t in taps}
    return {"logits": tf.transpose(out["logits"], [1, 0, 2]), **features}

  forward = tf.function(forward)
  progress = console.Progress("teacher outputs", total, "images") if total else None
  for batch in images:
    outputs = {key: value.numpy().astype(np.float32) for key, value in forward(batch).items()}
    if progress:
      progress.update(len(outputs["logits"]))
    yield outputs


def compute_outputs(ensemble, split, taps=(), batch_size=1000):
  """{'logits': [N, K, C], tap: [N, K, D] for each tap}, every teacher in inference mode, on
  ``split``'s eval view in row order (a data/splits.py split, or an image array)."""
  parts = list(output_batches(ensemble, _batches(split, batch_size), taps, _count(split)))
  return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _batches(split, batch_size):
  if isinstance(split, np.ndarray):
    return splits_lib.ArraySplit(split, np.zeros(len(split), np.int32)).image_batches(batch_size)
  return split.image_batches(batch_size)


def _count(split):
  return len(split) if isinstance(split, np.ndarray) else split.num_examples


def compute_logits(ensemble, images, batch_size=1000):
  """Per-teacher logits [N, K, C] of ``images`` in inference mode."""
  return compute_outputs(ensemble, images, (), batch_size)["logits"]


def _load(path, digest, expected):
  """The cached arrays {key: array} when the file reads, matches ``digest`` and has the
  expected shapes with finite values; None otherwise (then recomputed)."""
  try:
    with np.load(path, allow_pickle=False) as f:  # An .npz never runs code when loaded.
      if str(f["fingerprint"]) != digest:
        logging.info("Teacher cache %s is stale (fingerprint changed); recomputing.", path)
        return None
      arrays = {key: f[_npz_key(key)] for key in expected}
  except Exception as e:  # A truncated or corrupt npz raises many types.
    logging.warning("Teacher cache %s is unreadable (%s); recomputing.", path, e)
    return None
  for key, value in arrays.items():
    if value.shape != expected[key] or not np.all(np.isfinite(value)):
      logging.warning("Teacher cache %s: %s has shape %s (want %s) or non-finite values; "
                      "recomputing.", path, key, value.shape, expected[key])
      return None
  return arrays


def _npz_key(key):
  return "logits" if key == "logits" else f"feature_{key}"


def cache_path(cache_dir, split, digest):
  """RUN/teacher_cache/<split>-<fingerprint[:16]>.npz (or the same in a shared cache_dir)."""
  return os.path.join(cache_dir, f"{split}-{digest[:16]}.npz")


def load_or_compute(cache_dir, split, ensemble, images, digest, write=True):
  """The teachers' logits [N, K, C] on ``split`` (see ``load_or_compute_outputs``)."""
  return load_or_compute_outputs(cache_dir, split, ensemble, images, digest, (), write)["logits"]


def expected_shapes(ensemble, n, taps):
  k = len(ensemble)
  expected = {"logits": (n, k, ensemble.models[0].output_shape[-1])}
  for tap in taps:
    expected[tap] = (n, k) + tuple(ensemble.models[0].get_layer(tap).output.shape[1:])
  return expected


def _load_rows(directory, digest, expected, dtype):
  """{key: RowFile} of a complete row-file cache with this fingerprint, else None
  (``dtype``: one for every key, or {key: dtype})."""
  dtypes = dtype if isinstance(dtype, dict) else {key: dtype for key in expected}
  try:
    with open(os.path.join(directory, "cache.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  if meta.get("fingerprint") != digest:
    logging.info("Teacher cache %s is stale (fingerprint changed); recomputing.", directory)
    return None
  files = {key: cache_rows.RowFile(os.path.join(directory, f"{key}.rows"), shape, dtypes[key])
           for key, shape in expected.items()}
  for key, rows in files.items():
    ok = (os.path.exists(rows.path) and os.path.getsize(rows.path) == rows.expected_bytes()
          and all(np.all(np.isfinite(c)) for c in rows.chunks()))
    if not ok:
      logging.warning("Teacher cache %s: %s is truncated or has non-finite values; "
                      "recomputing.", directory, key)
      return None
  return files


def rows_cache(directory, digest, expected, outputs, write=True, dtype="float32"):
  """{key: RowFile} of the cache in ``directory``: loaded when complete and matching
  ``digest``, else written from ``outputs`` (an iterable of {key: [b, ...]} batches, the
  teachers run lazily) and checked against the ``expected`` shapes.

  One raw file per output (``<key>.rows``, rows in order) and cache.json with the
  fingerprint, written last. Memory while computing and training: one batch."""
  files = _load_rows(directory, digest, expected, dtype)
  if files is not None:
    logging.info("Using cached teacher outputs %s.", directory)
    return files
  if not write:  # Not the chief: compute a private copy, as the in-memory cache does.
    directory = tempfile.mkdtemp(prefix="kd_teacher_rows_")
  os.makedirs(directory, exist_ok=True)
  files = cache_rows.write_rows({key: os.path.join(directory, f"{key}.rows") for key in expected},
                               outputs, dtype)
  for key, rows in files.items():
    if rows.shape != expected[key]:
      raise ValueError(f"teacher cache {key}: wrote {rows.shape}, expected {expected[key]}")
  fileio.atomic_write_json(os.path.join(directory, "cache.json"), {
      "fingerprint": digest, "dtypes": {key: rows.dtype.name for key, rows in files.items()},
      "shapes": {k: list(v) for k, v in expected.items()}})
  return files


def load_or_compute_rows(cache_dir, split_name, ensemble, split, digest, taps=(), write=True):
  """Like ``load_or_compute_outputs`` for a streamed split, as RowFiles read per batch:
  RUN/teacher_cache/<split>-<fingerprint[:16]>/ (see ``rows_cache``)."""
  directory = os.path.join(cache_dir, f"{split_name}-{digest[:16]}")
  expected = expected_shapes(ensemble, split.num_examples, taps)
  return rows_cache(directory, digest, expected,
                    output_batches(ensemble, _batches(split, 1000), taps, split.num_examples),
                    write)


def load_or_compute_outputs(cache_dir, split, ensemble, images, digest, taps=(), write=True):
  """Cached {'logits', tap...} for ``split`` when the fingerprint matches, else computed.

  The file is named after the split and the fingerprint's first 16 hex digits, so one
  shared ``cache_dir`` holds the outputs of several teacher sets side by side; the full
  fingerprint inside the file is still checked.
  """
  path = cache_path(cache_dir, split, digest)
  if os.path.exists(path):
    arrays = _load(path, digest, expected_shapes(ensemble, _count(images), taps))
    if arrays is not None:
      logging.info("Using cached teacher outputs %s.", path)
      return arrays
  arrays = compute_outputs(ensemble, images, taps)
  if write:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, fingerprint=np.array(digest), **{_npz_key(k): v for k, v in arrays.items()})
    os.replace(tmp, path)
    fileio.atomic_write_json(path[:-len(".npz")] + ".json", {
        "fingerprint": digest, "shapes": {k: list(v.shape) for k, v in arrays.items()}})
  return arrays
