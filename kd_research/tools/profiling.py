"""Where the time goes: TF profiler trace of a callable, summarised per op type.

    families = profiling.family_times(profiling.op_times(profiling.trace(fn, logdir)))
    table = report.tables.op_time_table(families)

The trace (logdir/plugins/profile/<run>/*.xplane.pb) also opens in TensorBoard's
profile plugin when it is installed; this module needs nothing beyond TensorFlow: it
reads the XSpace protobuf and sums the durations of op events ("name:OpType") on the
executor threads by op family.

The kernel that runs an op depends on the CPU: oneDNN rewrites MatMul into
``_MklNativeFusedMatMul`` on AVX-512 machines and into ``_FusedMatMul`` elsewhere, and
Softmax into ``_MklSoftmax``. Tables group kernels by the op they implement (their
family), so the same model gives comparable tables on every machine, and list the
kernels that ran.
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


def op_family(op_type):
  """The op a kernel implements: '_MklNativeFusedMatMul' -> 'MatMul', '_MklSoftmax' -> 'Softmax'.

  Only TF-internal rewrites (names starting with '_') are renamed; public op types
  such as FusedBatchNormV3 stay as they are.
  """
  if not op_type.startswith("_"):
    return op_type
  name = op_type.lstrip("_")
  for prefix in ("Mkl", "Native"):
    if name.startswith(prefix):
      name = name[len(prefix):]
  if name.startswith("Fused") and not name.startswith("FusedBatchNorm"):
    name = name[len("Fused"):]
  return name or op_type


def family_times(times):
  """{family: (seconds, sorted kernel names)} from {op type: seconds}."""
  seconds, kernels = collections.Counter(), collections.defaultdict(set)
  for op_type, value in times.items():
    family = op_family(op_type)
    seconds[family] += value
    kernels[family].add(op_type)
  return {f: (seconds[f], sorted(kernels[f])) for f in seconds}
