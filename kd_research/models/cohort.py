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
each member is also evaluated and saved on its own (models.registry.members serves the run).

The cohort registers itself as a model wrapper (models/registry.py): an entry with
``cohort`` N >= 2 builds N models of the entry as one; nothing outside this module and the
DML objective (methods/mutual.py) knows what a cohort is.
"""

import keras
import ml_collections

from kd_research.common.errors import UserError
from kd_research.models import registry

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
  """The member models of a cohort, in order ([] for another model)."""
  return [layer for layer in cohort.layers if layer.name.startswith("member_")
          and isinstance(layer, keras.Model)]


def validate(role, entry):
  """A cohort has 2 or more members, and only config.student trains as one."""
  cohort = entry.get("cohort", 0)
  if not (cohort == 0 or (cohort >= 2 and role == "student")):
    raise UserError(f"config.{role}.cohort={cohort}: a cohort of deep mutual learning has 2 "
                    "or more members (0 = one model), and only config.student trains as one.")


def build_for_entry(entry, role, input_shape, build_one):
  """The cohort of ``entry.cohort`` models of the entry (each ``build_one(member entry)``)."""
  if role != "student":
    raise UserError(f"config.student.cohort={entry.cohort} trains a cohort by deep mutual "
                    f"learning with no teacher: it is for `train --role=student`, not {role}.")
  member = ml_collections.ConfigDict(dict(entry.to_dict(), cohort=0))
  return build(lambda: build_one(member), entry.cohort, input_shape)


registry.register_wrapper(registry.Wrapper(
    applies=lambda entry: bool(entry.get("cohort")), validate=validate,
    build=build_for_entry, members=members))

