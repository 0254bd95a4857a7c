"""The traced step functions: ``train_loop(iterator, n)`` and ``eval_step(batch)``.

Shape of a training call: ``train_loop(iterator, n)`` runs n steps with ``tf.range``;
each step is ``strategy.run(replica_step, batch)``; the per-example loss of the
objective is reduced once with ``tf.nn.compute_average_loss`` over the *global*
batch, so the gradient and the logged losses do not depend on the replica count.
Every metric is a named sum, packed by ``metrics.SumLayout`` so that one SUM
all-reduce per step moves them all.

Gradients cross replicas once per step: the step all-reduces them itself (it needs
the global gradient for the logged norm), and the optimizer, built by
``optimizers.make_optimizer``, applies them without reducing again.

Only the step loop is converted by autograph (its ``tf.range``). The per-replica steps, and
with them every objective, model and teacher source they call, hold no Python branch or
loop on a tensor, so they are traced as written (``do_not_convert``): converting them cost
about 2.5 s of every run's first trace, most of it in the objectives' ``terms``.
"""

import contextlib

import keras
import tensorflow as tf

from kd_research.data import views as views_lib
from kd_research.methods import losses
from kd_research.common import example_draws
from kd_research.common import metrics
from kd_research.train import dot
from kd_research.train import optimizers
from kd_research.models import stochastic_depth
from kd_research.models import taps


def train_layout(term_names):
  """The named sums of a train step: loss_<term> for each term, then the counters.

  ``grad_norm``, ``steps`` and ``skipped`` sum to their value per step over replicas;
  ``skipped`` counts float16 steps whose gradients overflowed (update skipped by the
  loss scaler; their grad_norm counts as 0).
  """
  names = [f"loss_{t}" for t in term_names] + ["correct", "count", "grad_norm", "steps",
                                                "skipped"]
  return metrics.SumLayout({name: () for name in names})


def make_train_loop(strategy, model, optimizer, step_var, global_batch_size, objective,
                    teacher_source=None, layout=None, jit_compile=False, l2=0.0, seed=0):
  """Returns ``train_loop(iterator, num_steps) -> packed sums`` (see ``train_layout``).

  ``objective`` (methods/base.py) gives the per-example terms from the student's logits and
  tapped features (one forward pass); ``teacher_source(batch)`` gives the teachers'
  outputs ({'logits': [K, B, C], 'features': ...}) for objectives that need them.
  ``layout`` may cover terms of other phases of the run (they sum to 0 here).
  ``jit_compile`` compiles the forward and backward pass (not the optimizer update,
  which XLA cannot place across replicas on CPU in TF 2.21: "Trying to access resource
  ... located in device CPU:1 from device CPU:0") with XLA. ``l2``: coupled L2 penalty
  l2/2 * sum(w^2) over the trained variables (gradient l2 * w, PyTorch SGD's weight_decay).
  ``seed`` keys the student's stochastic depth (``drop_path_context``).
  """
  layout = layout or train_layout(objective.terms_names)
  optimizers.apply_gradients_as_given(optimizer)  # The step reduces the gradients itself.
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  split = isinstance(optimizer, dot.DistillationOrientedSGD)  # Task and distillation apart.
  variables = list(model.trainable_variables) + list(objective.trainable_variables)
  forward_backward = make_forward_backward(model, objective, optimizer, variables,
                                           global_batch_size, l2, seed)
  if jit_compile:
    forward_backward = tf.function(forward_backward, jit_compile=True)

  @tf.autograph.experimental.do_not_convert  # See the module docstring: no tensor branches.
  def replica_step(batch):
    teacher = teacher_source(batch) if objective.needs_teacher else None
    terms, logits, grads = forward_backward(batch, teacher, step_var.read_value())
    grads, trained = _reached(grads, variables, split)
    grads, grad_norm = _all_reduce_gradients(grads, split)
    skipped = tf.constant(0.0)
    if loss_scaling:
      grad_norm, skipped = _loss_scale_stats(optimizer, grad_norm)
    if split:
      grads = dot.stack_gradients(grads[:len(trained)], grads[len(trained):])
    optimizer.apply_gradients(zip(grads, trained))
    return layout.pack(_train_sums(layout, terms, batch["label"], logits, grad_norm, skipped))

  @tf.function
  def train_loop(iterator, num_steps):
    sums = layout.zeros()
    for _ in tf.range(num_steps):
      per_replica = strategy.run(replica_step, args=(next(iterator),))
      sums += metrics.all_reduce_sums(strategy, per_replica)
      step_var.assign_add(1)
    return sums

  return train_loop


def make_forward_backward(model, objective, optimizer, variables, global_batch_size, l2,
                          seed):
  """``forward_backward(batch, teacher, step) -> (terms, logits, gradients)`` of one replica:
  the gradient of its share of the global-batch loss (coupled L2 and the model's own losses
  included; scaled under float16 loss scaling). With DOT's optimizer (train/dot.py) the
  gradients are the task part's followed by the distillation part's, from one forward pass."""
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  split = isinstance(optimizer, dot.DistillationOrientedSGD)
  tapped = taps.feature_model(model, objective.student_taps)  # One forward for all outputs.
  drop_path_draws = drop_path_context(model, seed, global_batch_size)

  def forward_backward(batch, teacher, step):
    with tf.GradientTape(persistent=split) as tape, drop_path_draws(batch):
      student = student_outputs(tapped, objective, batch)
      terms = objective.terms(batch, student, teacher, step)
      task = objective.task_term(terms, step) if split else terms["total"]
      loss = tf.nn.compute_average_loss(task, global_batch_size=global_batch_size)
      if model.losses:
        loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
      if l2:  # Once per global step: each replica adds its 1/replicas share.
        loss += tf.nn.scale_regularization_loss(0.5 * l2 * tf.add_n(
            [tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in variables]))
      if loss_scaling:  # float16: scaled before differentiation; the optimizer unscales.
        loss = optimizer.scale_loss(loss)
      if split:  # DOT: the distillation part's gradient apart.
        distill = tf.nn.compute_average_loss(terms["total"] - task,
                                             global_batch_size=global_batch_size)
    if not split:
      return terms, student["logits"], tape.gradient(loss, variables)
    return (terms, student["logits"],
            tape.gradient(loss, variables) + tape.gradient(distill, variables))

  return forward_backward


def drop_path_context(model, seed, global_batch_size):
  """batch -> the context in which ``model``'s stochastic depth reads its masks' uniforms
  for that batch: stateless draws of (seed, step, each example's position in the global
  batch) (models/stochastic_depth.py); no context for a model without stochastic depth."""
  columns = stochastic_depth.columns(model)

  def context(batch):
    if not columns:
      return contextlib.nullcontext()
    return stochastic_depth.uniforms(example_draws.per_example(
        tf.random.stateless_uniform, seed, stochastic_depth.SALT, batch["step"][0],
        batch["position"], global_batch_size, [columns]))
  return context


def student_outputs(tapped, objective, batch):
  """The student's training-mode outputs for ``objective``: {'logits', 'features'} of the
  main view, and {'views': {name: ...}} with one more pass per extra view it reads (each
  pass its own BatchNorm statistics, as the references' separate calls)."""
  def one_pass(images):
    outputs = tapped(images, training=True)
    if not objective.student_taps:
      return {"logits": outputs, "features": {}}
    return {"logits": outputs[0], "features": dict(zip(objective.student_taps, outputs[1:]))}

  student = one_pass(batch["image"])
  if objective.views:
    student["views"] = {name: one_pass(batch[views_lib.field(name)]) for name in objective.views}
  return student


def _loss_scale_stats(optimizer, grad_norm):
  """(gradient norm, skipped) under dynamic loss scaling: the norm of the unscaled gradient,
  or 0 with skipped = 1 for a step the scaler skips (a non-finite gradient)."""
  grad_norm = grad_norm / optimizer.dynamic_scale
  finite = tf.math.is_finite(grad_norm)
  return tf.where(finite, grad_norm, 0.0), 1.0 - tf.cast(finite, tf.float32)


def _train_sums(layout, terms, labels, logits, grad_norm, skipped):
  """One replica's named sums of a step (terms of other phases of the run sum to 0)."""
  hard = labels if labels.shape.rank == 1 else tf.argmax(labels, -1, output_type=tf.int32)
  correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), hard), tf.float32)
  replicas = float(tf.distribute.get_replica_context().num_replicas_in_sync)
  sums = {name: 0.0 for name in layout.shapes if name.startswith("loss_")}
  sums.update({f"loss_{name}": tf.reduce_sum(value) for name, value in terms.items()})
  sums.update(correct=tf.reduce_sum(correct), count=tf.cast(tf.size(correct), tf.float32),
              grad_norm=grad_norm / replicas, steps=1.0 / replicas, skipped=skipped / replicas)
  return sums


def _all_reduce_gradients(grads, split=False):
  """The global (all-replica) gradient and its norm, with one all-reduce.

  Replicas average their losses over the global batch, so the global gradient is the
  SUM of the replicas' gradients. Every replica then holds the same global gradient
  and hands it to an optimizer that does not reduce again (optimizers.py). ``split``:
  ``grads`` is DOT's task gradients followed by its distillation gradients (one list, one
  all-reduce); the norm is that of their sum, the gradient of the total loss.
  """
  ctx = tf.distribute.get_replica_context()
  if ctx.num_replicas_in_sync > 1:
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
  if split:
    half = len(grads) // 2
    return grads, tf.linalg.global_norm([g + h for g, h in zip(grads[:half], grads[half:])])
  return grads, tf.linalg.global_norm(grads)


def _reached(grads, variables, split=False):
  """(gradients, variables) without the variables the loss does not reach (no gradient:
  known when the step is traced, the same on every replica), which the optimizer would skip
  anyway and an all-reduce cannot carry: a distilled ViT's second head when no method reads
  it. ``split`` (DOT): ``grads`` holds the task gradients, then the distillation ones; a
  variable reached by one of the two gets zeros for the other (a connector has no task
  gradient)."""
  if not split:
    kept = [(g, v) for g, v in zip(grads, variables) if g is not None]
    return [g for g, _ in kept], [v for _, v in kept]
  n = len(variables)
  kept = [i for i in range(n) if grads[i] is not None or grads[n + i] is not None]
  zeros = lambda g, v: tf.zeros(v.shape, v.dtype) if g is None else g
  task = [zeros(grads[i], variables[i]) for i in kept]
  distill = [zeros(grads[n + i], variables[i]) for i in kept]
  return task + distill, [variables[i] for i in kept]


def eval_layout(num_classes, with_teacher):
  """The named sums of an eval step (agreement and kl only when teacher outputs are given)."""
  shapes = {"loss": (), "correct": (), "count": ()}
  if with_teacher:
    shapes.update(agreement=(), kl=())
  shapes.update(calibration=(3, metrics.ECE_BINS), confusion=(num_classes, num_classes))
  return metrics.SumLayout(shapes)


def make_eval_step(strategy, model, layout, teacher=None):
  """Returns ``eval_step(batch) -> packed sums`` over one global batch (see eval_layout).

  Padded examples carry weight 0 and count nowhere. With ``teacher=(temperature,
  combine, weights)`` the batches carry the teachers' precomputed logits
  ('teacher_logits' [b, K, C]), and the step adds teacher-student top-1 agreement and
  KL(teacher_T || student_T) of the combined soft labels: the frozen teachers never
  run during validation.
  """
  num_classes = layout.shapes["confusion"][0]

  @tf.autograph.experimental.do_not_convert
  def replica_step(batch):
    images, labels, weight = batch["image"], batch["label"], batch["weight"]
    logits = tf.cast(model(images, training=False), tf.float32)
    predicted = tf.argmax(logits, -1, output_type=tf.int32)
    sums = {"loss": tf.reduce_sum(losses.cross_entropy(logits, labels) * weight),
            "correct": tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32) * weight),
            "count": tf.reduce_sum(weight),
            "calibration": metrics.calibration_sums(tf.nn.softmax(logits), labels, weight),
            "confusion": tf.math.confusion_matrix(labels, predicted, num_classes,
                                                  weights=weight, dtype=tf.float32)}
    if teacher is not None:
      temperature, combine, weights = teacher
      teacher_logits = tf.transpose(batch["teacher_logits"], [1, 0, 2])
      teacher_predicted = tf.argmax(
          metrics.ensemble_probs(teacher_logits, weights), -1, output_type=tf.int32)
      sums["agreement"] = tf.reduce_sum(
          tf.cast(tf.equal(teacher_predicted, predicted), tf.float32) * weight)
      sums["kl"] = tf.reduce_sum(losses.combined_distill_term(
          logits, teacher_logits, temperature, combine, weights) * weight)
    return layout.pack(sums)

  @tf.function
  def eval_step(batch):
    return metrics.all_reduce_sums(strategy, strategy.run(replica_step, args=(batch,)))

  return eval_step
