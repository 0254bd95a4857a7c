"""Strategy factory: default | mirrored | multi_worker | auto, and chief/worker helpers.

The strategy must exist before any other TF op runs (logical CPU devices and
collective ops are fixed at runtime start-up), so ``make_strategy`` is the first
thing a run does.
"""

import json
import os
import shutil
import sys
import subprocess

import tensorflow as tf

from kd_research.common.errors import UserError

CROSS_DEVICE_OPS = ("auto", "nccl", "hierarchical_copy", "reduce_to_one")


def _cross_device_ops(name):
  if name == "auto":
    return None
  if name == "nccl":
    return tf.distribute.NcclAllReduce()
  if name == "hierarchical_copy":
    return tf.distribute.HierarchicalCopyAllReduce()
  if name == "reduce_to_one":
    return tf.distribute.ReductionToOneDevice()
  raise UserError(f"config.distribution.cross_device_ops={name!r}; valid: {', '.join(CROSS_DEVICE_OPS)}.")


def _logical_cpus(n):
  """Splits the physical CPU into ``n`` logical devices (must run before TF initialises)."""
  if n < 1:
    raise UserError(f"config.distribution.num_cpu_devices must be >= 1, got {n}.")
  cpu = tf.config.list_physical_devices("CPU")[0]
  configured = tf.config.get_logical_device_configuration(cpu) or []
  if len(configured) < n:
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:
      pass  # Already initialised (e.g. a second run in one process); check what we have.
  have = len(tf.config.list_logical_devices("CPU"))
  if have < n:
    raise UserError(f"config.distribution.num_cpu_devices={n}, but TensorFlow was already initialised with "
                    f"{have} CPU device(s) in this process; start a new process.")
  # With more logical devices than asked for (e.g. a test process), use the first n.
  return [f"/cpu:{i}" for i in range(n)]


def parse_tf_config():
  """Reads and checks $TF_CONFIG; returns the parsed dict (UserError when malformed)."""
  raw = os.environ.get("TF_CONFIG", "")
  if not raw:
    raise UserError("config.distribution.strategy=multi_worker needs a cluster: set TF_CONFIG (see BUILD.md), "
                    "use --config.distribution.cluster=slurm inside a Slurm job, or "
                    "./launch.sh multiworker --num_workers=N for a local test.")
  try:
    tf_config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise UserError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]!r}.")
  cluster, task = tf_config.get("cluster"), tf_config.get("task")
  if not isinstance(cluster, dict) or not cluster.get("worker") and not cluster.get("chief"):
    raise UserError('TF_CONFIG needs "cluster": {"worker": ["host:port", ...]}, got '
                    f"{raw[:200]!r}.")
  if not isinstance(task, dict) or task.get("type") not in cluster:
    raise UserError(f'TF_CONFIG "task" must name a job of the cluster ({", ".join(cluster)}), '
                    f"got {task!r}.")
  index = task.get("index", 0)
  if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
    raise UserError(f'TF_CONFIG task index {index!r} is outside job "{task["type"]}" with '
                    f"{len(cluster[task['type']])} task(s).")
  return tf_config


_WATCHDOG_SCRIPT = """
import os, signal, sys, time
pid, seconds, message = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
deadline = time.time() + seconds
while time.time() < deadline:
  time.sleep(0.2)
  try:
    os.kill(pid, 0)
  except OSError:
    sys.exit(0)
sys.stderr.write(message)
sys.stderr.flush()
os.kill(pid, signal.SIGKILL)
"""


class _Watchdog:
  """Kills this process with a clear message if its block takes longer than ``seconds``.

  A separate process, because the blocking call holds the GIL: no Python thread or
  signal handler of this process would run while it hangs.
  """

  def __init__(self, seconds, cluster):
    self._message = (
        f"error: could not connect to every worker of the cluster {cluster} within "
        f"{seconds:.0f} s (config.distribution.collective_timeout_seconds). Start all workers with the "
        "same TF_CONFIG cluster, check hosts and ports, or raise the timeout.\n")
    self._seconds = seconds
    self._proc = None

  def __enter__(self):
    self._proc = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG_SCRIPT, str(os.getpid()), str(self._seconds),
         self._message])
    return self

  def __exit__(self, *exc):
    self._proc.kill()
    self._proc.wait()


def _slurm_resolver(port_base):
  """TensorFlow's resolver for the Slurm step this process is a task of.

  With GPUs (nvidia-smi present) it counts them and gives each task its share through
  CUDA_VISIBLE_DEVICES. Without, TF 2.21's resolver divides by zero GPUs per task
  (``range(0, 0, 0)``): CPU workers get one nominal device slot per task instead, with
  CUDA_VISIBLE_DEVICES left alone.
  """
  resolver_class = tf.distribute.cluster_resolver.SlurmClusterResolver
  if shutil.which("nvidia-smi"):
    return resolver_class(port_base=port_base)
  return resolver_class(port_base=port_base, gpus_per_node=1 << 16, gpus_per_task=1,
                        auto_set_gpu=False)


def make_strategy(dist):
  """Builds the tf.distribute strategy of ``config.distribution`` (``dist``)."""
  name = dist.strategy
  if name == "auto":
    name = "mirrored" if len(tf.config.list_physical_devices("GPU")) > 1 else "default"
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_physical_devices("GPU")
    devices = ([f"/gpu:{i}" for i in range(len(gpus))] if gpus
               else _logical_cpus(dist.num_cpu_devices))
    return tf.distribute.MirroredStrategy(
        devices=devices, cross_device_ops=_cross_device_ops(dist.cross_device_ops))
  if name == "multi_worker":
    if dist.cluster == "slurm":
      resolver = _slurm_resolver(dist.get("slurm_port_base", 8888))
    elif dist.cluster == "tf_config":
      parse_tf_config()
      resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    else:
      raise UserError(f"config.distribution.cluster={dist.cluster!r}; valid: tf_config, slurm.")
    options = tf.distribute.experimental.CommunicationOptions(
        timeout_seconds=dist.collective_timeout_seconds)
    # The constructor blocks until every worker is up; a peer that never comes would hang
    # it forever, and the blocking C++ call cannot be interrupted: a watchdog exits instead.
    with _Watchdog(dist.collective_timeout_seconds, resolver.cluster_spec().as_dict()):
      return tf.distribute.MultiWorkerMirroredStrategy(
          cluster_resolver=resolver, communication_options=options)
  raise UserError(f"config.distribution.strategy={dist.strategy!r}; valid: default, mirrored, "
                  "multi_worker, auto.")


def is_multi_worker(strategy):
  """True when ``strategy`` spans worker processes (a cluster in TF_CONFIG)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  return resolver is not None and bool(resolver.cluster_spec().as_dict())


def num_workers(strategy):
  """Worker processes of ``strategy`` (chief included): the input pipelines of a run."""
  if not is_multi_worker(strategy):
    return 1
  spec = strategy.cluster_resolver.cluster_spec().as_dict()
  return len(spec.get("worker", ())) + len(spec.get("chief", ()))


def is_chief(strategy):
  """True on the process that writes checkpoints, summaries and results."""
  if not is_multi_worker(strategy):
    return True
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                  "chief" not in resolver.cluster_spec().as_dict())
