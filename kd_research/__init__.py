"""kd_research: knowledge distillation with explicit tf.distribute training loops.

The Python API (kd_research/api.py), imported on first use so that ``import kd_research``
stays light: ``train_teacher``, ``train_student`` (labels only), ``distill``, ``evaluate``,
``export``, ``compare`` (the report of finished runs), ``pipeline_run`` and
``make_config``; each returns plain values (``RunResult``, dicts, markdown).
"""

import sys

__version__ = "0.1.0"

API = ("train_teacher", "train_student", "distill", "evaluate", "export", "compare",
       "pipeline_run", "make_config", "RunResult", "UserError")
__all__ = list(API)


if "ipykernel" in sys.modules:  # A notebook: import TensorFlow now, before the user's
  from kd_research.common import console  # `import keras` prints its start-up banners.
  console.import_tensorflow(console.verbose_requested())


def __getattr__(name):
  if name in API:
    from kd_research import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'kd_research' has no attribute {name!r}")
