"""Exports a finished run's model for serving and edge devices, and verifies every artifact.

    ./launch.sh export --workdir=RUN [--experiment=...]

Writes RUN/export/: saved_model/ (signature ``serving_default``: raw uint8 images ->
class probabilities), model_float32.tflite, model_int8.tflite (full-integer
post-training quantisation calibrated on training images; uint8 in, uint8 out) and
model_float16.tflite. Each artifact is run over the whole test split through its own
runtime (tf.saved_model.load; the LiteRT interpreter from the ai-edge-litert package,
or TensorFlow's deprecated tf.lite.Interpreter where LiteRT is not installed);
export_report.json records test accuracy, file size, batch-1 latency and top-1
agreement with the Keras model, and which TFLite runtime verified them.
"""

import os
import shutil
import tempfile

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from kd_research.common import console
from kd_research.data import datasets
from kd_research.data import splits as splits_lib
from kd_research.models import registry as model_registry
from kd_research.common import timing
from kd_research.common import fileio
from kd_research.train import results as results_lib
from kd_research.train import workdir as workdir_lib
from kd_research.common.errors import UserError


def _serving_module(model, input_shape):
  """A tf.Module whose ``serve`` takes uint8 images and returns float32 probabilities."""
  module = tf.Module()
  module.model = model

  @tf.function(input_signature=[tf.TensorSpec([None, *input_shape], tf.uint8, name="images")])
  def serve(images):
    return {"probabilities": tf.nn.softmax(
        tf.cast(module.model(tf.cast(images, tf.float32), training=False), tf.float32))}

  module.serve = serve
  return module


def convert_tflite(model, input_shape, mode, calibration_images=None):
  """TFLite bytes: mode 'float32', 'float16' or 'int8' (full integer, uint8 in/out)."""
  # Via a SavedModel: the converter then freezes the variables (from a concrete function
  # the int8 calibrator fails on READ_VARIABLE nodes).
  tmp = tempfile.mkdtemp(prefix="kd_tflite_")
  try:
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", lambda x: tf.nn.softmax(
        tf.cast(model(x, training=False), tf.float32)),
        input_signature=[tf.TensorSpec([1, *input_shape], tf.float32)])
    archive.write_out(tmp, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    return _configure_and_convert(converter, mode, calibration_images)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _configure_and_convert(converter, mode, calibration_images):
  if mode == "float16":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif mode == "int8":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8

    def representative():
      for image in calibration_images:
        yield [image[None].astype(np.float32)]

    converter.representative_dataset = representative
  with console.native_output_captured(console.quiet()):  # The converter's settings dump.
    return converter.convert()


def tflite_interpreter():
  """(Interpreter class, runtime name): LiteRT's, or tf.lite's with a one-line notice.

  tf.lite.Interpreter is deprecated in favour of LiteRT (pip: ai-edge-litert), which
  setup installs where PyPI has a wheel for the platform.
  """
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
    return Interpreter, "ai_edge_litert"
  except ImportError as e:
    logging.warning("LiteRT is not installed (%s); verifying TFLite files with the deprecated "
                    "tf.lite.Interpreter instead (pip install ai-edge-litert to switch).", e)
    return tf.lite.Interpreter, "tf.lite"


class TFLiteRunner:
  """Runs a TFLite model on uint8 images (quantising float inputs when needed)."""

  def __init__(self, path, interpreter_class=None):
    interpreter_class = interpreter_class or tflite_interpreter()[0]
    with console.native_output_captured(console.quiet()):  # "Created ... XNNPACK delegate".
      self.interpreter = interpreter_class(model_path=path, num_threads=2)
    self._batch = None

  def __call__(self, images):
    interp = self.interpreter
    inp = interp.get_input_details()[0]
    if self._batch != len(images):
      interp.resize_tensor_input(inp["index"], [len(images), *images.shape[1:]])
      with console.native_output_captured(console.quiet()):  # The delegate's INFO line.
        interp.allocate_tensors()
      self._batch = len(images)
      inp = interp.get_input_details()[0]
    if inp["dtype"] == np.uint8:
      scale, zero = inp["quantization"]
      x = np.clip(np.round(images / scale + zero), 0, 255).astype(np.uint8) if scale else images
    else:
      x = images.astype(inp["dtype"])
    interp.set_tensor(inp["index"], x)
    interp.invoke()
    out = interp.get_output_details()[0]
    y = interp.get_tensor(out["index"])
    if out["dtype"] != np.float32:
      scale, zero = out["quantization"]
      y = (y.astype(np.float32) - zero) * scale
    return y


def _predict(fn, images, batch):
  return np.concatenate([fn(images[i:i + batch]) for i in range(0, len(images), batch)])


def _latency_ms(fn, image, repeats=50, warmup=5):
  return 1000 * timing.median_seconds(lambda: fn(image), repeats, warmup)


def _size(path):
  if os.path.isdir(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
  return os.path.getsize(path)


def export_run(workdir, splits, calibration=300, test_limit=10000):
  """Exports RUN/model.keras into RUN/export and returns the verification report (on the
  test split; a streamed one is read into memory up to ``test_limit`` examples)."""
  if not results_lib.exists(workdir):
    raise UserError(f"{workdir} is not a finished run (no results.json); finish it first.")
  model_path = os.path.join(workdir, "model.keras")
  if not os.path.exists(model_path):
    raise UserError(f"{workdir} has no model.keras to export.")
  export_dir = os.path.join(workdir, "export")
  fileio.check_writable(export_dir)
  workdir_lib.import_user_modules(workdir)
  model = model_registry.load_keras(model_path)
  shape = tuple(splits.input_shape)
  test = datasets.in_memory(splits.test, test_limit)
  images, labels = test.images, test.labels
  reference = _predict(lambda x: model(x.astype(np.float32), training=False).numpy(), images,
                       500).argmax(1)
  artifacts = {}
  saved_dir = os.path.join(export_dir, "saved_model")
  fileio.atomic_save_dir(saved_dir, lambda d: tf.saved_model.save(
      _serving_module(model, shape), d,
      signatures={"serving_default": _serving_module(model, shape).serve}))
  # Keep a reference to the loaded object: calling .serve on a temporary raises
  # "referencing variables which have been deleted".
  loaded = tf.saved_model.load(saved_dir)
  serve = loaded.signatures["serving_default"]
  artifacts["saved_model"] = (saved_dir,
                              lambda x: serve(images=tf.constant(x))["probabilities"].numpy())
  interpreter_class, runtime = tflite_interpreter()
  calib = datasets.in_memory(splits.train, 0 if isinstance(
      splits.train, splits_lib.ArraySplit) else calibration).images
  calib = calib[np.random.default_rng(0).permutation(len(calib))[:calibration]]
  for mode in ("float32", "float16", "int8"):
    path = os.path.join(export_dir, f"model_{mode}.tflite")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(convert_tflite(model, shape, mode, calib))
    os.replace(tmp, path)
    artifacts[f"tflite_{mode}"] = (path, TFLiteRunner(path, interpreter_class))
  report = {"workdir": os.path.abspath(workdir), "test_examples": int(len(labels)),
            "tflite_runtime": runtime,
            "keras_test_accuracy": float((reference == labels).mean()), "artifacts": {}}
  for name, (path, fn) in artifacts.items():
    # TFLite models are converted for batch 1 (edge serving): run them one image at a time.
    predicted = _predict(fn, images, 100 if name == "saved_model" else 1).argmax(1)
    report["artifacts"][name] = {
        "path": os.path.relpath(path, workdir), "size_kb": _size(path) / 1024,
        "test_accuracy": float((predicted == labels).mean()),
        "agreement_with_keras": float((predicted == reference).mean()),
        "latency_ms_batch1": _latency_ms(fn, images[:1])}
  fileio.atomic_write_json(os.path.join(export_dir, "export_report.json"), report)
  return report
