"""kd_research: knowledge distillation with explicit tf.distribute training loops.

The Python API (kd_research/api.py), imported on first use so that ``import kd_research``
stays light: ``train`` (a teacher or a labels-only student), ``distill``, ``evaluate``,
``export``, ``compare`` (the report of finished runs), ``pipeline_run`` and
``make_config``; each returns plain values (``RunResult``, dicts, markdown).
"""

__version__ = "0.1.0"

API = ("train", "distill", "evaluate", "export", "compare", "pipeline_run", "make_config",
       "RunResult", "UserError")
__all__ = list(API)


def __getattr__(name):
  if name in API:
    from kd_research import api  # pylint: disable=g-import-not-at-top
    return getattr(api, name)
  raise AttributeError(f"module 'kd_research' has no attribute {name!r}")
