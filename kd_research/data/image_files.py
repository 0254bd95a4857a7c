"""What an encoded image file is, from its bytes' head and tail, without decoding it.

A folder or TFRecord source checks every image once, up front, for the faults that would
otherwise surface mid-run as a bare TensorFlow error: a file that is not JPEG/PNG, a
truncated file (no JPEG end-of-image marker, no PNG IEND chunk), and the image mode
(grey, RGB, RGBA) and size, which decide the input shape. Reading a header and the last
bytes costs two small reads per file, far below a decode.
"""

import dataclasses
import struct
from typing import Optional

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"IEND\xaeB`\x82"
# PNG colour types -> channels after decoding (palette images decode to RGB).
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
MODES = {1: "grey", 2: "grey+alpha", 3: "RGB", 4: "RGBA"}
# JPEG start-of-frame markers (baseline, progressive, ...) carry height, width, components.
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


@dataclasses.dataclass(frozen=True)
class ImageInfo:
  """Format ('jpeg' | 'png'), height, width and decoded channels of one encoded image."""
  format: str
  height: int
  width: int
  channels: int

  @property
  def mode(self):
    return MODES.get(self.channels, f"{self.channels} channels")


HEAD_BYTES = 1 << 17  # enough for the headers and EXIF segments before a JPEG frame header
TAIL_BYTES = 16


def read_ends(path):
  """(head, tail) bytes of a file: what ``inspect`` needs, in two small reads."""
  with open(path, "rb") as f:
    head = f.read(HEAD_BYTES)
    if len(head) < HEAD_BYTES:
      return head, head[-TAIL_BYTES:]
    f.seek(-TAIL_BYTES, 2)
    return head, f.read()


def inspect(head: bytes, tail: Optional[bytes] = None) -> "ImageInfo | str":
  """ImageInfo of a complete JPEG/PNG, or a string saying what is wrong with it.

  ``head`` is the file's start (or all of it), ``tail`` its last bytes (default: head's)."""
  tail = head[-TAIL_BYTES:] if tail is None else tail
  if head.startswith(PNG_SIGNATURE):
    return _inspect_png(head, tail)
  if head.startswith(JPEG_SOI):
    return _inspect_jpeg(head, tail)
  return f"not a JPEG or PNG image (starts with {head[:8].hex(' ') or 'nothing'})"


def _inspect_png(data, tail):
  if len(data) < 33 or data[12:16] != b"IHDR":
    return "a PNG without its IHDR header (truncated)"
  width, height = struct.unpack(">II", data[16:24])
  color_type = data[25]
  if color_type not in _PNG_CHANNELS:
    return f"a PNG with unknown colour type {color_type}"
  if not tail.rstrip(b"\x00").endswith(PNG_IEND):
    return "a truncated PNG (no IEND chunk at its end)"
  return ImageInfo("png", height, width, _PNG_CHANNELS[color_type])


def _inspect_jpeg(data, tail):
  if not tail.rstrip(b"\x00").endswith(JPEG_EOI):
    return "a truncated JPEG (no end-of-image marker at its end)"
  frame = _jpeg_frame(data)
  if frame is None:
    return "a JPEG without a frame header (corrupt)"
  height, width, components = frame
  if components not in (1, 3, 4):
    return f"a JPEG with {components} colour components (1 grey, 3 RGB and 4 CMYK are read)"
  # CMYK / YCCK JPEGs (ILSVRC-2012's train split holds 22): TensorFlow's decoder converts
  # them to RGB, with channels=3 and with channels=0 alike.
  return ImageInfo("jpeg", height, width, 3 if components == 4 else components)


def _jpeg_frame(data) -> Optional[tuple]:
  """(height, width, components) from the first start-of-frame segment, or None."""
  pos = 2
  while pos + 4 <= len(data):
    if data[pos] != 0xFF:
      return None
    marker = data[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
      pos += 2
      continue
    length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
    if marker in _SOF_MARKERS:
      if pos + 10 > len(data):
        return None
      height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
      return height, width, data[pos + 9]
    if marker == 0xDA:  # start of scan before any frame header
      return None
    pos += 2 + length
  return None
