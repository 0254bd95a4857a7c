"""Evaluation: exact passes of the student over a split, and the frozen teachers, once per run.

Teachers are frozen, so everything about them (each teacher's and the ensemble's
accuracy and ECE, their agreement, the soft labels' entropy, the stability of their
predictions under augmentation, and their logits on the validation and test images)
is computed once per run. Per-epoch validation then runs the student alone; its
agreement with and KL to the teachers use those stored logits.
"""

import os

import numpy as np
import tensorflow as tf

from kd_research.models import registry as model_registry
from kd_research.data import augment
from kd_research.common import fileio
from kd_research.methods import losses
from kd_research.common import metrics
from kd_research.train import steps
from kd_research.common import timing
from kd_research.common.errors import UserError
from kd_research.train import workdir as workdir_lib


def eval_batch_size(requested, strategy):
  """The eval global batch: ``requested`` rounded up to a multiple of the replica count."""
  replicas = strategy.num_replicas_in_sync
  return -(-requested // replicas) * replicas


class Evaluator:
  """Exact passes of ``model`` over splits: accuracy, loss, ECE, confusion [, agreement, kl].

  With ``teacher=(temperature, combine, weights)`` each pass is given the teachers'
  logits on the split ([N, K, C]) and adds teacher-student agreement and KL.
  """

  def __init__(self, strategy, model, num_classes, global_batch_size, teacher=None):
    self.strategy, self.global_batch_size = strategy, global_batch_size
    self.layout = steps.eval_layout(num_classes, teacher is not None)
    self.step = steps.make_eval_step(strategy, model, self.layout, teacher)

  def __call__(self, split, teacher_logits=None):
    """One exact pass over ``split`` (data/splits.py)."""
    extras = None if teacher_logits is None else {"teacher_logits": teacher_logits}
    dataset = self.strategy.distribute_datasets_from_function(
        split.eval_fn(self.global_batch_size, extras))
    total = np.zeros(self.layout.size)
    for batch in dataset:
      total += self.step(batch).numpy()
    sums = self.layout.unpack(total)
    count = sums["count"]
    out = {"accuracy": sums["correct"] / count, "loss": sums["loss"] / count,
           "count": int(round(count)), "ece": metrics.ece_from_sums(sums["calibration"]),
           "confusion": sums["confusion"].round().astype(int).tolist()}
    if "agreement" in sums:
      out.update(agreement=sums["agreement"] / count, kl=sums["kl"] / count)
    return out


def evaluate_members(model, strategy, splits, eval_batch):
  """[{member, test_accuracy, test_ece, validation_accuracy, params}] of every model that
  ``model`` holds as a part of its own (a DML cohort's members; models.registry.members),
  each on its own; None for a plain model."""
  members = model_registry.members(model)
  if not members:
    return None
  out = []
  for member in members:
    evaluator = Evaluator(strategy, member, splits.num_classes,
                          eval_batch_size(eval_batch, strategy))
    test, validation = evaluator(splits.test), evaluator(splits.validation)
    out.append({"member": member.name, "test_accuracy": test["accuracy"],
                "test_ece": test["ece"], "validation_accuracy": validation["accuracy"],
                "params": int(member.count_params())})
  return out


def _softmax(z, temperature=1.0):
  z = np.asarray(z, np.float64) / temperature
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _ensemble(logits, weights, temperature=1.0):
  """NumPy (float64) twin of metrics.ensemble_probs for [N, K, C] logits -> [N, C]."""
  return np.einsum("k,nkc->nc", np.asarray(weights), _softmax(logits, temperature))


def teacher_report(logits, labels, names, weights=None, temperature=1.0):
  """Each teacher's and the ensemble's accuracy and ECE, their agreement, soft-label entropy.

  Args:
    logits: {split: [N, K, C] teacher logits}; labels: {split: [N] labels}.
    names: the teachers' names; weights: per-teacher weights (None = uniform).
    temperature: T of the soft labels whose entropy is reported.
  """
  w = np.asarray(losses.normalise_weights(weights, len(names)))
  report = {"names": list(names), "weights": w.tolist()}
  for split, split_logits in logits.items():
    probs, y = _softmax(split_logits), labels[split]
    predictions = probs.argmax(-1)
    ensemble = _ensemble(split_logits, w)
    soft = _ensemble(split_logits, w, temperature)
    k = len(names)
    report[split] = {
        "accuracy": [float((predictions[:, i] == y).mean()) for i in range(k)],
        "ece": [metrics.expected_calibration_error(probs[:, i], y) for i in range(k)],
        "ensemble_accuracy": float((ensemble.argmax(-1) == y).mean()),
        "ensemble_ece": metrics.expected_calibration_error(ensemble, y),
        "entropy": float(-np.mean(np.sum(soft * np.log(np.maximum(soft, 1e-30)), -1))),
        "pairwise_agreement": [[float((predictions[:, i] == predictions[:, j]).mean())
                                for j in range(k)] for i in range(k)]}
  return report


def teacher_stability(ensemble, split, clean_logits, ops, cfg, weights, batch_size=1000):
  """Share of a split's images whose ensemble top-1 on an augmented view equals that on the
  clean image."""
  w = losses.normalise_weights(weights, len(ensemble))
  clean = _ensemble(clean_logits, w).argmax(-1)

  @tf.function
  @tf.autograph.experimental.do_not_convert
  def view_predictions(batch):
    view = augment.augment_batch(batch, ops, cfg, seed=12345, num_classes=1,
                                 global_batch_size=batch_size)
    probs = metrics.ensemble_probs(ensemble.logits(view["image"]), w)
    return tf.argmax(probs, -1, output_type=tf.int32)

  same = start = 0
  for chunk in split.image_batches(batch_size):
    n = int(chunk.shape[0])
    batch = {"image": chunk, "label": tf.zeros([n], tf.int32), "step": tf.zeros([n], tf.int64),
             "position": tf.range(n, dtype=tf.int32)}
    same += int(np.sum(view_predictions(batch).numpy() == clean[start:start + n]))
    start += n
  return same / split.num_examples


def teacher_scalars(report):
  """TensorBoard scalars of the teacher report (logged once per run)."""
  v = report["validation"]
  out = {"teacher/accuracy": v["ensemble_accuracy"], "teacher/ece": v["ensemble_ece"],
         "teacher/entropy": v["entropy"]}
  if "stability" in report:
    out["teacher/stability"] = report["stability"]
  for k in range(len(report["names"])):
    out[f"teacher/{k}/validation_accuracy"] = v["accuracy"][k]
    out[f"teacher/{k}/validation_ece"] = v["ece"][k]
    for j in range(k + 1, len(report["names"])):
      out[f"teacher/agreement/{k}_{j}"] = v["pairwise_agreement"][k][j]
  out["teacher/ensemble/validation_accuracy"] = v["ensemble_accuracy"]
  out["teacher/ensemble/validation_ece"] = v["ensemble_ece"]
  return out


def evaluate_saved_run(config, workdir, strategy):
  """The ``eval`` command: RUN/model.keras on every test example, written to RUN/eval.json."""
  path = os.path.join(workdir, "model.keras")
  if not os.path.exists(path):
    raise UserError(f"{workdir} has no model.keras: it is not a finished run (train, distill or "
                    "a pipeline stage directory such as WORKDIR/student_kd).")
  splits = workdir_lib.splits_of_run(config, workdir)
  workdir_lib.import_user_modules(workdir)
  with strategy.scope():
    model = model_registry.load_keras(path)
  evaluator = Evaluator(strategy, model, splits.num_classes,
                        eval_batch_size(config.run.eval_batch_size, strategy))
  result = evaluator(splits.test)
  result["test_accuracy"], result["test_count"] = result["accuracy"], result["count"]
  result["ms_per_batch_128"] = timing.inference_ms_per_batch(
      model, splits.input_shape, repeats=config.run.latency_repeats)
  fileio.atomic_write_json(os.path.join(workdir, "eval.json"), result)
  return result
