"""The one up-front check of a file source's images: corrupt files, modes and sizes.

Folder and TFRecord sources hand every encoded image (or its head and tail) to
``ImageScan.add``; ``finish`` then decides, once for the whole source: corrupt images are
a UserError naming them, or (``config.data.skip_corrupt``) dropped and counted; mixed
image modes need ``config.data.channels``; the set of sizes decides the input shape
(preprocess.view_from_config).
"""

import collections

from kd_research.common.errors import UserError
from kd_research.data import image_files

_SHOWN = 5  # files named in an error message


class ImageScan:
  """Collects what every image of a source is; see module docstring."""

  def __init__(self, source):
    self.source = source
    self.corrupt = []                          # (where, reason)
    self.modes = collections.defaultdict(list)  # channels -> [where]
    self.sizes = set()

  def add(self, where, head, tail=None):
    """Records one image; returns True when it is usable (else it is counted as corrupt)."""
    info = image_files.inspect(head, tail)
    if isinstance(info, str):
      self.corrupt.append((where, info))
      return False
    self.modes[info.channels].append(where)
    self.sizes.add((info.height, info.width))
    return True

  def finish(self, data_config):
    """(channels, sizes, skipped count) after the checks; raises UserError on bad data."""
    if self.corrupt and not data_config.skip_corrupt:
      listed = "; ".join(f"{where}: {reason}" for where, reason in self.corrupt[:_SHOWN])
      raise UserError(f"{self.source}: {len(self.corrupt)} corrupt image(s): {listed}"
                      f"{' ...' if len(self.corrupt) > _SHOWN else ''}. Replace or delete "
                      "them, or set --config.data.skip_corrupt=true to skip them (counted in "
                      "results.json).")
    if not self.modes:
      raise UserError(f"{self.source}: no readable image.")
    return self._channels(data_config.channels), self.sizes, len(self.corrupt)

  def _channels(self, requested):
    if requested:
      if requested not in (1, 3):
        raise UserError(f"config.data.channels must be 0 (the images' own), 1 (grey) or 3 "
                        f"(RGB), got {requested}.")
      return requested
    if len(self.modes) == 1 and next(iter(self.modes)) in (1, 3):
      return next(iter(self.modes))
    found = "; ".join(f"{image_files.MODES.get(c, c)}: {len(w)} image(s), e.g. {w[0]}"
                      for c, w in sorted(self.modes.items()))
    raise UserError(f"{self.source}: the images are not all grey or all RGB ({found}). Set "
                    "--config.data.channels=3 to decode every image as RGB (alpha dropped, "
                    "grey replicated) or =1 for grey.")
