"""The members of a cohort run (deep mutual learning, models/cohort.py) one by one: each
evaluated on the validation and test splits and saved as RUN/members/member_<k>/model.keras,
a plain student model that eval, export and distillation (as a teacher) take like any other.
The run's own accuracy and model.keras are member 0's (the cohort's output)."""

import os

from kd_research.common import fileio
from kd_research.models import cohort
from kd_research.train import evaluation

MEMBERS_DIR = "members"


def member_path(workdir, index):
  """RUN/members/member_<index>/model.keras."""
  return os.path.join(workdir, MEMBERS_DIR, cohort.MEMBER.format(index), "model.keras")


def evaluate(run):
  """[{member, test_accuracy, test_ece, validation_accuracy, params}] of every member (None
  for a run that is not a cohort)."""
  members = cohort.members(run.state.model)
  if not members:
    return None
  out = []
  for index, member in enumerate(members):
    evaluator = evaluation.Evaluator(
        run.strategy, member, run.splits.num_classes,
        evaluation.eval_batch_size(run.config.run.eval_batch_size, run.strategy))
    test, validation = evaluator(run.splits.test), evaluator(run.splits.validation)
    out.append({"member": cohort.MEMBER.format(index), "test_accuracy": test["accuracy"],
                "test_ece": test["ece"], "validation_accuracy": validation["accuracy"],
                "params": int(member.count_params())})
  return out


def save(model, workdir):
  """Saves each member of cohort ``model`` (atomically); nothing for another model."""
  for index, member in enumerate(cohort.members(model)):
    fileio.atomic_save_keras(member, member_path(workdir, index))
