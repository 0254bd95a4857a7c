"""Where the time goes: TF profiler trace of a callable, summarised per op type.

    table = profiling.op_time_table(profiling.trace(fn, logdir))

The trace (logdir/plugins/profile/<run>/*.xplane.pb) also opens in TensorBoard's
profile plugin when it is installed; this module needs nothing beyond TensorFlow: it
reads the XSpace protobuf and sums the durations of op events ("name:OpType") on the
executor threads by op type.
"""

import collections
import glob
import os


def trace(fn, logdir):
  """Runs ``fn()`` under the TF profiler; returns the written .xplane.pb path."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.profiler.experimental.start(logdir)
  try:
    fn()
  finally:
    tf.profiler.experimental.stop()
  paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    raise RuntimeError(f"The TF profiler wrote no .xplane.pb below {logdir}.")
  return max(paths, key=os.path.getmtime)


def op_times(xplane_path):
  """{op type: seconds} summed over the op events of every host executor thread."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  space = xplane_pb2.XSpace()
  with open(xplane_path, "rb") as f:
    space.ParseFromString(f.read())
  totals = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      if not line.name.startswith("tf_Compute"):
        continue
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        # Op events are "op_name:OpType"; executor bookkeeping is "Class::Method" or bare.
        if ":" in name and "::" not in name:
          totals[name.rsplit(":", 1)[1]] += event.duration_ps * 1e-12
  return dict(totals)


def op_time_table(xplane_path, top=12):
  """Markdown: op type | seconds | share of op time, the ``top`` largest first."""
  times = op_times(xplane_path)
  total = sum(times.values()) or 1.0
  lines = ["| op type | seconds | share of op time |", "|---|---|---|"]
  ranked = sorted(times.items(), key=lambda kv: -kv[1])
  for name, seconds in ranked[:top]:
    lines.append(f"| {name} | {seconds:.3f} | {100 * seconds / total:.1f}% |")
  rest = sum(s for _, s in ranked[top:])
  if rest:
    lines.append(f"| (other {len(ranked) - top} op types) | {rest:.3f} | {100 * rest / total:.1f}% |")
  return "\n".join(lines) + "\n"
