"""Per-replica train/eval step functions and the ``tf.function`` loops that run them.

Shape of a training call: ``train_loop(iterator, n)`` runs n
steps with ``tf.range``; each step is ``strategy.run(replica_step, batch)``; the
per-example loss is reduced once with ``tf.nn.compute_average_loss`` over the
*global* batch, so the gradient and the logged losses do not depend on the
replica count. Metric sums are SUM-reduced over replicas and returned to Python.
"""

import keras
import tensorflow as tf

from kd_research import augment
from kd_research import losses

# Order of the sums a train step returns; 'steps' sums to 1 per step over replicas.
# 'skipped' counts float16 steps whose gradients overflowed (update skipped by the loss
# scaler; their grad_norm counts as 0).
TRAIN_SUMS = ("loss_total", "loss_distill", "loss_ce", "correct", "count", "grad_norm", "steps",
              "skipped")
# Order of the scalar sums an eval step returns (teacher ones are 0 without a teacher);
# then ECE_BINS x (count, confidence, correct) for student and teacher, then the
# confusion matrix (true x predicted) of the student.
EVAL_SUMS = ("loss", "correct", "count", "teacher_correct", "agreement", "kl",
             "teacher_entropy", "teacher_stable")
ECE_BINS = 15


def make_train_loop(strategy, model, optimizer, step_var, global_batch_size,
                    teachers=None, alpha_fn=None, temperature_fn=None,
                    combine="prob_mean", teacher_weights=None, cached_teacher_logits=False,
                    jit_compile=False):
  """Returns ``train_loop(iterator, num_steps) -> sums`` (see TRAIN_SUMS).

  With ``teachers`` (a TeacherEnsemble) or ``cached_teacher_logits`` (batches carry
  'teacher_logits' [b, K, C] from the teacher cache) the step distils with
  alpha/temperature taken from the schedules at the current global step; otherwise
  it trains on labels only and no teacher runs (baseline, teacher, fine-tuning).
  ``jit_compile`` compiles the forward and backward pass (not the optimizer update,
  which XLA cannot place across replicas on CPU in TF 2.21: "Trying to access resource
  ... located in device CPU:1 from device CPU:0") with XLA.
  """
  distilling = teachers is not None or cached_teacher_logits
  # float16: the loss is scaled before differentiation; the LossScaleOptimizer unscales.
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

  def forward_backward(images, labels, teacher_logits, step):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      if distilling:
        total, distill, ce = losses.distillation_terms(
            logits, teacher_logits, labels, alpha_fn(step), temperature_fn(step),
            combine, teacher_weights)
      else:
        ce = losses.cross_entropy(labels, logits)
        total, distill = ce, tf.zeros_like(ce)
      loss = tf.nn.compute_average_loss(total, global_batch_size=global_batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      if loss_scaling:
        loss = optimizer.scale_loss(loss)
    return total, distill, ce, logits, tape.gradient(loss, model.trainable_variables)

  if jit_compile:
    forward_backward = tf.function(forward_backward, jit_compile=True)

  def replica_step(batch):
    images, labels = batch["image"], batch["label"]
    step = step_var.read_value()
    teacher_logits = None
    if cached_teacher_logits:
      teacher_logits = tf.transpose(batch["teacher_logits"], [1, 0, 2])
    elif teachers is not None:
      teacher_logits = teachers.logits(images)
    total, distill, ce, logits, grads = forward_backward(images, labels, teacher_logits, step)
    grads, grad_norm = _global_gradient_norm(grads)
    skipped = tf.constant(0.0)
    if loss_scaling:  # The norm of the unscaled gradient; 0 for a step the scaler skips.
      grad_norm = grad_norm / optimizer.dynamic_scale
      finite = tf.math.is_finite(grad_norm)
      grad_norm = tf.where(finite, grad_norm, 0.0)
      skipped = 1.0 - tf.cast(finite, tf.float32)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    hard = labels if labels.shape.rank == 1 else tf.argmax(labels, -1, output_type=tf.int32)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), hard), tf.float32)
    replicas = float(tf.distribute.get_replica_context().num_replicas_in_sync)
    return tf.stack([tf.reduce_sum(total), tf.reduce_sum(distill), tf.reduce_sum(ce),
                     tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32),
                     grad_norm / replicas, 1.0 / replicas, skipped / replicas])

  @tf.function
  def train_loop(iterator, num_steps):
    sums = tf.zeros([len(TRAIN_SUMS)])
    for _ in tf.range(num_steps):
      per_replica = strategy.run(replica_step, args=(next(iterator),))
      sums += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
      step_var.assign_add(1)
    return sums

  return train_loop


def _global_gradient_norm(grads):
  """Norm of the global (all-replica) gradient, and grads to hand to the optimizer.

  On N > 1 replicas this all-reduces the gradients itself to measure the norm and
  passes on grads / N, which the optimizer's own SUM all-reduce turns back into
  the global gradient (one extra all-reduce; none on a single replica).
  """
  ctx = tf.distribute.get_replica_context()
  replicas = ctx.num_replicas_in_sync
  if replicas == 1:
    return grads, tf.linalg.global_norm(grads)
  total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
  return [g / replicas for g in total], tf.linalg.global_norm(total)


def _calibration_sums(probs, labels, weight):
  """Per-bin (count, sum of confidence, sum of correct) for ECE, weighted."""
  confidence = tf.reduce_max(probs, -1)
  correct = tf.cast(tf.equal(tf.argmax(probs, -1, output_type=tf.int32), labels), tf.float32)
  bins = tf.clip_by_value(tf.cast(tf.math.ceil(confidence * ECE_BINS), tf.int32) - 1, 0,
                          ECE_BINS - 1)
  one_hot = tf.one_hot(bins, ECE_BINS) * weight[:, None]
  return tf.concat([tf.reduce_sum(one_hot, 0), tf.reduce_sum(one_hot * confidence[:, None], 0),
                    tf.reduce_sum(one_hot * correct[:, None], 0)], 0)


def make_eval_step(strategy, model, num_classes, teachers=None, temperature=1.0,
                   combine="prob_mean", teacher_weights=None, stability=None):
  """Returns ``eval_step(batch) -> sums``: EVAL_SUMS, calibration bins, confusion matrix.

  Padded examples carry weight 0 and count nowhere. With ``teachers``: teacher
  (ensemble) accuracy, teacher-student top-1 agreement, KL(teacher_T || student_T)
  of the combined soft labels, the teacher's entropy at T, and, when
  ``stability=(ops, cfg, global_batch)`` is given, how often the teacher's top-1
  on an augmented view of the image equals its top-1 on the clean image.
  """

  def replica_step(batch):
    images, labels, weight = batch["image"], batch["label"], batch["weight"]
    logits = tf.cast(model(images, training=False), tf.float32)
    probs = tf.nn.softmax(logits)
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    loss = losses.cross_entropy(labels, logits) * weight
    correct = tf.cast(tf.equal(predicted, labels), tf.float32) * weight
    zeros = tf.zeros_like(weight)
    teacher_correct, agreement, kl, entropy, stable = zeros, zeros, zeros, zeros, zeros
    teacher_calibration = tf.zeros([3 * ECE_BINS])
    if teachers is not None:
      weights = tf.constant(losses.normalise_weights(teacher_weights, len(teachers)))
      teacher_logits = teachers.logits(images)
      teacher_probs = tf.einsum("k,kbc->bc", weights, losses.soften(teacher_logits, 1.0))
      teacher_predicted = tf.argmax(teacher_probs, -1, output_type=tf.int32)
      teacher_correct = tf.cast(tf.equal(teacher_predicted, labels), tf.float32) * weight
      agreement = tf.cast(tf.equal(teacher_predicted, predicted), tf.float32) * weight
      kl = losses.combined_distill_term(teacher_logits, logits, temperature, combine,
                                        teacher_weights) * weight
      soft = tf.einsum("k,kbc->bc", weights, losses.soften(teacher_logits, temperature))
      entropy = -tf.reduce_sum(tf.math.xlogy(soft, soft), -1) * weight
      teacher_calibration = _calibration_sums(teacher_probs, labels, weight)
      if stability is not None:
        ops, cfg, global_batch = stability
        view = augment.augment_batch(
            {"image": images, "label": labels, "step": tf.zeros_like(labels, tf.int64),
             "position": tf.cast(batch["index"] % global_batch, tf.int32)},
            ops, cfg, seed=12345, num_classes=num_classes, global_batch_size=global_batch)
        view_probs = tf.einsum("k,kbc->bc", weights,
                               losses.soften(teachers.logits(view["image"]), 1.0))
        stable = tf.cast(tf.equal(tf.argmax(view_probs, -1, output_type=tf.int32),
                                  teacher_predicted), tf.float32) * weight
    scalars = tf.stack([tf.reduce_sum(t) for t in (loss, correct, weight, teacher_correct,
                                                    agreement, kl, entropy, stable)])
    confusion = tf.math.confusion_matrix(labels, predicted, num_classes, weights=weight,
                                         dtype=tf.float32)
    return tf.concat([scalars, _calibration_sums(probs, labels, weight), teacher_calibration,
                      tf.reshape(confusion, [-1])], 0)

  @tf.function
  def eval_step(batch):
    per_replica = strategy.run(replica_step, args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  return eval_step
