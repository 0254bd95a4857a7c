"""Evaluation passes, inference latency, and the seed-style results table."""

import time

import numpy as np
import tensorflow as tf

from kd_research import data
from kd_research import train_step


def run_eval(strategy, eval_step, images, labels, global_batch_size, num_classes):
  """One pass over every example exactly once; returns accuracy, loss, ECE, teacher metrics."""
  dataset = strategy.distribute_datasets_from_function(
      data.eval_dataset_fn(images, labels, global_batch_size))
  sums = None
  for batch in dataset:
    out = eval_step(batch).numpy().astype(np.float64)
    sums = out if sums is None else sums + out
  return summarize_eval(sums, num_classes)


def summarize_eval(sums, num_classes):
  """Turns an eval step's summed vector into named metrics."""
  n = len(train_step.EVAL_SUMS)
  bins = train_step.ECE_BINS
  totals = dict(zip(train_step.EVAL_SUMS, sums[:n]))
  count = totals["count"]
  student_bins = sums[n:n + 3 * bins].reshape(3, bins)
  teacher_bins = sums[n + 3 * bins:n + 6 * bins].reshape(3, bins)
  confusion = sums[n + 6 * bins:].reshape(num_classes, num_classes)
  return {"accuracy": totals["correct"] / count, "loss": totals["loss"] / count,
          "count": int(round(count)), "teacher_accuracy": totals["teacher_correct"] / count,
          "agreement": totals["agreement"] / count, "kl": totals["kl"] / count,
          "teacher_entropy": totals["teacher_entropy"] / count,
          "teacher_stability": totals["teacher_stable"] / count,
          "ece": _ece_from_bins(student_bins, count),
          "teacher_ece": _ece_from_bins(teacher_bins, count),
          "confusion": confusion.round().astype(int).tolist()}


def _ece_from_bins(bins, count):
  """ECE from per-bin (count, sum confidence, sum correct)."""
  n, conf, correct = bins
  return float(np.sum(np.abs(correct - conf)) / max(count, 1.0))


def expected_calibration_error(probs, labels, bins=15):
  """ECE: sum over confidence bins of |accuracy - confidence| weighted by the bin's share."""
  confidence = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  edges = np.linspace(0.0, 1.0, bins + 1)
  index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
  ece = 0.0
  for b in range(bins):
    in_bin = index == b
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  return float(ece)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def teacher_report(ensemble, splits, weights=None):
  """Each teacher's and the ensemble's accuracy and ECE on validation and test, and agreement.

  The ensemble averages the teachers' probabilities at T = 1 with the configured
  weights (uniform by default). Returns a JSON-ready dict.
  """
  from kd_research import losses  # pylint: disable=g-import-not-at-top
  from kd_research import teacher_cache  # pylint: disable=g-import-not-at-top
  w = np.asarray(losses.normalise_weights(weights, len(ensemble)))
  report = {"names": list(ensemble.names), "weights": w.tolist()}
  for split in ("validation", "test"):
    images, labels = getattr(splits, split)
    logits = teacher_cache.compute_logits(ensemble, images)  # [N, K, C]
    probs = _softmax(logits.astype(np.float64))
    predictions = probs.argmax(-1)
    ensemble_probs = np.einsum("k,nkc->nc", w, probs)
    report[split] = {
        "accuracy": [float((predictions[:, k] == labels).mean()) for k in range(len(ensemble))],
        "ece": [expected_calibration_error(probs[:, k], labels) for k in range(len(ensemble))],
        "ensemble_accuracy": float((ensemble_probs.argmax(-1) == labels).mean()),
        "ensemble_ece": expected_calibration_error(ensemble_probs, labels),
        "pairwise_agreement": [[float((predictions[:, i] == predictions[:, j]).mean())
                                for j in range(len(ensemble))] for i in range(len(ensemble))],
    }
  return report


def teacher_scalars(report):
  """TensorBoard scalars teacher/<k>/..., teacher/ensemble/..., teacher/agreement/<i>_<j>."""
  out = {}
  v = report["validation"]
  for k in range(len(report["names"])):
    out[f"teacher/{k}/validation_accuracy"] = v["accuracy"][k]
    out[f"teacher/{k}/validation_ece"] = v["ece"][k]
    for j in range(k + 1, len(report["names"])):
      out[f"teacher/agreement/{k}_{j}"] = v["pairwise_agreement"][k][j]
  out["teacher/ensemble/validation_accuracy"] = v["ensemble_accuracy"]
  out["teacher/ensemble/validation_ece"] = v["ensemble_ece"]
  return out


def median_seconds(fn, repeats=20, warmup=3):
  """Median wall time (s) of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

  ``fn`` must block until its work is done (e.g. end in ``.numpy()``).
  """
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def inference_ms_per_batch(model, input_shape, batch_size=128, repeats=20, warmup=3):
  """Median wall time (ms) of one inference-mode forward pass on a batch, after warm-up."""
  images = tf.random.uniform((batch_size,) + tuple(input_shape), 0, 255, seed=0)
  forward = tf.function(lambda x: model(x, training=False))
  return 1000.0 * median_seconds(lambda: forward(images).numpy(), repeats, warmup)


def _number(value, spec, unit=""):
  """``value`` formatted with ``spec`` and ``unit``, or '-' when unknown (None)."""
  return "-" if value is None else f"{value:{spec}}{unit}"


def results_table(rows, reference_accuracy=None):
  """Markdown: model | params | test accuracy | share of teacher | ms/batch | train time | deployed.

  The deployed columns (int8 TFLite size, accuracy, batch-1 latency) are filled for
  rows whose results carry a 'deployed' entry (exported students), '-' elsewhere.
  """
  lines = ["| model | params | test accuracy | share of teacher | ms/batch (128) | train time "
           "| int8 TFLite KB | int8 accuracy | int8 ms (batch 1) |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    share = (f"{100 * row['test_accuracy'] / reference_accuracy:.1f}%"
             if reference_accuracy else "-")
    deployed = row.get("deployed")
    tail = (f"{deployed['int8_size_kb']:.1f} | {100 * deployed['int8_test_accuracy']:.2f}% | "
            f"{deployed['int8_latency_ms_batch1']:.3f}" if deployed else "- | - | -")
    accuracy = f"{100 * row['test_accuracy']:.2f}"
    accuracy += (f" +- {100 * row['test_accuracy_std']:.2f}%" if "test_accuracy_std" in row
                 else "%")
    lines.append(f"| {row['label']} | {row['params']:,} | {accuracy} | {share} | "
                 f"{_number(row['ms_per_batch_128'], '.1f')} | "
                 f"{_number(row['train_seconds'], '.0f', ' s')} | {tail} |")
  return "\n".join(lines) + "\n"
