"""Teacher-output cache: every teacher's logits on a split, computed once and fingerprinted.

When the student's inputs do not change from epoch to epoch (no random
augmentation), the teachers' outputs on the training split are fixed, so running
them on every step wastes most of a distillation step. The cache stores the
per-teacher logits [N, K, C] (so every combine mode still works) in
``RUN/teacher_cache/<split>.npz`` next to a fingerprint of teacher weights, data,
precision and combine mode; any mismatch or a corrupt file means a recompute.
"""

import hashlib
import json
import os

from absl import logging
import numpy as np
import tensorflow as tf

from kd_research import io_utils
from kd_research.errors import UserError


def fingerprint(teacher_paths, images, mixed_precision, combine):
  """A hex digest of everything the cached logits depend on."""
  h = hashlib.sha256()
  for path in teacher_paths:
    with open(path, "rb") as f:
      h.update(hashlib.sha256(f.read()).digest())
  h.update(np.ascontiguousarray(images).data)
  h.update(json.dumps([list(images.shape), str(images.dtype), mixed_precision, combine,
                       "rescale-in-model-v1"]).encode())
  return h.hexdigest()


def refuse_with_augmentation(ops):
  """The cache is only valid when every epoch feeds the teacher the same images."""
  if ops:
    raise UserError(
        f"config.distill.cache_teacher=true cannot be used with random augmentation "
        f"(config.augment.ops={','.join(ops)}): the teacher must see the same augmented image "
        "as the student, which changes every step. Turn one of them off.")


def compute_logits(ensemble, images, batch_size=1000):
  """Per-teacher logits [N, K, C] of ``images`` in inference mode."""
  forward = tf.function(lambda x: tf.transpose(ensemble.logits(x), [1, 0, 2]))
  parts = [forward(tf.cast(images[i:i + batch_size], tf.float32)).numpy()
           for i in range(0, len(images), batch_size)]
  return np.concatenate(parts).astype(np.float32)


def _load(path, digest, expected_shape):
  try:
    with np.load(path, allow_pickle=False) as f:  # An .npz never runs code when loaded.
      if str(f["fingerprint"]) != digest:
        logging.info("Teacher cache %s is stale (fingerprint changed); recomputing.", path)
        return None
      logits = f["logits"]
  except Exception as e:  # A truncated or corrupt npz raises many types.
    logging.warning("Teacher cache %s is unreadable (%s); recomputing.", path, e)
    return None
  if logits.shape != expected_shape or not np.all(np.isfinite(logits)):
    logging.warning("Teacher cache %s has shape %s (want %s) or non-finite values; recomputing.",
                    path, logits.shape, expected_shape)
    return None
  return logits


def cache_path(cache_dir, split, digest):
  """RUN/teacher_cache/<split>-<fingerprint[:16]>.npz (or the same in a shared cache_dir)."""
  return os.path.join(cache_dir, f"{split}-{digest[:16]}.npz")


def load_or_compute(cache_dir, split, ensemble, images, digest, write=True):
  """Returns cached logits for ``split`` when the fingerprint matches, else computes them.

  The file is named after the split and the fingerprint's first 16 hex digits, so one
  shared ``cache_dir`` holds the outputs of several teacher sets side by side; the full
  fingerprint inside the file is still checked.
  """
  path = cache_path(cache_dir, split, digest)
  expected = None
  if os.path.exists(path):
    probe = ensemble.models[0].output_shape[-1]
    expected = (len(images), len(ensemble), probe)
    logits = _load(path, digest, expected)
    if logits is not None:
      logging.info("Using cached teacher logits %s.", path)
      return logits
  logits = compute_logits(ensemble, images)
  if write:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, logits=logits, fingerprint=np.array(digest))
    os.replace(tmp, path)
    io_utils.atomic_write_json(path[:-len(".npz")] + ".json",
                               {"fingerprint": digest, "shape": list(logits.shape)})
  return logits
