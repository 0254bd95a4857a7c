"""Evaluation passes, inference latency, and the seed-style results table."""

import time

import numpy as np
import tensorflow as tf

from kd_research import data
from kd_research import train_step


def run_eval(strategy, eval_step, images, labels, global_batch_size):
  """One pass over every example exactly once; returns accuracy, loss and teacher metrics."""
  dataset = strategy.distribute_datasets_from_function(
      data.eval_dataset_fn(images, labels, global_batch_size))
  sums = np.zeros(len(train_step.EVAL_SUMS), np.float64)
  for batch in dataset:
    sums += eval_step(batch).numpy()
  totals = dict(zip(train_step.EVAL_SUMS, sums))
  count = totals["count"]
  return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count,
          "count": int(round(count)), "teacher_accuracy": totals["teacher_correct"] / count,
          "agreement": totals["agreement"] / count, "kl": totals["kl"] / count}


def inference_ms_per_batch(model, input_shape, batch_size=128, repeats=20, warmup=3):
  """Median wall time (ms) of one inference-mode forward pass on a batch, after warm-up."""
  images = tf.random.uniform((batch_size,) + tuple(input_shape), 0, 255, seed=0)
  forward = tf.function(lambda x: model(x, training=False))
  for _ in range(warmup):
    forward(images).numpy()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(images).numpy()
    times.append(time.perf_counter() - start)
  return 1000.0 * float(np.median(times))


def results_table(rows, reference_accuracy=None):
  """Markdown table: model | params | test accuracy | share of teacher | ms/batch | train time."""
  lines = ["| model | params | test accuracy | share of teacher | ms/batch (128) | train time |",
           "|---|---|---|---|---|---|"]
  for row in rows:
    share = (f"{100 * row['test_accuracy'] / reference_accuracy:.1f}%"
             if reference_accuracy else "-")
    lines.append(f"| {row['label']} | {row['params']:,} | {100 * row['test_accuracy']:.2f}% | "
                 f"{share} | {row['ms_per_batch_128']:.1f} | {row['train_seconds']:.0f} s |")
  return "\n".join(lines) + "\n"
