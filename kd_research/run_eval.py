"""The ``eval`` command: a finished run's saved model on the test split."""

import os

import keras

from kd_research import data
from kd_research import evaluate
from kd_research import io_utils
from kd_research import loop
from kd_research import train_step
from kd_research.errors import UserError


def evaluate_run(config, workdir, strategy):
  """Loads RUN/model.keras, evaluates it on every test example, writes RUN/eval.json."""
  path = os.path.join(workdir, "model.keras")
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no model.keras: it is not a finished run (train, distill or "
                    "a pipeline stage directory such as WORKDIR/student_kd).")
  splits = data.load_splits(config)
  with strategy.scope():
    model = keras.models.load_model(path, compile=False, safe_mode=True)
  eval_step = train_step.make_eval_step(strategy, model, splits.num_classes)
  result = evaluate.run_eval(strategy, eval_step, *splits.test,
                             loop.eval_batch_size(config, strategy), splits.num_classes)
  result["test_accuracy"], result["test_count"] = result["accuracy"], result["count"]
  result["ms_per_batch_128"] = evaluate.inference_ms_per_batch(model, splits.input_shape)
  io_utils.atomic_write_json(os.path.join(workdir, "eval.json"), result)
  return result
