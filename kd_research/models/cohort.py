"""A cohort of students in one Keras model, for deep mutual learning (DML; Zhang et al.,
CVPR 2018): ``config.student.cohort=N`` trains N students of the student's architecture
together, each learning from the labels and from the others' current predictions.

The cohort is one functional model so that the training loop, its checkpoint, its exact
resume and its replica-independent gradient serve every member unchanged: the input goes
to member models ``member_0`` ... ``member_{N-1}`` (each its own initial weights from the
seeded RNG), whose logits are the taps ``member_0_logits`` ... (weightless Identity layers
of the top-level graph, read by the DML objective from the same forward pass). The
cohort's own output is member 0's logits through ``FirstMember``, a layer that takes every
member's logits so that every member belongs to the model's graph (and its variables to
its trainable variables); validation and the run's test accuracy are member 0's, and
each member is also evaluated and saved on its own (train/cohort_members.py).
"""

import keras

MEMBER = "member_{}"


def member_tap(index):
  """The tap name of member ``index``'s logits."""
  return f"{MEMBER.format(index)}_logits"


@keras.saving.register_keras_serializable(package="kd_research")
class FirstMember(keras.layers.Layer):
  """[logits of member 0, logits of member 1, ...] -> member 0's logits."""

  def call(self, inputs):
    return inputs[0]

  def compute_output_shape(self, input_shape):
    return input_shape[0]


def build(make_member, size, input_shape):
  """The cohort model of ``size`` members, each ``make_member()`` (a Keras model that maps
  ``input_shape`` images to logits), built in order so that their weights differ."""
  inputs = keras.Input(shape=tuple(input_shape))
  logits = []
  for index in range(size):
    member = make_member()
    member.name = MEMBER.format(index)
    logits.append(keras.layers.Identity(name=member_tap(index))(member(inputs)))
  return keras.Model(inputs, FirstMember(name="first_member")(logits),
                     name=f"cohort_of_{size}")


def members(cohort):
  """The member models of a cohort, in order."""
  return [layer for layer in cohort.layers if layer.name.startswith("member_")
          and isinstance(layer, keras.Model)]

