"""Multi-view batches: extra augmented views of each training image, for the methods that
read several (MLKD's weak and strong views; any method may ask for views by name).

``config.augment.views='strong=flip,crop,randaugment'`` adds ``batch['view_strong']``: the
same images (before the main augmentation) through their own ops, with their own
randomness (each view's draws are salted apart, so its crop is not the main image's crop).
Several views: ``'a=flip;b=flip,crop,randaugment'``. ``batch['image']`` stays the main view
(``config.augment.ops``), which evaluation, the running train accuracy and the methods that
read one view use. A method that reads a view brings the view's ops with it (MLKD's
``config.distill.mlkd.view_ops``), used when config.augment.views does not define that
name (train/resolve.py ``run_views``). Views are stateless functions of (seed, step, position) like every
other augmentation: the same for any replica count and after a resume. The live teachers
and the student both run on every view a method reads (train/steps.py).
"""

import re

from kd_research.common.errors import UserError
from kd_research.data import augment

VIEW_SALT = 100  # view k (1-based) draws with salts 100 k + ...


def field(name):
  """The batch field of view ``name``."""
  return f"view_{name}"


def parse(text):
  """'strong=flip,crop,randaugment;b=flip' -> (('strong', ('flip', 'crop', 'randaugment')),
  ('b', ('flip',))); bad names, repeats and unknown or mixing ops raise UserError."""
  views, names = [], set()
  for part in (p.strip() for p in str(text or "").split(";")):
    if not part:
      continue
    name, sep, ops = part.partition("=")
    name = name.strip()
    if not sep or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in names:
      raise UserError(f"config.augment.views={text!r}: each view is NAME=OPS with a unique "
                      f"lower-case NAME (e.g. 'strong=flip,crop,randaugment'); got {part!r}.")
    parsed = augment.parse_ops(ops)
    if set(parsed) & set(augment.MIXING):
      raise UserError(f"config.augment.views: view {name!r} holds "
                      f"{'/'.join(set(parsed) & set(augment.MIXING))}, which mixes labels; "
                      "a view changes the images only (mix in config.augment.ops instead).")
    names.add(name)
    views.append((name, parsed))
  return tuple(views)


def names(text):
  """The configured views' names."""
  return tuple(name for name, _ in parse(text))


def transform(main, views, cfg, seed, num_classes, global_batch_size):
  """The training batch's transform: ``main`` (the main augmentation, or None), then each
  view of the original images as batch['view_<name>']."""

  def apply(batch):
    out = main(batch) if main is not None else dict(batch)
    for k, (name, ops) in enumerate(views, start=1):
      view = augment.augment_batch(batch, ops, cfg, seed, num_classes, global_batch_size,
                                   salt_offset=VIEW_SALT * k) if ops else batch
      out[field(name)] = view["image"]
    return out

  return apply
