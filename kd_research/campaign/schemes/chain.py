"""The ``chain`` scheme: teacher -> generation 1 -> ... -> the students, each network
distilled from the one before it.

``config.pipeline.chain`` lists the intermediate networks, each ``MODEL`` or
``MODEL@WIDTH``, or ``student`` for the students' own architecture:

- teacher-assistant chains (Mirzadeh et al., AAAI 2020): ``--config.pipeline.chain=resnet32``
  puts a resnet32 assistant between a resnet56 teacher and resnet20 students;
- born-again networks (Furlanello et al., ICML 2018): ``--config.pipeline.chain=student,student``
  trains two generations of the student's architecture, each from the one before, and the
  pipeline's students are the third generation;
- self-distillation from a trained teacher of the same architecture (Yuan et al., CVPR 2020):
  the pipeline with a teacher of the student's architecture and no chain at all.

Each member is a distillation run in WORKDIR/chain<k>_<model>[_w<width>] with the pipeline's
distillation settings (config.distill, not the variants) and the students' epochs and seed
(``config.student``), its teachers the previous member (the first member: every teacher).
Rerunning the pipeline skips finished members and resumes an interrupted one, so a chain
stopped between stages continues from there. The pipeline's students (labels-only, kd stages,
sweep) then learn from the last member.

After the students, ``ensemble_of_generations`` evaluates the born-again ensemble (BANE in
Furlanello et al.): the uniform average of the softmax outputs of every chain member and of
the first distilled student, on the validation and test splits, with each generation's own
accuracy beside it.
"""

import os

import ml_collections

from kd_research import config as config_lib
from kd_research.campaign import schemes
from kd_research.campaign import stages as stages_lib
from kd_research.common.errors import UserError
from kd_research.models import registry as model_registry
from kd_research.train import evaluation
from kd_research.train import teacher_cache
from kd_research.train import teachers as teachers_lib
from kd_research.train import workdir as workdir_lib

STUDENT = "student"


def parse_member(spec, student):
  """(model, width) of chain entry ``spec`` ('MODEL', 'MODEL@WIDTH' or 'student')."""
  spec = str(spec).strip()
  if spec == STUDENT:
    return student.model, student.width
  model, _, width = spec.partition("@")
  if width and not width.isdigit():
    raise UserError(f"config.pipeline.chain entry {spec!r}: the width after '@' must be a "
                    "positive integer (e.g. resnet32@8).")
  return model, int(width) if width else None


def entries(chain):
  """The chain's entries: the tuple's items, each split at commas (the command line's
  ``--config.pipeline.chain=resnet32@8,student`` arrives as one string in the tuple)."""
  return [part.strip() for item in chain for part in str(item).split(",") if part.strip()]


def check_entries(config):
  """Checks config.pipeline.chain before any run (UserError naming the entry)."""
  for spec in entries(config.pipeline.chain):
    model, _ = parse_member(spec, config.student)
    if not model or (":" not in model and not model_registry.is_known(model)):
      raise UserError(f"config.pipeline.chain entry {spec!r}: unknown model {model!r}; valid: "
                      f"student, a registered model ({', '.join(model_registry.names())}) "
                      "or module:function, optionally @WIDTH.")


def member_runs(config, workdir, teacher_paths):
  """[(run dir, run config, teacher paths)] of every chain member, in order."""
  out, paths = [], list(teacher_paths)
  for index, spec in enumerate(entries(config.pipeline.chain), 1):
    model, width = parse_member(spec, config.student)
    name = f"chain{index}_{model.replace(':', '.')}" + (f"_w{width}" if width else "")
    changes = {"student.model": model, "student.width": width}
    if index > 1:  # One teacher from here on: the previous member.
      changes.update(extra_teachers=ml_collections.ConfigDict(),
                     **{"distill.teacher_weights": ()})
    out.append((os.path.join(os.path.abspath(workdir), name),
                config_lib.replaced(config, **changes), paths))
    paths = [os.path.join(out[-1][0], "model.keras")]
  return out


def last_teachers(config, workdir, teacher_paths):
  """The teachers of the pipeline's students: the last member's model, or the teachers."""
  members = member_runs(config, workdir, teacher_paths)
  return [os.path.join(members[-1][0], "model.keras")] if members else list(teacher_paths)


def ensemble_of_generations(config, workdir, teacher_paths, student_dir):
  """The born-again ensemble of the chain's members and the student run in ``student_dir``:
  {generations, test/validation accuracy and ECE of the ensemble, each generation's test
  accuracy}; None without a chain. Uniform weights, softmax at T = 1 (Furlanello et al.)."""
  members = [run_dir for run_dir, _, _ in member_runs(config, workdir, teacher_paths)]
  if not members:
    return None
  run_dirs = members + [student_dir]
  splits = workdir_lib.splits_of_run(config, student_dir)
  ensemble = teachers_lib.load([os.path.join(d, "model.keras") for d in run_dirs],
                               splits.input_shape, splits.num_classes)
  names = [os.path.relpath(d, os.path.abspath(workdir)) for d in run_dirs]
  evaluated = {split: getattr(splits, split) for split in ("validation", "test")}
  report = evaluation.teacher_report(
      {split: teacher_cache.compute_outputs(ensemble, data)["logits"]
       for split, data in evaluated.items()},
      {split: data.labels for split, data in evaluated.items()}, names)
  return {"generations": names,
          "generation_test_accuracy": dict(zip(names, report["test"]["accuracy"])),
          "test_accuracy": report["test"]["ensemble_accuracy"],
          "test_ece": report["test"]["ensemble_ece"],
          "validation_accuracy": report["validation"]["ensemble_accuracy"],
          "params": sum(model.count_params() for model in ensemble.models)}


def ensemble_summary(result):
  """One Markdown paragraph of ``ensemble_of_generations``' result, for results.md."""
  listing = ", ".join(f"{name} {100 * acc:.2f}%"
                      for name, acc in result["generation_test_accuracy"].items())
  return (f"\nEnsemble of generations (uniform average of softmax outputs): test accuracy "
          f"{100 * result['test_accuracy']:.2f}%, validation {100 * result['validation_accuracy']:.2f}%; "
          f"each generation's test accuracy: {listing}.\n")


@schemes.register
class Chain(schemes.Scheme):
  """Teacher assistants and born-again generations: one distillation stage per member."""

  name = "chain"
  fields = {"chain": ((), "networks between the teacher and the students, each distilled "
                          "from the one before: MODEL, MODEL@WIDTH or student (teacher "
                          "assistants, born-again generations)")}

  def validate(self, config):
    check_entries(config)

  def teacher_stages(self, config, workdir, teacher_paths):
    """One group per member (chain1, chain2, ...), each after the one before."""
    out = []
    for index, (run_dir, run_config, paths) in enumerate(
        member_runs(config, workdir, teacher_paths), 1):
      out.append(stages_lib.Stage(f"chain{index}", f"chain{index}", run_dir, "distill",
                                  run_config, tuple(paths)))
    return out, last_teachers(config, workdir, teacher_paths)

  def results(self, config, workdir, teacher_paths, first_distilled_dir):
    generations = ensemble_of_generations(config, workdir, teacher_paths, first_distilled_dir)
    if not generations:
      return {}, ""
    return {"chain_ensemble": generations}, ensemble_summary(generations)
