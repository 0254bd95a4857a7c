"""results.json of a run: the one writer, its versioned schema, and the one reader.

Every run kind (train, distill, keras_peer) ends by writing a ``ResultsRecord`` with
``write``; the report, the pipeline and resume read them back with ``read``. Schema 2
(this one) names its version in the file (``schema``); files without it are schema 1
(written before the schema existed: the same fields, fewer optional ones) and read as
they are. A run's result is finished exactly when this file exists.
"""

import dataclasses
import os
from typing import Optional

from kd_research.common import fileio
from kd_research.common.errors import UserError

FILE = "results.json"
SCHEMA = 2
# The fields every schema has (the report and resume depend on them).
REQUIRED = ("role", "model", "seed", "params", "test_accuracy", "test_count",
            "validation_accuracy", "steps", "epochs", "train_seconds", "ms_per_batch_128",
            "dataset")


@dataclasses.dataclass
class ResultsRecord:
  """What a finished run measured. Accuracies are fractions; times are seconds or ms."""
  role: str                       # teacher | student | distill
  model: str                      # registry name (or the user's builder)
  width: int
  seed: int
  params: int                     # the exported model's parameters
  test_accuracy: float            # the full test split, once, at the end
  test_loss: float
  test_count: int
  test: dict                      # the test evaluation (accuracy, loss, ece, confusion, ...)
  validation_accuracy: float
  steps: int
  epochs: int
  train_seconds: float
  ms_per_batch_128: float         # median inference time after warm-up
  replicas: int
  dataset: str
  machine: dict                   # common.machine.describe()
  extra_params: int = 0           # objective variables (connectors, heads): never exported
  extra_trainable_params: int = 0
  ms_per_batch_1: Optional[float] = None
  workdir: str = ""
  precision: Optional[dict] = None  # runtime.precision.Choice.as_dict()
  # Distilled runs:
  method: Optional[str] = None
  teachers: Optional[dict] = None   # the teachers' report (evaluation.teacher_report)
  test_agreement: Optional[float] = None
  teacher_test_accuracy: Optional[float] = None
  trainer: Optional[str] = None     # set when a peer framework trained it (keras_peer)
  # A cohort (deep mutual learning): each member's accuracies and params, member 0 first.
  members: Optional[list] = None
  # File sources: the examples per split and the corrupt images skipped (data.skip_corrupt).
  data: Optional[dict] = None

  def as_dict(self):
    """The JSON object written to results.json (None fields left out), schema first."""
    fields = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
    return {"schema": SCHEMA, **fields}


def path(workdir):
  return os.path.join(workdir, FILE)


def exists(workdir):
  return os.path.exists(path(workdir))


def write(workdir, results):
  """Writes ``results`` (a ResultsRecord) atomically as WORKDIR/results.json; returns the dict."""
  if not isinstance(results, ResultsRecord):
    raise TypeError(f"results.write takes a ResultsRecord, got {type(results).__name__}")
  data = results.as_dict()
  fileio.atomic_write_json(path(workdir), data)
  return data


def read(workdir):
  """WORKDIR/results.json as a dict (any schema); UserError naming the file when it is
  unreadable, of an unknown schema, or missing a required field."""
  file = path(workdir)
  data = fileio.read_json(file)
  if not isinstance(data, dict):
    raise UserError(f"{file} is not a JSON object; remove it to rerun the run.")
  schema = data.get("schema", 1)
  if schema not in (1, SCHEMA):
    raise UserError(f"{file} has results schema {schema}; this version reads schemas 1 and "
                    f"{SCHEMA}. Use the version that wrote it, or rerun the run.")
  missing = [k for k in REQUIRED if k not in data]
  if missing:
    raise UserError(f"{file} lacks {', '.join(missing)}: it is not a finished run's results "
                    "(remove it to rerun the run).")
  return data


def read_if_run(workdir):
  """WORKDIR/results.json when it is a run's (read once), else None (e.g. a pipeline's
  summary, or an unreadable file)."""
  try:
    return read(workdir)
  except UserError:
    return None
