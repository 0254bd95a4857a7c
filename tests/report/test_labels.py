"""Report labels name every setting a row differs by: the method and each modifier (CTKD,
logit standardization, extra views, the cache's form, a DML cohort), read from the run
identities that runs store as config.json."""

import pytest

from conftest import tiny_config
from kd_research.report import rows
from kd_research.train import workdir


def _label(role="distill", **overrides):
  config = tiny_config(**overrides)
  return rows.describe(workdir.run_identity(config, role, ("/runs/teacher/model.keras",)))


@pytest.mark.parametrize("overrides, expected", [
    ({}, "distill: mlp w32, 1 teacher(s), kd, alpha 0.7, T 10"),
    ({"distill.ctkd.enabled": True}, "1 teacher(s), kd + ctkd, alpha 0.7, T learned"),
    ({"distill.method": "dkd", "distill.ctkd.enabled": True}, "1 teacher(s), dkd + ctkd"),
    ({"distill.method": "dkd"}, "1 teacher(s), dkd"),
    ({"distill.method": "deit", "distill.deit.type": "soft"}, "1 teacher(s), deit (soft)"),
    ({"distill.method": "deit,ofa"}, "1 teacher(s), deit (hard),ofa"),
    ({"distill.logit_standardization": True}, "kd + ls, alpha 0.7, T 10"),
    ({"distill.method": "mlkd", "distill.logit_standardization": True}, "mlkd + ls"),
    ({"augment.views": "strong=flip,crop"}, "views strong=flip,crop"),
    ({"distill.cache_teacher": True, "distill.cache_dtype": "float16",
      "distill.cache_topk": 3, "augment.ops": ("flip",)}, "cached views (float16, top 3)"),
    ({"distill.cache_teacher": True, "distill.cache_dtype": "float16"},
     "cached outputs (float16)"),
])
def test_every_modifier_is_in_the_label(overrides, expected):
  label = _label(**overrides)
  assert expected in label, label


def test_settings_that_differ_read_differently_and_the_exact_cache_reads_as_live():
  plain, ctkd = _label(), _label(**{"distill.ctkd.enabled": True})
  dkd, dkd_ctkd = _label(**{"distill.method": "dkd"}), _label(
      **{"distill.method": "dkd", "distill.ctkd.enabled": True})
  assert len({plain, ctkd, dkd, dkd_ctkd}) == 4
  assert _label(**{"distill.cache_teacher": True}) == plain  # float32, no views: same numbers
  assert "DML cohort of 2 (member 0)" in _label("student", **{"student.cohort": 2})


def test_hyper_parameters_list_only_what_differs_from_the_defaults():
  """Tuple defaults compare with the lists config.json holds: OFA's default stages () is not
  listed as a change, its eps (1.5,) is."""
  identity = workdir.run_identity(tiny_config(**{"distill.method": "ofa",
                                                 "distill.ofa.eps": (1.5,)}),
                                  "distill", ("/runs/teacher/model.keras",))
  assert rows.hyper_parameters(identity) == "ofa eps [1.5]"
