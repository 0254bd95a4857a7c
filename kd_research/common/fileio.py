"""Atomic file writes and checked reads: an interrupted write never leaves a truncated file."""

import json
import os
import shutil
import tempfile

from kd_research.common.errors import UserError


def atomic_write_text(path, text):
  """Writes ``text`` to a temporary file in the same directory, fsyncs, then renames."""
  atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path, data):
  """Writes ``data`` to a temporary file in the same directory, fsyncs, then renames."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def record_command(workdir, command):
  """Writes the command (or Python call) that produced a run into WORKDIR/command.txt, which
  the reports show; an unusable workdir is a clear error, not a traceback."""
  check_writable(workdir)
  atomic_write_text(os.path.join(workdir, "command.txt"), portable_command(command) + "\n")


def atomic_write_json(path, obj):
  """JSON version of ``atomic_write_text`` (sorted keys, indented)."""
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path):
  """Reads a JSON file; a corrupt file is a UserError naming it."""
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is corrupt ({e}); delete it or rerun with --overwrite.")


def atomic_save_keras(model, path):
  """Saves a Keras model as ``path`` (.keras) via a temporary file in the same directory,
  so that a kill never leaves a half-written model under the final name."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path[:-len(".keras")] + ".tmp.keras"
  model.save(tmp)
  os.replace(tmp, path)


def atomic_save_dir(path, write_fn):
  """Calls ``write_fn(tmp_dir)`` then renames ``tmp_dir`` to ``path`` (replacing it)."""
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  write_fn(tmp)
  shutil.rmtree(path, ignore_errors=True)
  os.replace(tmp, path)


def check_writable(directory):
  """Creates ``directory`` if needed and fails clearly when it cannot be written."""
  part = os.path.abspath(directory)
  while part != os.path.dirname(part):
    if os.path.exists(part) and not os.path.isdir(part):
      raise UserError(f"Workdir {directory} cannot be created: {part} is a file, not a "
                      "directory. Choose another --workdir.")
    part = os.path.dirname(part)
  try:
    os.makedirs(directory, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=directory, prefix=".write_test", delete=True)
    probe.close()
  except OSError as e:
    raise UserError(f"Workdir {directory} cannot be written ({e.strerror}); choose another "
                    "--workdir.")


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def portable_command(command, root=REPO_ROOT):
  """``command`` with every absolute path below ``root`` made relative to ``root``.

  Commands recorded in a run (command.txt) and quoted in generated reports must work in
  any clone: ``--workdir=/home/me/kd/runs/x`` becomes ``--workdir=runs/x``.
  """
  prefix = os.path.abspath(root).rstrip(os.sep) + os.sep
  return command.replace(prefix, "")
