"""SIGTERM as a request to checkpoint and stop, agreed by every worker.

Slurm, Kubernetes and spot VMs send SIGTERM some seconds before they kill a job. The
handler only records the request; the driver asks ``requested()`` at each loop
boundary, saves a checkpoint and stops with ``errors.PREEMPTED_EXIT_STATUS``, so that
rerunning the same command resumes exactly. Under MultiWorkerMirroredStrategy the
workers may receive the signal at different times; ``requested()`` all-reduces the
flag so that every worker stops (and saves, a collective) at the same step.
"""

import signal
import threading

from absl import logging
import tensorflow as tf


class Guard:
  """Context manager: while active, SIGTERM sets a flag instead of ending the process."""

  def __init__(self, strategy):
    self._strategy = strategy
    self._flag = False
    self._previous = None
    self._multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)

  def _handle(self, signum, frame):
    del frame
    logging.warning("Received signal %d: saving a checkpoint at the next loop boundary, then "
                    "stopping.", signum)
    self._flag = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self):
    """True when any worker received SIGTERM (the same answer on every worker)."""
    if not self._multi_worker:
      return self._flag
    flag = float(self._flag)
    per_replica = self._strategy.run(lambda: tf.constant(flag))
    total = self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return float(total.numpy()) > 0
