"""Training schemes: ways of training that add stages to a campaign, registered by name.

A scheme is one module of this package holding one ``Scheme`` subclass, registered with
``@register``. It declares:

- ``fields``: its fields of ``config.pipeline`` ({name: (default, what it means)}); config.py
  adds them to the schema and docs/config.md lists them;
- ``validate(config)``: its checks, run by ``run_spec.parse`` before anything is written;
- ``teacher_stages``: the runs that make the students' teachers (a chain of teacher
  assistants or born-again generations), each a ``stages.Stage`` with its run config and
  teachers; what it runs after follows from its teachers;
- ``student_stages``: labels-only student stages beside the baseline (a DML cohort);
- ``results``: entries of the campaign's results.json and a paragraph of results.md.

The pipeline, ``--plan`` and the Slurm arrays all take their stages from
``stages.campaign_stages``, which asks every active scheme: adding a scheme touches no other
module. Schemes here: chain.py (teacher assistants, born-again generations),
dml_cohort.py (deep mutual learning beside the baseline) and teacher_free.py (students of
teacher-free objectives, USKD, beside it).
"""

from kd_research.common import plugins

KIND = "scheme"
PACKAGE = "kd_research.campaign.schemes"


class Scheme:
  """Base class: a scheme that adds nothing (subclasses override what they add)."""

  name = ""
  fields = {}  # {config.pipeline field: (default, one line of what it means)}

  def active(self, config):
    """Whether ``config`` turns the scheme on (any of its fields set)."""
    return any(config.pipeline[field] for field in self.fields)

  def validate(self, config):
    """Raises UserError for a bad value of its fields (before any run)."""
    del config

  def teacher_stages(self, config, workdir, teacher_paths):
    """(stages that make the students' teachers, the students' teacher files)."""
    del config, workdir
    return [], list(teacher_paths)

  def student_stages(self, config):
    """[(stage name, run config)] of labels-only student stages (run once per seed)."""
    del config
    return []

  def results(self, config, workdir, teacher_paths, first_distilled_dir):
    """({results.json key: value}, results.md paragraph) after the students."""
    del config, workdir, teacher_paths, first_distilled_dir
    return {}, ""


def register(cls):
  """Class decorator: makes the scheme ``cls`` (one instance) findable by its name."""
  plugins.register(KIND, cls.name, cls())
  return cls


def schemes():
  """{name: scheme} of every registered scheme, in name order."""
  return plugins.registered(KIND, PACKAGE)


def active(config):
  """The schemes ``config`` turns on, in name order."""
  return [scheme for scheme in schemes().values() if scheme.active(config)]
