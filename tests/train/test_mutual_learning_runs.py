"""Deep mutual learning runs (config.student.cohort): independent of the replica count,
resumed exactly after SIGKILL (every member), each member evaluated and saved on its own."""

import os
import sys

import numpy as np
import pytest

from kd_research import run_spec
from kd_research.common.errors import UserError
from kd_research.data import datasets
from kd_research.methods import mutual
from kd_research.models import registry as model_registry
from kd_research.train import workdir as workdir_lib
from kd_research.train import end_to_end
from conftest import DEFAULT, killed_rerun_matches_uninterrupted, read_scalars, tiny_config
from conftest import weights_of


def _cohort_cmd(workdir):
  return [sys.executable, "-m", "kd_research.main", "train", "--role=student",
          "--experiment=fashion_mnist:tiny", f"--workdir={workdir}", "--config.student.cohort=2",
          "--config.deterministic=true", "--config.student.epochs=4",
          "--config.run.checkpoint_every_steps=10", "--config.run.steps_per_loop=2",
          "--config.augment.ops=('flip','crop')"]


def test_a_cohort_trains_the_same_on_one_and_two_replicas_and_saves_each_member(
    tmp_path, strategy_factory):
  config = tiny_config(**{"student.cohort": 3, "student.epochs": 1})
  results = {}
  for name, strategy in (("one", DEFAULT), ("two", strategy_factory(2))):
    results[name] = end_to_end.train_and_evaluate(config, str(tmp_path / name), "student", strategy)
  diff = max(float(np.max(np.abs(a - b))) for a, b in
             zip(weights_of(str(tmp_path / "one")), weights_of(str(tmp_path / "two"))))
  print(f"dml cohort of 3: 1 vs 2 replicas max |dw| {diff:.2e}")
  assert diff < 1e-5
  members = results["one"]["members"]
  assert [m["member"] for m in members] == ["member_0", "member_1", "member_2"]
  assert results["one"]["test_accuracy"] == members[0]["test_accuracy"]
  assert results["one"]["params"] == sum(m["params"] for m in members)
  cohort = model_registry.load_keras(str(tmp_path / "one" / "model.keras"))
  split = datasets.load_splits(datasets.data_spec(config)).test  # The run's test split, predicted again.
  images = np.concatenate([np.asarray(b) for b in split.image_batches(1000)])
  outputs = []
  for index, member in enumerate(members):
    model = model_registry.load_keras(
        workdir_lib.member_path(str(tmp_path / "one"), f"member_{index}"))
    logits = model.predict(images, verbose=0)
    outputs.append(logits)
    assert member["test_accuracy"] == pytest.approx(
        np.mean(logits.argmax(-1) == split.labels), abs=1e-9)
  np.testing.assert_allclose(cohort.predict(images, verbose=0), outputs[0], atol=1e-5)
  assert np.mean(outputs[0].argmax(-1) != outputs[1].argmax(-1)) > 0  # Different members.
  scalars = read_scalars(str(tmp_path / "one"))
  assert {f"train/loss_member{k}_{part}" for k in range(3) for part in ("ce", "kl")} <= set(
      scalars)


def test_without_the_mutual_term_member_0_trains_exactly_like_the_labels_only_student(
    tmp_path, monkeypatch):
  """The cohort's plumbing against an independent reference: with the KL term zeroed,
  member 0 (built first from the same seeded RNG, fed the same batches) must end with the
  labels-only student's weights, bit for bit; with the term it must not."""
  kl_rows = mutual.base.kl_rows
  monkeypatch.setattr(mutual.base, "kl_rows", lambda p, log_q: 0.0 * kl_rows(p, log_q))
  end_to_end.train_and_evaluate(tiny_config(), str(tmp_path / "labels"), "student", DEFAULT)
  end_to_end.train_and_evaluate(tiny_config(**{"student.cohort": 2}), str(tmp_path / "cohort"),
                                "student", DEFAULT)
  monkeypatch.undo()
  end_to_end.train_and_evaluate(tiny_config(**{"student.cohort": 2}), str(tmp_path / "mutual"),
                                "student", DEFAULT)
  labels_only = weights_of(str(tmp_path / "labels"))
  def member_0(run):
    model = model_registry.load_keras(workdir_lib.member_path(str(tmp_path / run), "member_0"))
    return [w.numpy() for w in model.weights]
  assert max(float(np.max(np.abs(a - b))) for a, b in
             zip(labels_only, member_0("cohort"))) == 0.0
  assert max(float(np.max(np.abs(a - b))) for a, b in
             zip(labels_only, member_0("mutual"))) > 1e-3


def test_sigkill_and_rerun_of_a_cohort_matches_the_uninterrupted_run(tmp_path):
  killed_at, diff, (a, b) = killed_rerun_matches_uninterrupted(_cohort_cmd, tmp_path, 40,
                                                               4 * 28)
  print(f"dml cohort killed after checkpoint {killed_at}; max |dw| vs uninterrupted: {diff}")
  assert diff == 0.0
  assert a["members"] == b["members"]


def test_a_cohort_is_refused_where_it_has_no_meaning(tmp_path, teacher_file):
  for bad, message in (({"student.cohort": 1}, "2 or more members"),
                       ({"teacher.cohort": 2}, "only config.student")):
    with pytest.raises(UserError, match=message):
      run_spec.parse(tiny_config(**bad))
  with pytest.raises(UserError, match="not distill"):
    end_to_end.train_and_evaluate(tiny_config(**{"student.cohort": 2}), str(tmp_path / "d"),
                                  "distill", DEFAULT, (teacher_file,))
  assert not os.path.exists(tmp_path / "d" / "results.json")
