"""Campaigns on a real Slurm: `pipeline --plan` -> `slurm` job arrays with dependencies,
and a multi-worker run inside an allocation (srun -n 2) against 2 local replicas.

The module starts its own single-node cluster (munged, slurmctld, slurmd on this host,
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, daemons by hand, no
systemd), with a munge key and state of its own in a temporary directory. Where it cannot
start (no Debian slurm-wlm/munge, not root) the tests skip and say why, except under
``KD_REQUIRE_SLURM=1`` (.ci/run), where that is a failure.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ENV, REPO, weights_of

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "sinfo")


def _unavailable(reason):
  if os.environ.get("KD_REQUIRE_SLURM") == "1":
    pytest.fail(f"KD_REQUIRE_SLURM=1 but the test Slurm cannot start: {reason}")
  pytest.skip(f"no test Slurm: {reason}")


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _conf(root, host):
  lines = [
      "ClusterName=kdtest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
      "AuthType=auth/munge", f"AuthInfo=socket={root}/munge.socket", "CredType=cred/munge",
      "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
      "SchedulerType=sched/backfill", "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_Core", f"StateSaveLocation={root}/state",
      f"SlurmdSpoolDir={root}/spool", f"SlurmctldPidFile={root}/slurmctld.pid",
      f"SlurmdPidFile={root}/slurmd.pid", f"SlurmctldLogFile={root}/slurmctld.log",
      f"SlurmdLogFile={root}/slurmd.log", f"SlurmctldPort={_free_port()}",
      f"SlurmdPort={_free_port()}", "ReturnToService=2", "MpiDefault=none",
      "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
      f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
      "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
  return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
  """The environment (SLURM_CONF) of a running single-node Slurm; stopped afterwards."""
  missing = [d for d in DAEMONS if shutil.which(d) is None
             and not os.path.exists(f"/usr/sbin/{d}")]
  if missing:
    _unavailable(f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge)")
  if os.geteuid() != 0:
    _unavailable("slurmd must run as root")
  root = tmp_path_factory.mktemp("slurm")
  for sub in ("state", "spool"):
    (root / sub).mkdir()
  (root / "munge.key").write_bytes(os.urandom(1024))
  os.chmod(root / "munge.key", 0o600)
  host = socket.gethostname().split(".")[0]
  (root / "slurm.conf").write_text(_conf(root, host))
  env = dict(ENV, SLURM_CONF=str(root / "slurm.conf"),
             PATH=ENV.get("PATH", "") + ":/usr/sbin")
  started = []
  try:
    for argv in (["munged", "--force", f"--key-file={root}/munge.key",
                  f"--socket={root}/munge.socket", f"--pid-file={root}/munged.pid",
                  f"--log-file={root}/munged.log", f"--seed-file={root}/munge.seed"],
                 ["slurmctld"], ["slurmd"]):
      out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
      if out.returncode != 0:
        _unavailable(f"{argv[0]} did not start: {out.stderr.strip()[:500]}")
      started.append(argv[0])
    deadline = time.time() + 60
    state = ""
    while time.time() < deadline and state not in ("idle", "mixed", "allocated"):
      state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                             text=True).stdout.strip()
      time.sleep(0.5)
    if state not in ("idle", "mixed", "allocated"):
      log = (root / "slurmctld.log").read_text()[-1000:] if (root / "slurmctld.log").exists() else ""
      _unavailable(f"the node never became idle (state {state!r}); slurmctld.log: {log}")
    yield env
  finally:
    subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
    for name in ("slurmd", "slurmctld", "munged"):
      pid_file = root / f"{name}.pid"
      if pid_file.exists():
        try:
          os.kill(int(pid_file.read_text().split()[0]), 15)
        except (ProcessLookupError, ValueError):
          pass


def _launch(env, cwd, *args, timeout=300):
  return subprocess.run([os.path.join(REPO, "launch.sh"), *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _wait_for_queue(env, timeout=900):
  deadline = time.time() + timeout
  while time.time() < deadline:
    queue = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], env=env, capture_output=True,
                           text=True).stdout.strip()
    if not queue:
      return
    time.sleep(1)
  pytest.fail(f"Slurm jobs still queued after {timeout} s: {queue}")


@pytest.mark.slow
def test_a_planned_campaign_runs_as_dependent_job_arrays_and_resubmits_what_is_left(
    slurm, tmp_path):
  """teacher + 2 students: `pipeline --plan`, then `slurm`. The teacher's model module is
  missing at first, so its task fails and its dependants are cancelled (afterok) while the
  baseline runs; with the module back, `slurm` submits exactly what is left, the campaign
  completes, a third `slurm` submits nothing and the sequential pipeline finds every run
  finished (the jobs trained the pipeline's own runs)."""
  module = tmp_path / "my_models.py"
  shutil.copy(os.path.join(REPO, "tests", "user_model_module.py"), module)
  work = tmp_path / "campaign"
  args = ("--experiment=fashion_mnist:tiny", f"--workdir={work}",
          "--config.teacher.model=my_models:small_cnn")
  planned = _launch(slurm, tmp_path, "pipeline", *args, "--plan")
  assert planned.returncode == 0, planned.stderr[-2000:]
  plan = json.load(open(work / "plan.json"))
  assert [g["name"] for g in plan["groups"]] == ["teachers", "baseline", "students", "report"]
  assert {j["id"]: j["after"] for j in plan["jobs"]}["student_kd"] == ["teacher"]
  module.rename(tmp_path / "elsewhere.py")
  first = _launch(slurm, tmp_path, "slurm", f"--plan={work}", "--sbatch=--cpus-per-task=1")
  assert first.returncode == 0 and first.stdout.count("Slurm job") == 4, first.stdout
  _wait_for_queue(slurm)
  assert not (work / "teacher" / "results.json").exists()
  assert not (work / "student_kd").exists()  # cancelled, never started
  assert (work / "student_baseline" / "results.json").exists()
  logs = "".join(p.read_text() for p in (work / "slurm_logs").iterdir())
  assert "cannot import module 'my_models'" in logs  # the task's own error, in its log
  stamp = {"student_baseline": os.path.getmtime(work / "student_baseline" / "results.json")}
  (tmp_path / "elsewhere.py").rename(module)
  second = _launch(slurm, tmp_path, "slurm", f"--plan={work}")
  assert second.returncode == 0, second.stderr
  assert "baseline" not in second.stdout and second.stdout.count("Slurm job") == 3
  _wait_for_queue(slurm)
  logs = "\n".join(p.read_text()[-1500:] for p in sorted((work / "slurm_logs").iterdir()))
  assert (work / "results.md").exists(), logs
  assert json.load(open(work / "teacher" / "results.json"))["model"] == "my_models:small_cnn"
  teacher_done = os.path.getmtime(work / "teacher" / "results.json")
  assert os.path.getmtime(work / "student_kd" / "config.json") >= teacher_done  # afterok
  again = _launch(slurm, tmp_path, "slurm", f"--plan={work}")
  assert again.returncode == 0 and "nothing left to run" in again.stdout, again.stdout
  stamp.update({r: os.path.getmtime(work / r / "results.json") for r in ("teacher", "student_kd")})
  sequential = _launch(slurm, tmp_path, "pipeline", *args)
  assert sequential.returncode == 0, sequential.stderr[-2000:]
  assert sequential.stderr.count("already finished") == 3, sequential.stderr
  assert stamp == {r: os.path.getmtime(work / r / "results.json") for r in stamp}


@pytest.mark.slow
def test_multi_worker_inside_an_allocation_matches_two_local_replicas(slurm, tmp_path,
                                                                       teacher_file):
  common = ["distill", "--experiment=fashion_mnist:tiny", f"--config.teacher.path={teacher_file}",
            "--config.student.epochs=1"]
  env = dict(slurm, KD_VENV=os.path.join(REPO, ".venv"))
  workers = subprocess.run(
      ["srun", "-n", "2", "--kill-on-bad-exit=1", sys.executable, "-m", "kd_research.main",
       *common, f"--workdir={tmp_path}/slurm_mw", "--config.distribution.strategy=multi_worker",
       "--config.distribution.cluster=slurm",
       f"--config.distribution.slurm_port_base={_free_port()}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert workers.returncode == 0, workers.stderr[-3000:]
  local = subprocess.run(
      [sys.executable, "-m", "kd_research.main", *common, f"--workdir={tmp_path}/local",
       "--config.distribution.strategy=mirrored", "--config.distribution.num_cpu_devices=2"],
      cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
  assert local.returncode == 0, local.stderr[-3000:]
  diff = max(np.max(np.abs(a - b)) for a, b in zip(weights_of(f"{tmp_path}/slurm_mw"),
                                                   weights_of(f"{tmp_path}/local")))
  print(f"srun -n 2 workers vs 2 local replicas: max |dw| {diff:.2e}")
  assert diff < 1e-5
  assert json.load(open(f"{tmp_path}/slurm_mw/results.json"))["replicas"] == 2
