"""Local multi-worker runs: N worker processes on 127.0.0.1, each with its TF_CONFIG.

    ./launch.sh multiworker --num_workers=2 distill --experiment=... --workdir=...

(main.py parses the flags and calls ``launch``.)

For testing and demos of MultiWorkerMirroredStrategy on one machine. Each worker
runs ``python -m kd_research.main COMMAND FLAGS --config.distribution.strategy=multi_worker``;
worker 0 is the chief and writes the results, the others' logs go to temporary
files that are printed if they fail. If any worker fails, the rest are stopped
and the exit code is non-zero. On a real cluster, start one ``./launch.sh
COMMAND`` per host with its own TF_CONFIG instead (BUILD.md).
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def free_ports(n):
  """n distinct free TCP ports on 127.0.0.1."""
  sockets = []
  for _ in range(n):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    sockets.append(s)
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def tf_configs(n):
  """TF_CONFIG JSON strings for n local workers."""
  workers = [f"127.0.0.1:{p}" for p in free_ports(n)]
  return [json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})
          for i in range(n)]


def launch(num_workers, args, timeout=None):
  """Runs the workers to completion; returns the exit code (0 when all succeeded)."""
  procs, logs = [], []
  for index, tf_config in enumerate(tf_configs(num_workers)):
    env = dict(os.environ, TF_CONFIG=tf_config)
    cmd = [sys.executable, "-m", "kd_research.main", *args, "--config.distribution.strategy=multi_worker"]
    if index == 0:
      procs.append(subprocess.Popen(cmd, env=env))
      logs.append(None)
    else:
      log = tempfile.NamedTemporaryFile("w+", prefix=f"kd_worker{index}_", suffix=".log",
                                        delete=False)
      procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
      logs.append(log)
  deadline = time.time() + timeout if timeout else None
  failed = None
  while any(p.poll() is None for p in procs):
    for index, p in enumerate(procs):
      if p.poll() not in (None, 0) and failed is None:
        failed = index
    if failed is not None or (deadline and time.time() > deadline):
      break
    time.sleep(0.2)
  for p in procs:
    if p.poll() is None:
      p.terminate()
  for p in procs:
    try:
      p.wait(timeout=10)
    except subprocess.TimeoutExpired:
      p.kill()
  codes = [p.returncode for p in procs]
  for index, log in enumerate(logs):
    if log is not None:
      log.close()
      if codes[index] != 0:
        sys.stderr.write(f"--- worker {index} (exit {codes[index]}) log tail ---\n")
        sys.stderr.write(open(log.name).read()[-3000:])
      os.remove(log.name)
  if deadline and time.time() > deadline and any(c != 0 for c in codes):
    sys.stderr.write(f"error: multi-worker run exceeded {timeout} s; workers stopped.\n")
  return next((c for c in codes if c != 0), 0) if any(c != 0 for c in codes) else 0
