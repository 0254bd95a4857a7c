"""DOT, the distillation-oriented trainer (Zhao et al., ICCV 2023): SGD with one momentum
buffer for the task (cross-entropy) gradient and another for the distillation gradient.

With base momentum m and delta, the task buffer runs at m - delta and the distillation
buffer at m + delta, so that the distillation gradient, smoother across steps, carries
more of the update (the paper's argument: the two losses' gradients conflict, and the
distillation loss is under-optimised). Per variable w, with g the task gradient (coupled
L2 included) and h the distillation gradient of the same forward pass:

    b_task = (m - delta) b_task + g,   b_kd = (m + delta) b_kd + h,   w -= lr (b_task + b_kd).

Reference: mdistiller mdistiller/engine/dot.py (``DistillationOrientedTrainer``) and
trainer.py (``DOT``: ``m_task = MOMENTUM - DOT.DELTA``, ``m_kd = MOMENTUM + DOT.DELTA``);
configs/cifar100/dot/*.yaml (DELTA 0.075, SGD momentum 0.9, weight decay 5e-4). Both buffers
start at zero, which equals the reference's first-step ``clone(d_p)``; the reference applies
the two buffers one after the other, here in one update (the same sum). Its weight decay is
added to the task gradient only: here config.optimizer.l2 (coupled L2), which the step adds
to the task loss. The two gradients cross replicas in the step's one all-reduce, and both
buffers are optimizer variables, so the checkpoint holds them (exact resume).
"""

import keras
import tensorflow as tf


class DistillationOrientedSGD(keras.optimizers.Optimizer):
  """SGD with separate task and distillation momenta (PyTorch's form: the buffers sum raw
  gradients and the learning rate scales the step, as the reference's ``dot``).

  The step hands it, for each variable, the two gradients stacked on a new leading axis
  (``stack_gradients``): Keras' own update path then serves it unchanged (the distributed
  update of mirrored variables, the iteration count, the learning-rate schedule)."""

  def __init__(self, learning_rate, momentum, delta, name="dot_sgd", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    self.momentum, self.delta = momentum, delta
    self.task_momentum, self.distill_momentum = momentum - delta, momentum + delta

  def build(self, variables):
    if self.built:
      return
    super().build(variables)
    self.task_buffers = [self.add_variable_from_reference(v, "task_momentum")
                         for v in variables]
    self.distill_buffers = [self.add_variable_from_reference(v, "distill_momentum")
                            for v in variables]

  def update_step(self, gradient, variable, learning_rate):
    """``gradient``: [task gradient, distillation gradient] stacked (see the class doc)."""
    index = self._get_variable_index(variable)
    task, distill = self.task_buffers[index], self.distill_buffers[index]
    gradient = tf.cast(gradient, variable.dtype)
    self.assign(task, self.task_momentum * task + gradient[0])
    self.assign(distill, self.distill_momentum * distill + gradient[1])
    self.assign_sub(variable, tf.cast(learning_rate, variable.dtype) * (task + distill))

  def get_config(self):
    config = super().get_config()
    config.update(momentum=self.momentum, delta=self.delta)
    return config


def stack_gradients(task_grads, distill_grads):
  """Each variable's [task, distillation] gradients as one tensor (what update_step reads)."""
  return [tf.stack([g, h]) for g, h in zip(task_grads, distill_grads)]
