"""Per-replica train/eval step functions and the ``tf.function`` loops that run them.

Shape of a training call (DESIGN.md rule 4): ``train_loop(iterator, n)`` runs n
steps with ``tf.range``; each step is ``strategy.run(replica_step, batch)``; the
per-example loss is reduced once with ``tf.nn.compute_average_loss`` over the
*global* batch, so the gradient and the logged losses do not depend on the
replica count. Metric sums are SUM-reduced over replicas and returned to Python.
"""

import tensorflow as tf

from kd_research import losses

# Order of the sums a train step returns.
TRAIN_SUMS = ("loss_total", "loss_distill", "loss_ce", "correct", "count")
# Order of the sums an eval step returns (the teacher ones are 0 without a teacher).
EVAL_SUMS = ("loss", "correct", "count", "teacher_correct", "agreement", "kl")


def make_train_loop(strategy, model, optimizer, step_var, global_batch_size,
                    teachers=None, alpha_fn=None, temperature_fn=None,
                    combine="prob_mean", teacher_weights=None, cached_teacher_logits=False):
  """Returns ``train_loop(iterator, num_steps) -> sums`` (see TRAIN_SUMS).

  With ``teachers`` (a TeacherEnsemble) or ``cached_teacher_logits`` (batches carry
  'teacher_logits' [b, K, C] from the teacher cache) the step distils with
  alpha/temperature taken from the schedules at the current global step; otherwise
  it trains on labels only and no teacher runs (baseline, teacher, fine-tuning).
  """
  distilling = teachers is not None or cached_teacher_logits

  def replica_step(batch):
    images, labels = batch["image"], batch["label"]
    step = step_var.read_value()
    if cached_teacher_logits:
      teacher_logits = tf.transpose(batch["teacher_logits"], [1, 0, 2])
    elif teachers is not None:
      teacher_logits = teachers.logits(images)
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
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    hard = labels if labels.shape.rank == 1 else tf.argmax(labels, -1, output_type=tf.int32)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), hard), tf.float32)
    return tf.stack([tf.reduce_sum(total), tf.reduce_sum(distill), tf.reduce_sum(ce),
                     tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32)])

  @tf.function
  def train_loop(iterator, num_steps):
    sums = tf.zeros([len(TRAIN_SUMS)])
    for _ in tf.range(num_steps):
      per_replica = strategy.run(replica_step, args=(next(iterator),))
      sums += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
      step_var.assign_add(1)
    return sums

  return train_loop


def make_eval_step(strategy, model, teachers=None, temperature=1.0, combine="prob_mean",
                   teacher_weights=None):
  """Returns ``eval_step(batch) -> sums`` (see EVAL_SUMS), weighting out padded examples.

  With ``teachers``, also counts teacher accuracy, teacher-student top-1 agreement
  and the KL(teacher_T || student_T) of the combined (prob_mean) soft labels.
  """

  def replica_step(batch):
    images, labels, weight = batch["image"], batch["label"], batch["weight"]
    logits = tf.cast(model(images, training=False), tf.float32)
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    loss = losses.cross_entropy(labels, logits) * weight
    correct = tf.cast(tf.equal(predicted, labels), tf.float32) * weight
    zeros = tf.zeros_like(weight)
    teacher_correct, agreement, kl = zeros, zeros, zeros
    if teachers is not None:
      teacher_logits = teachers.logits(images)
      weights = tf.constant(losses.normalise_weights(teacher_weights, len(teachers)))
      teacher_probs = tf.einsum("k,kbc->bc", weights, losses.soften(teacher_logits, 1.0))
      teacher_predicted = tf.argmax(teacher_probs, -1, output_type=tf.int32)
      teacher_correct = tf.cast(tf.equal(teacher_predicted, labels), tf.float32) * weight
      agreement = tf.cast(tf.equal(teacher_predicted, predicted), tf.float32) * weight
      kl = losses.combined_distill_term(teacher_logits, logits, temperature, combine,
                                        teacher_weights) * weight
    return tf.stack([tf.reduce_sum(t) for t in
                     (loss, correct, weight, teacher_correct, agreement, kl)])

  @tf.function
  def eval_step(batch):
    per_replica = strategy.run(replica_step, args=(batch,))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  return eval_step
