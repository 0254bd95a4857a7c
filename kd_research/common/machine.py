"""What a result was measured on: CPU model, cores, accelerators, library versions.

Recorded in every run's results.json so that reports can say which machine produced
each number (timings are meaningless without it).
"""

import functools
import os
import platform


def _cpu_model():
  """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def describe():
  """{'cpu', 'logical_cores', 'gpus', 'tensorflow', 'keras', 'python'} of this process."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
  return {"cpu": _cpu_model(), "logical_cores": os.cpu_count(), "gpus": gpus,
          "tensorflow": tf.__version__, "keras": keras.__version__,
          "python": platform.python_version()}


def summary(info):
  """One line: 'AMD EPYC ... (2 cores), no GPU, TF 2.21.0, Keras 3.15.1, Python 3.11.2'."""
  gpus = f"{len(info['gpus'])} GPU(s)" if info.get("gpus") else "no GPU"
  return (f"{info['cpu']} ({info['logical_cores']} logical cores), {gpus}, "
          f"TF {info['tensorflow']}, Keras {info['keras']}, Python {info['python']}")
