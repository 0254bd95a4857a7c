"""Numeric precision of a run: fixed (none | bf16 | fp16) or chosen from the hardware (auto).

Mixed bfloat16 pays only where the matrix units implement it: Xeons with AMX run the
distillation loop 2-3x faster than in float32, while AVX2-only CPUs emulate bf16 and run
about 6.5x slower. AVX512_BF16 alone (no AMX) is not enough: on such a Xeon (TF 2.21,
``./launch.sh bench --quick``) the bf16 matmul peak was 141 GFLOP/s against 270 in
float32 and the live-teacher loop ran at 0.58x. NVIDIA GPUs have native bf16 from
compute capability 8.0 (Ampere). ``auto`` picks bf16 exactly there and says why.
The default stays ``none`` (float32) so that the same command gives comparable
numbers on every machine: ``auto`` trades that comparability for speed.
"""

import dataclasses

import keras

from kd_research.common.errors import UserError

PRECISIONS = ("none", "bf16", "fp16", "auto")
KERAS_POLICY = {"none": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# CPU flags (as in /proc/cpuinfo) that mean bf16 matrix units faster than float32.
NATIVE_BF16_CPU_FLAGS = ("amx_bf16",)
AMPERE_COMPUTE_CAPABILITY = (8, 0)


@dataclasses.dataclass(frozen=True)
class Choice:
  """The precision a run uses, what was asked for, and why (logged, kept in results.json)."""
  requested: str
  used: str
  reason: str

  def as_dict(self):
    return dataclasses.asdict(self)


def cpu_flags(cpuinfo_path="/proc/cpuinfo"):
  """The set of CPU feature flags of this machine (empty where /proc/cpuinfo is missing)."""
  try:
    with open(cpuinfo_path) as f:
      for line in f:
        if line.startswith("flags"):
          return set(line.split(":", 1)[1].split())
  except OSError:
    pass
  return set()


def gpu_compute_capabilities():
  """[(major, minor)] of the visible GPUs (empty without GPUs)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = []
  for gpu in tf.config.list_physical_devices("GPU"):
    capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    out.append(tuple(capability) if capability else (0, 0))
  return out


def choose(requested, flags=None, gpus=None):
  """Resolves ``requested`` (a PRECISIONS value) to the precision to run with.

  Args:
    requested: none | bf16 | fp16 | auto.
    flags: CPU feature flags (default: this machine's); tests pass fakes.
    gpus: GPU compute capabilities (default: this machine's); tests pass fakes.
  """
  if requested not in PRECISIONS:
    raise UserError(f"config.mixed_precision={requested!r}; valid: {', '.join(PRECISIONS)}.")
  if requested != "auto":
    return Choice(requested, requested, "set explicitly by config.mixed_precision")
  gpus = gpu_compute_capabilities() if gpus is None else list(gpus)
  if gpus:
    if all(tuple(c) >= AMPERE_COMPUTE_CAPABILITY for c in gpus):
      return Choice("auto", "bf16", f"every GPU has native bf16 (compute capability "
                    f"{min(gpus)[0]}.{min(gpus)[1]} >= 8.0)")
    return Choice("auto", "none", f"a GPU without native bf16 (compute capability "
                  f"{min(gpus)[0]}.{min(gpus)[1]} < 8.0): float32")
  flags = cpu_flags() if flags is None else set(flags)
  native = [f for f in NATIVE_BF16_CPU_FLAGS if f in flags]
  if native:
    return Choice("auto", "bf16", f"the CPU has bf16 matrix units ({', '.join(native)})")
  if "avx512_bf16" in flags:
    return Choice("auto", "none", "the CPU has avx512_bf16 but no AMX: bf16 measured about 2x "
                  "slower than float32 on such CPUs; float32")
  return Choice("auto", "none", "the CPU has no native bf16 (no amx_bf16): emulated bf16 "
                "would be several times slower; float32")


def set_policy(used):
  """Sets Keras' global dtype policy for a resolved precision (none | bf16 | fp16)."""
  keras.mixed_precision.set_global_policy(KERAS_POLICY[used])
