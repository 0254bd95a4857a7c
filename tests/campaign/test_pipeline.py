"""The pipeline: stages, variants, skipping finished stages, and the results table."""

import glob
import json
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from kd_research import config as config_lib
from kd_research import run_spec
from kd_research import main as main_lib
from kd_research.campaign import pipeline
from kd_research.common.errors import UserError
from kd_research.models import registry as model_registry
from kd_research.train import workdir as workdir_lib
from conftest import tiny_config


def test_pipeline_with_variants_and_rerun(tmp_path):
  config = tiny_config(**{"student.epochs": 2})
  with config.unlocked():
    config.pipeline.variants = ml_collections.ConfigDict({
        "low_alpha": {"alpha": 0.3},
        "finetune": {"finetune_epochs": 1}})
  run_spec.parse(config)
  workdir = str(tmp_path / "p")
  strategy = tf.distribute.get_strategy()
  results, table = pipeline.run(config, workdir, strategy)
  assert set(results) == {"teacher", "student_baseline", "student_kd_low_alpha",
                          "student_kd_finetune"}
  assert "| student_kd_low_alpha |" in table and "| student_kd_finetune |" in table
  saved = json.load(open(os.path.join(workdir, "student_kd_low_alpha", "config.json")))
  assert saved["distill"]["alpha"]["start"] == saved["distill"]["alpha"]["end"] == 0.3
  assert json.load(open(os.path.join(workdir, "student_kd_finetune", "config.json")))[
      "distill"]["finetune_epochs"] == 1
  stamp = os.path.getmtime(os.path.join(workdir, "teacher", "model.keras"))
  again, table_again = pipeline.run(config, workdir, strategy)  # Everything finished: skipped.
  assert os.path.getmtime(os.path.join(workdir, "teacher", "model.keras")) == stamp
  assert table_again == table


def test_variant_with_unknown_field():
  config = tiny_config()
  with config.unlocked():
    config.pipeline.variants = ml_collections.ConfigDict({"bad": {"temprature": 3.0}})
  with pytest.raises(UserError, match="temprature"):
    run_spec.parse(config)


def test_pipeline_seeds_variants_with_teacher_choice_and_given_teacher(tmp_path):
  """Students run once per seed (mean +- std of the seeds' own results); a variant's
  teachers='primary' distils from the primary teacher only; a teacher given by path
  gets its params and train time from its own run directory."""
  base = str(tmp_path / "base")
  teacher_results, _ = pipeline.run(tiny_config(**{"pipeline.export_students": False}), base,
                                    tf.distribute.get_strategy())
  given = os.path.join(base, "teacher", "model.keras")
  config = tiny_config(**{"teacher.path": given, "pipeline.seeds": (3, 4),
                          "pipeline.export_students": False,
                          "distill.cache_teacher": True})
  with config.unlocked():
    config.extra_teachers = ml_collections.ConfigDict(
        {"b": config_lib.model_config("mlp", width=48, epochs=1, seed=1)})
    config.pipeline.variants = ml_collections.ConfigDict({
        "single": {"teachers": "primary"}, "multi": {"alpha": 0.9}})
  run_spec.parse(config)
  workdir = str(tmp_path / "seeds")
  results, table = pipeline.run(config, workdir, tf.distribute.get_strategy())
  for stage in ("student_baseline", "student_kd_single", "student_kd_multi"):
    runs = [json.load(open(os.path.join(workdir, stage, f"seed_{s}", "results.json")))
            for s in (3, 4)]
    assert [r["seed"] for r in runs] == [3, 4]
    accuracies = np.array([r["test_accuracy"] for r in runs])
    assert results[stage]["test_accuracy"] == pytest.approx(accuracies.mean())
    assert results[stage]["test_accuracy_std"] == pytest.approx(accuracies.std(ddof=1))
  single = json.load(open(os.path.join(workdir, "student_kd_single", "seed_3", "config.json")))
  multi = json.load(open(os.path.join(workdir, "student_kd_multi", "seed_3", "config.json")))
  assert len(single["teachers"]) == 1 and len(multi["teachers"]) == 2
  assert multi["distill"]["alpha"]["start"] == 0.9 and single["distill"]["alpha"]["start"] != 0.9
  assert results["teacher"]["params"] == teacher_results["teacher"]["params"] > 0
  assert results["teacher"]["train_seconds"] == teacher_results["teacher"]["train_seconds"]
  assert "+-" in table and "over 2 seeds" in table
  # One shared teacher-output cache per teacher set (primary alone; both), none per run.
  assert len(glob.glob(os.path.join(workdir, "teacher_cache", "train-*.npz"))) == 2
  assert not glob.glob(os.path.join(workdir, "student_*", "seed_*", "teacher_cache"))
  # The report over the same runs: ensemble row, gains with combined std, sweep, claims.
  from kd_research.common import machine  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "RESULTS.md")
  assert main_lib.report_command([f"--workdir={workdir}", f"--output={out}",
                                  f"--sweep={base}", "--claims=cifar10_article"]) == 0
  text = open(out).read()
  assert f"--workdir={workdir} --output={out}" in text
  ensemble = [l for l in text.splitlines() if l.startswith("| teacher ensemble (2:")]
  assert len(ensemble) == 1
  assert f"| {100 * results['teacher_ensemble']['test_accuracy']:.2f}% |" in ensemble[0]
  base_acc = results["student_baseline"]
  for stage in ("student_kd_single", "student_kd_multi"):
    gain = 100 * (results[stage]["test_accuracy"] - base_acc["test_accuracy"])
    spread = 100 * np.hypot(results[stage]["test_accuracy_std"], base_acc["test_accuracy_std"])
    assert f"| {gain:+.2f} | {spread:.2f} |" in text, (stage, gain, spread)
  assert "Claimed by the article, NOT measured here" in text and "89.7%" in text
  assert machine.summary(machine.describe()) in text
  assert "validation split" in text
  assert main_lib.report_command([f"--workdir={workdir}", f"--output={out}",
                                  "--claims=nope"]) == 2


def test_bad_seeds_are_refused():
  with pytest.raises(UserError, match="config.pipeline.seeds"):
    run_spec.parse(tiny_config(**{"pipeline.seeds": (0, 0)}))
  with pytest.raises(UserError, match="config.pipeline.seeds"):
    run_spec.parse(tiny_config(**{"pipeline.seeds": (0, 1.5)}))
  config = tiny_config()
  with config.unlocked():
    config.pipeline.variants = ml_collections.ConfigDict({"v": {"teachers": "best"}})
  with pytest.raises(UserError, match="teachers='best'"):
    run_spec.parse(config)


def check_report_page(tmp_path, workdir, best):
  """The report of the candidates' campaign: a method table per pair with the gain over
  labels only, the figure, the sweep; the summary first, each command once."""
  from kd_research.report import pages  # pylint: disable=g-import-not-at-top
  from kd_research.report import rows as report_rows  # pylint: disable=g-import-not-at-top
  figure = str(tmp_path / "figure.svg")
  text = pages.generate(str(tmp_path / "bench"), str(tmp_path / "R.md"),
                         sweep=str(tmp_path / "bench_sweep"), figure=figure)
  kd_test = [json.load(open(os.path.join(workdir, "student_kd_kd", f"seed_{s}",
                                         "results.json")))["test_accuracy"] for s in (0, 1)]
  base = [json.load(open(os.path.join(workdir, "student_baseline", f"seed_{s}",
                                      "results.json")))["test_accuracy"] for s in (0, 1)]
  gain = 100 * (np.mean(kd_test) - np.mean(base))
  assert f"| kd | 2 | {report_rows.mean_std(kd_test)} | {gain:+.2f} |" in text
  assert "![Test accuracy per method" in text and "(figure.svg)" in text
  svg = open(figure).read()
  assert svg.startswith("<svg") and svg.count("<circle") == 1 and "labels only" in svg
  assert "kd_high" in text or "kd_low" in text  # The sweep table lists the candidates.
  assert "## Learning curves of the labels-only students" in text
  # The page leads with the summary per pair (the chosen alpha in its row), lists each
  # command once, and details every run below.
  assert text.index("## Summary") < text.index("## Commands") < text.index("## Every run")
  chosen_alpha = {"low": 0.1, "high": 0.9}[best]
  assert f"| {gain:+.2f} |" in text and f"alpha {chosen_alpha:g}, T " in text
  commands = {report_rows.run_command(os.path.dirname(p), str(tmp_path)) for p in glob.glob(
      str(tmp_path / "**" / "results.json"), recursive=True)} - {"", None}
  assert all(text.count(f"`{c}`") == 1 for c in commands)


def test_candidates_chosen_on_validation_then_seeds_and_rerun_skips(tmp_path):
  """Each candidate runs once in the sibling sweep tree; the best validation accuracy
  wins (selection.json); the variant's seeds use it; a rerun trains nothing new."""
  config = tiny_config(**{"pipeline.seeds": (0, 1), "pipeline.export_students": False})
  with config.unlocked():
    config.pipeline.variants = ml_collections.ConfigDict({"kd": {"method": "kd"}})
    config.pipeline.candidates = ml_collections.ConfigDict(
        {"kd": {"low": {"alpha": 0.1}, "high": {"alpha": 0.9, "temperature": 2.0}}})
  run_spec.parse(config)
  workdir = str(tmp_path / "bench" / "pair")
  pipeline.run(config, workdir, tf.distribute.get_strategy())
  sweep = tmp_path / "bench_sweep" / "pair"
  selection = json.load(open(sweep / "selection.json"))["kd"]
  scores = {}
  for name in ("low", "high"):
    scores[name] = json.load(open(sweep / f"kd_{name}" / "results.json"))["validation_accuracy"]
    assert json.load(open(sweep / f"kd_{name}" / "results.json"))["seed"] == 0
  assert selection["validation"] == scores
  best = max(sorted(scores), key=lambda n: scores[n])
  assert selection["chosen"] == best
  final = json.load(open(os.path.join(workdir, "student_kd_kd", "seed_1", "config.json")))
  assert final["distill"]["alpha"]["start"] == {"low": 0.1, "high": 0.9}[best]
  # The first seed is the chosen candidate's run (same config and seed): copied, not rerun.
  first = os.path.join(workdir, "student_kd_kd", "seed_0")
  copied = json.load(open(os.path.join(first, "results.json")))
  candidate = json.load(open(sweep / f"kd_{best}" / "results.json"))
  assert copied["copied_from"] == str(sweep / f"kd_{best}")
  assert copied["workdir"] == os.path.abspath(first)
  assert {k: v for k, v in copied.items() if k not in ("copied_from", "workdir")} == {
      k: v for k, v in candidate.items() if k != "workdir"}
  assert json.load(open(os.path.join(first, "config.json"))) == json.load(
      open(sweep / f"kd_{best}" / "config.json"))
  assert "copied_from" not in json.load(open(os.path.join(workdir, "student_kd_kd", "seed_1",
                                                          "results.json")))
  check_report_page(tmp_path, workdir, best)
  stamps = {p: os.path.getmtime(p) for p in glob.glob(str(tmp_path / "**" / "results.json"),
                                                      recursive=True)
            if os.path.exists(os.path.join(os.path.dirname(p), "config.json"))}  # Runs only.
  pipeline.run(config, workdir, tf.distribute.get_strategy())
  assert stamps == {p: os.path.getmtime(p) for p in stamps}
  with config.unlocked():
    config.pipeline.candidates = ml_collections.ConfigDict({"nope": {"a": {"alpha": 0.5}}})
  with pytest.raises(UserError, match="not variants"):
    run_spec.parse(config)


def test_report_counts_a_seed_once_per_setting():
  """Two pipelines that differ only in their teachers share the labels-only student: the
  same config and seed found twice is one sample, not two."""
  from kd_research.report import rows as report_rows  # pylint: disable=g-import-not-at-top
  def run(directory, seed):
    return {"dir": directory, "config": {"role": "student", "model": {"seed": seed}}}
  groups = report_rows.groups([run("a/s0", 0), run("a/s1", 1), run("b/s0", 0), run("b/s1", 1)])
  assert [[r["dir"] for r in g] for g in groups] == [["a/s0", "a/s1"]]


def test_learning_curve_table_reads_validation_accuracy_from_events(tmp_path):
  """Per epoch, mean +- std over seeds of the eval/accuracy scalars each run wrote; a run
  with a different number of epochs is its own column."""
  from kd_research.report import curves as report_curves  # pylint: disable=g-import-not-at-top
  curves = {"a/seed_0": (0.50, 0.70), "a/seed_1": (0.54, 0.74), "b/seed_0": (0.6, 0.8, 0.9)}
  runs = []
  for name, accuracies in curves.items():
    directory = str(tmp_path / name)
    writer = tf.summary.create_file_writer(directory)
    with writer.as_default():
      for epoch, accuracy in enumerate(accuracies, start=1):
        tf.summary.scalar("eval/accuracy", accuracy, step=10 * epoch)  # 10 steps per epoch.
        tf.summary.scalar("eval/loss", 1.0, step=10 * epoch)
    writer.close()
    config = {"role": "student", "optimizer": {"learning_rate": {"start": 0.01}},
              "model": {"model": "cnn_article", "width": 4, "seed": 0, "epochs": len(accuracies)}}
    runs.append({"dir": directory, "config": config,
                 "results": {"steps": 10 * len(accuracies), "epochs": len(accuracies)}})
  groups = [runs[:2], runs[2:]]
  text = report_curves.section(groups)
  rows = {line.split(" | ")[0]: line for line in text.splitlines()
          if line[:3] in ("| 1", "| 2", "| 3")}
  for epoch, column in ((1, (0.50, 0.54)), (2, (0.70, 0.74))):
    values = 100 * np.asarray(column)
    assert f"{values.mean():.2f} +- {values.std(ddof=1):.2f}" in rows[f"| {epoch}"]
  assert rows["| 3"].split(" | ")[1:] == ["", "90.00 |"]
  assert "2 epochs, lr 0.01 (2 seeds)" in text and "3 epochs, lr 0.01 (1 seed)" in text
  runs[0]["config"] = dict(runs[0]["config"], role="distill")
  assert "2 seeds" not in report_curves.section([runs[:2]])


def test_a_plan_runs_its_baseline_before_the_teacher_and_sweep_exist(tmp_path):
  """The plan gives the baseline group no dependency, so its jobs must run first: they
  train the labels-only student without reading the teacher or the sweep (the students'
  jobs select the candidates)."""
  from kd_research.campaign import plan as campaign  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"pipeline.seeds": (0,), "pipeline.export_students": False})
  with config.unlocked():
    config.pipeline.variants = ml_collections.ConfigDict({"kd": {"method": "kd"}})
    config.pipeline.candidates = ml_collections.ConfigDict(
        {"kd": {"low": {"alpha": 0.1}, "high": {"alpha": 0.9}}})
  workdir = str(tmp_path / "bench" / "pair")
  plan = campaign.read_plan(campaign.write_plan(config, workdir))
  groups = {g["name"]: g for g in plan["groups"]}
  assert groups["baseline"]["after"] == []
  (baseline,) = [j for j in plan["jobs"] if j["group"] == "baseline"]
  campaign.run_job(plan, baseline["id"])
  assert os.path.exists(os.path.join(baseline["run_dir"], "results.json")), baseline
  assert not os.path.exists(os.path.join(workdir, "teacher"))
  assert not os.path.exists(str(tmp_path / "bench_sweep"))
  with pytest.raises(UserError, match="needs teacher"):
    campaign.run_job(plan, campaign.job_of_task(plan, "students", 0))


def test_report_curves_compares_the_validation_curves_of_subdirectories(tmp_path, capsys):
  """`report --curves=DIR --output=F`: one column per subdirectory of DIR (its runs are the
  seeds), each epoch's validation accuracy as the run's events hold it, the final test
  accuracy, the runs' commands; bad flags exit 2 naming what is wrong."""
  from kd_research.report import curves as report_curves  # pylint: disable=g-import-not-at-top
  from kd_research.train import end_to_end as runs_lib  # pylint: disable=g-import-not-at-top
  root = tmp_path / "compare"
  for name, epochs in (("first", 2), ("second", 3)):
    config = tiny_config(**{"student.epochs": epochs, "run.eval_every_epochs": 1})
    runs_lib.train_and_evaluate(config, str(root / name / "seed_0"), "student",
                                tf.distribute.get_strategy())
  page = tmp_path / "page.md"
  assert main_lib.report_command([f"--curves={root}", f"--output={page}"]) == 0
  text = page.read_text()
  assert "| epoch | first (1 seed) | second (1 seed) |" in text
  for name, epochs in (("first", 2), ("second", 3)):
    run_dir = str(root / name / "seed_0")
    per_step = report_curves.validation_curve(run_dir)
    assert len(per_step) == epochs
    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert f"{name} {100 * results['test_accuracy']:.2f}%" in text
  last = [line for line in text.splitlines() if line.startswith("| 3 |")][0]
  assert last.split(" | ")[1] == ""  # the 2-epoch column has no third epoch
  capsys.readouterr()
  assert main_lib.report_command([f"--curves={tmp_path / 'nope'}", f"--output={page}"]) == 2
  assert main_lib.report_command([f"--curves={root}", f"--workdir={root}",
                                  f"--output={page}"]) == 2
  assert "--workdir" in capsys.readouterr().err
  (root / "empty").mkdir()
  assert main_lib.report_command([f"--curves={root}", f"--output={page}"]) == 1
  assert "empty holds no finished run" in capsys.readouterr().err


def check_born_again_ensemble(config, workdir, results):
  """The chain's born-again ensemble, against Keras predict + NumPy."""
  bane = results["chain_ensemble"]
  assert bane["generations"] == ["chain1_mlp_w32", "chain2_mlp_w16", "student_kd"]
  test = workdir_lib.splits_of_run(config, os.path.join(workdir, "student_kd")).test
  images = np.concatenate([np.asarray(b) for b in test.image_batches(1000)])
  probs = [tf.nn.softmax(model_registry.load_keras(os.path.join(workdir, name, "model.keras"))
                         .predict(images, verbose=0).astype(np.float64)).numpy()
           for name in bane["generations"]]
  for name, p in zip(bane["generations"], probs):
    assert bane["generation_test_accuracy"][name] == pytest.approx(
        np.mean(p.argmax(-1) == test.labels), abs=1e-4)
  assert bane["test_accuracy"] == pytest.approx(
      np.mean(np.mean(probs, 0).argmax(-1) == test.labels), abs=1e-4)
  assert "Ensemble of generations" in open(os.path.join(workdir, "results.md")).read()


def check_chain_as_a_plan(config, workdir, first, second):
  """The same campaign as a plan: one group per member, each after the one before; its jobs
  are the pipeline's runs (all finished), and a job trains a member as the pipeline does."""
  import shutil  # pylint: disable=g-import-not-at-top
  from kd_research.campaign import plan as campaign  # pylint: disable=g-import-not-at-top

  def teachers_of(run_dir):
    return json.load(open(os.path.join(run_dir, "config.json")))["teachers"]
  plan = campaign.read_plan(campaign.write_plan(config, workdir))
  groups = {g["name"]: g["after"] for g in plan["groups"]}
  assert list(groups) == ["teachers", "chain1", "chain2", "baseline", "students", "report"]
  assert groups["chain1"] == ["teachers"] and groups["chain2"] == ["chain1"]
  assert "chain2" in groups["students"] and groups["baseline"] == []
  assert all(campaign.finished(job) for job in plan["jobs"])
  shutil.rmtree(second)
  shutil.rmtree(os.path.join(workdir, "student_kd"))
  with pytest.raises(UserError, match="needs chain2"):
    campaign.run_job(plan, "student_kd")
  campaign.run_job(plan, "chain2")
  campaign.run_job(plan, "student_kd")
  assert teachers_of(second) == [os.path.realpath(os.path.join(first, "model.keras"))]
  assert teachers_of(os.path.join(workdir, "student_kd")) == [
      os.path.realpath(os.path.join(second, "model.keras"))]


def test_a_chain_distils_each_member_from_the_one_before_and_resumes_between_stages(
    tmp_path):
  """teacher -> mlp@32 -> student (born-again generation) -> the students: each member's
  config.json names the previous member's model as its teacher, the students learn from
  the last; a chain stopped between stages continues there (finished members untouched)."""
  from kd_research.campaign.schemes import chain as chains  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"pipeline.chain": ("mlp@32", "student"), "student.width": 16})
  workdir = str(tmp_path / "p")
  strategy = tf.distribute.get_strategy()
  results, _ = pipeline.run(config, workdir, strategy)
  first, second = os.path.join(workdir, "chain1_mlp_w32"), os.path.join(workdir, "chain2_mlp_w16")
  assert {"chain1_mlp_w32", "chain2_mlp_w16", "student_kd", "teacher"} <= set(results)
  def teachers_of(run_dir):
    return json.load(open(os.path.join(run_dir, "config.json")))["teachers"]
  assert teachers_of(first) == [os.path.realpath(os.path.join(workdir, "teacher", "model.keras"))]
  assert teachers_of(second) == [os.path.realpath(os.path.join(first, "model.keras"))]
  assert teachers_of(os.path.join(workdir, "student_kd")) == [
      os.path.realpath(os.path.join(second, "model.keras"))]
  assert json.load(open(os.path.join(first, "config.json")))["model"]["width"] == 32
  assert results["chain2_mlp_w16"]["params"] == results["student_kd"]["params"]
  check_born_again_ensemble(config, workdir, results)
  stamp = os.path.getmtime(os.path.join(first, "results.json"))
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(second)  # Stopped after the first member.
  shutil.rmtree(os.path.join(workdir, "student_kd"))
  pipeline.run(config, workdir, strategy)
  assert os.path.getmtime(os.path.join(first, "results.json")) == stamp
  assert os.path.exists(os.path.join(second, "results.json"))
  assert os.path.exists(os.path.join(workdir, "student_kd", "results.json"))
  check_chain_as_a_plan(config, workdir, first, second)
  for bad, message in ((("nope",), "unknown model 'nope'"), (("mlp@x",), "positive integer")):
    with pytest.raises(UserError, match=message):
      chains.check_entries(tiny_config(**{"pipeline.chain": bad}))


def test_a_dml_cohort_is_a_labels_only_stage_of_the_pipeline(tmp_path):
  """config.pipeline.dml_cohort=2: a student_dml stage beside the baseline, a cohort of two
  students with no teacher; each member reported, the row labelled, planned as a baseline."""
  from kd_research.campaign import plan as campaign  # pylint: disable=g-import-not-at-top
  config = tiny_config(**{"pipeline.dml_cohort": 2, "pipeline.export_students": False})
  workdir = str(tmp_path / "p")
  results, table = pipeline.run(config, workdir, tf.distribute.get_strategy())
  run_dir = os.path.join(workdir, "student_dml")
  identity = json.load(open(os.path.join(run_dir, "config.json")))
  assert identity["model"]["cohort"] == 2 and identity["role"] == "student"
  members = json.load(open(os.path.join(run_dir, "results.json")))["members"]
  assert [m["member"] for m in members] == ["member_0", "member_1"]
  assert results["student_dml"]["test_accuracy"] == pytest.approx(members[0]["test_accuracy"])
  assert "DML cohort of 2 (member 0)" in table
  plan = campaign.read_plan(campaign.write_plan(config, workdir))
  (job,) = [j for j in plan["jobs"] if j["id"] == "student_dml"]
  assert job["group"] == "baseline" and campaign.finished(job)
  with pytest.raises(UserError, match="dml_cohort=1"):
    run_spec.parse(tiny_config(**{"pipeline.dml_cohort": 1}))
