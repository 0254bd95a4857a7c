"""Teacher sources: where a distillation step gets its teachers' outputs from.

Either the live frozen ensemble run on the batch's images, or the fingerprinted
teacher-output cache carried in the batch (logits, and the vector features such as
``pooled`` that RKD, PKT and CRD read). Both return {'logits': [K, B, C], 'features':
[{tap: tensor} per teacher]} (features only when taps are asked for); the live ensemble
also runs on the extra views a method reads (the cache holds the main view only).
"""

import tensorflow as tf

from kd_research.data import views as views_lib


def live_teachers(ensemble, taps=(), views=()):
  """Teacher source: the frozen ensemble run on the batch's images (logits and taps), and
  on each extra view in ``views`` (data/views.py) as {'views': {name: outputs}}."""
  def outputs(images):
    return ensemble.outputs(images, taps) if taps else {"logits": ensemble.logits(images)}

  if not views:
    return lambda batch: outputs(batch["image"])

  def source(batch):
    out = dict(outputs(batch["image"]))
    out["views"] = {name: outputs(batch[views_lib.field(name)]) for name in views}
    return out

  return source


def cached_teachers(batch):
  """Teacher source: the teacher-output cache carried in the batch ([B, K, C] -> [K, B, C])."""
  return {"logits": tf.transpose(batch["teacher_logits"], [1, 0, 2])}


def cache_extras(outputs):
  """The cache's arrays as training-batch fields: teacher_logits, teacher_feature_<tap>."""
  return {("teacher_logits" if key == "logits" else f"teacher_feature_{key}"): value
          for key, value in outputs.items()}


def cached_teachers_with(taps):
  """Teacher source from the cache with the cached vector features ``taps`` ([B, K, D])."""
  if not taps:
    return cached_teachers

  def source(batch):
    count = batch["teacher_logits"].shape[1]
    return {"logits": tf.transpose(batch["teacher_logits"], [1, 0, 2]),
            "features": [{t: batch[f"teacher_feature_{t}"][:, k] for t in taps}
                         for k in range(count)]}

  return source
