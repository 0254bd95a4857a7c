"""What a run shows: its own lines, a progress bar where someone watches, nothing else.

Quiet by default: TensorFlow's C++ INFO/WARNING lines (``TF_CPP_MIN_LOG_LEVEL=2``, set
before TensorFlow is imported), its Python INFO/WARNING records (SavedModel's "Sharding
callback duration", the TFLite converter's notes) and library warnings are dropped; the
project's own log records (setup summary, validation per epoch, results) are printed as
plain ``HH:MM:SS message`` lines. Errors from anywhere always show. ``--verbose`` (or
``KD_VERBOSE=1``) restores everything with absl's full prefixes.

Progress: in an interactive terminal or a notebook, one bar per training phase, redrawn in
place; elsewhere (logs, CI, batch jobs) the driver's periodic log lines.
``KD_PROGRESS=bar|lines`` forces either.
"""

import contextlib
import logging
import os
import sys
import tempfile
import time
import warnings

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_STATE = {"verbose": None, "bar": False}


def verbose_requested(argv=()):
  """--verbose among ``argv``, or KD_VERBOSE=1 in the environment."""
  return "--verbose" in argv or os.environ.get("KD_VERBOSE", "") not in ("", "0")


def quiet_native_logs(verbose):
  """TensorFlow's C++ log level, effective only before TensorFlow is imported."""
  if not verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def native_output_captured(enabled=True):
  """Holds what native code writes to file descriptors 1 and 2 (banners printed before
  TensorFlow's log level applies: "oneDNN custom operations are on", the TFLite
  converter's settings) and drops it; if the block raises, the held text is written to
  stderr first, so no error is hidden."""
  if not enabled:
    yield
    return
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  saved = {fd: os.dup(fd) for fd in (1, 2)}
  with tempfile.TemporaryFile() as held:
    for fd in saved:
      os.dup2(held.fileno(), fd)
    try:
      yield
    except BaseException:
      _restore(saved)
      held.seek(0)
      sys.stderr.write(held.read().decode(errors="replace"))
      raise
    _restore(saved)


def _restore(saved):
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  for fd, copy in list(saved.items()):
    os.dup2(copy, fd)
    os.close(copy)
    del saved[fd]


def import_tensorflow(verbose=False):
  """Imports TensorFlow (and Keras) once, quietly unless ``verbose``."""
  quiet_native_logs(verbose)
  if "tensorflow" in sys.modules:
    return
  with native_output_captured(not verbose):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    import keras  # pylint: disable=g-import-not-at-top,unused-import


def quiet():
  """True unless the run was configured verbose (for native output worth holding back)."""
  return not _STATE["verbose"]


class _OwnRecords(logging.Filter):
  """Passes the project's records and anyone's errors."""

  def filter(self, record):
    return (record.levelno >= logging.ERROR
            or os.path.abspath(record.pathname).startswith(_PACKAGE_DIR + os.sep))


class _PlainFormatter(logging.Formatter):

  def format(self, record):
    prefix = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
    return f"{time.strftime('%H:%M:%S')} {prefix}{record.getMessage()}"


class _Handler(logging.StreamHandler):
  """Ends a progress bar's line before a log line, so neither overwrites the other."""

  def emit(self, record):
    end_bar()
    super().emit(record)


def configure(verbose=False):
  """Sets the process's logging for a run: quiet (default) or verbose. Idempotent."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  quiet_native_logs(verbose)
  _STATE["verbose"] = verbose
  root = logging.getLogger()
  for handler in list(root.handlers):
    if isinstance(handler, _Handler):
      root.removeHandler(handler)
  absl_handler = absl_logging.get_absl_handler()
  if verbose:
    absl_logging.set_verbosity(absl_logging.INFO)
    for name in ("tensorflow", "keras", "h5py", "jax"):
      logging.getLogger(name).setLevel(logging.NOTSET)
    if absl_handler not in root.handlers:
      root.addHandler(absl_handler)
    return
  if absl_handler in root.handlers:
    root.removeHandler(absl_handler)
  handler = _Handler(sys.stderr)
  handler.addFilter(_OwnRecords())
  handler.setFormatter(_PlainFormatter())
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  absl_logging.set_verbosity(absl_logging.INFO)  # Our INFO records pass; the filter decides.
  absl_logging.use_absl_handler = lambda: None  # absl must not re-install its own handler.
  for name in ("tensorflow", "keras", "h5py", "jax"):  # Their records reach the filter.
    logging.getLogger(name).handlers.clear()
    logging.getLogger(name).propagate = True
    logging.getLogger(name).setLevel(logging.ERROR)
  warnings.filterwarnings("ignore", module=r"(keras|tensorflow|tf_keras|absl|google)(\.|$)")
  warnings.filterwarnings("ignore", category=DeprecationWarning)


def interactive():
  """A bar (True) or log lines (False): KD_PROGRESS, else a notebook or a terminal."""
  forced = os.environ.get("KD_PROGRESS", "")
  if forced in ("bar", "lines"):
    return forced == "bar"
  if _STATE["verbose"]:
    return False
  shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
  if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
    return True
  return bool(getattr(sys.stderr, "isatty", lambda: False)())


def bar_line(phase, step, total, loss, accuracy, rate, eta, width=28):
  """'distill [#########-----]  120/400  loss 0.61  acc 0.82  1234 ex/s  ETA 12 s'."""
  done = int(width * step / max(total, 1))
  return (f"{phase:<9} [{'#' * done}{'-' * (width - done)}] {step:>{len(str(total))}}/{total}"
          f"  loss {loss:.4f}  acc {accuracy:.4f}  {rate:.0f} ex/s  ETA {eta:.0f} s")


def show_progress(phase, step, total, loss, accuracy, rate, eta):
  """Redraws the bar (interactive) or returns False so the caller logs its line."""
  if not interactive():
    return False
  sys.stderr.write("\r" + bar_line(phase, step, total, loss, accuracy, rate, eta))
  sys.stderr.flush()
  _STATE["bar"] = True
  if step >= total:
    end_bar()
  return True


def end_bar():
  """Ends the bar's line (before other output, and when a phase ends)."""
  if _STATE["bar"]:
    sys.stderr.write("\n")
    sys.stderr.flush()
    _STATE["bar"] = False


class Progress:
  """Progress of work that is not a training phase (the teacher-output cache): a bar where
  someone watches, else a log line every ``every`` seconds and one at the end; nothing for
  work done within 2 seconds.

  ``update(n)`` adds ``n`` of ``total`` items; the line says the rate and the time left."""

  def __init__(self, phase, total, unit="examples", every=10.0):
    self.phase, self.total, self.unit, self.every = phase, max(int(total), 1), unit, every
    self.done, self.start = 0, time.time()
    self.last = self.start

  def line(self):
    elapsed = max(time.time() - self.start, 1e-9)
    rate = self.done / elapsed
    eta = (self.total - self.done) / rate if rate else 0.0
    width = 28
    filled = int(width * min(self.done, self.total) / self.total)
    return (f"{self.phase} [{'#' * filled}{'-' * (width - filled)}] {self.done}/{self.total} "
            f"{self.unit}  {rate:.0f}/s  ETA {eta:.0f} s")

  def update(self, n):
    self.done += int(n)
    now, finished = time.time(), self.done >= self.total
    if now - self.start < 2.0 and not _STATE["bar"]:
      return  # Work of a second or two needs no progress report.
    if interactive():
      sys.stderr.write("\r" + self.line())
      sys.stderr.flush()
      _STATE["bar"] = True
      if finished:
        end_bar()
    elif finished or now - self.last >= self.every:
      logging.getLogger("absl").info(self.line())
      self.last = now
