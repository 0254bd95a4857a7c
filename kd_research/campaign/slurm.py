"""Submits a campaign plan (plan.py) to Slurm: one job array per group, chained with
``--dependency=afterok``.

    ./launch.sh pipeline --experiment=... --workdir=runs/c --plan     # writes runs/c/plan.json
    ./launch.sh slurm --plan=runs/c [--sbatch="--partition=gpu --gres=gpu:1 --time=4:00:00"]

Each array task runs ``python -m kd_research.main job --plan=P --group=G --task=N`` (one
run directory per task). Finished jobs are left out of the arrays and a group with none
left is not submitted (its dependants then do not wait for it), so running ``slurm``
again after a failure or a stopped allocation submits exactly what is left; interrupted
runs resume from their checkpoints. A group's array waits for every task of the arrays
of the groups it depends on. Logs: WORKDIR/slurm_logs/GROUP-JOBID_TASK.out.

A multi-worker run inside one allocation needs no plan: ``srun -n 2 ./launch.sh distill
... --config.distribution.strategy=multi_worker --config.distribution.cluster=slurm``
(TensorFlow's SlurmClusterResolver reads the step's tasks and nodes).
"""

import os
import shlex
import shutil
import subprocess
import sys

from kd_research.campaign import plan as plan_lib
from kd_research.common.errors import UserError


def sbatch_commands(plan, plan_path, sbatch_args=(), python=sys.executable):
  """[(group, [task indices], sbatch argv without the dependency)] of what is left to run."""
  by_id = {j["id"]: j for j in plan["jobs"]}
  logs = os.path.join(plan["workdir"], "slurm_logs")
  out = []
  for group in plan["groups"]:
    tasks = [i for i, job_id in enumerate(group["jobs"]) if not plan_lib.finished(by_id[job_id])]
    if not tasks:
      continue
    wrap = (f"{shlex.quote(python)} -m kd_research.main job --plan={shlex.quote(plan_path)} "
            f"--group={group['name']} --task=$SLURM_ARRAY_TASK_ID")
    argv = ["sbatch", "--parsable", f"--job-name=kd-{group['name']}",
            f"--array={','.join(map(str, tasks))}",
            f"--output={os.path.join(logs, group['name'] + '-%A_%a.out')}",
            *sbatch_args, "--wrap", wrap]
    out.append((group, tasks, argv))
  return out


def submit(plan_path, sbatch_args=(), python=sys.executable):
  """Submits what is left of the plan; returns [(group name, Slurm job id, tasks)]."""
  if shutil.which("sbatch") is None:
    raise UserError("sbatch is not on PATH: submit from a Slurm login node (or run the "
                    "campaign here with `pipeline`, which runs the same jobs in order).")
  plan = plan_lib.read_plan(plan_path)
  plan_path = os.path.abspath(plan_path if plan_path.endswith(".json")
                              else os.path.join(plan_path, plan_lib.PLAN_FILE))
  os.makedirs(os.path.join(plan["workdir"], "slurm_logs"), exist_ok=True)
  submitted, out = {}, []
  for group, tasks, argv in sbatch_commands(plan, plan_path, sbatch_args, python):
    waits = [submitted[g] for g in group["after"] if g in submitted]
    if waits:
      argv = argv[:2] + [f"--dependency=afterok:{':'.join(waits)}", "--kill-on-invalid-dep=yes"
                         ] + argv[2:]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise UserError(f"sbatch refused group {group['name']}: {result.stderr.strip()} "
                      f"(command: {shlex.join(argv)}). Groups submitted before it: "
                      f"{', '.join(submitted) or 'none'}.")
    submitted[group["name"]] = result.stdout.strip().split(";")[0]
    out.append((group["name"], submitted[group["name"]], tasks))
  return out
