"""CRD, contrastive representation distillation (Tian et al., ICLR 2020).

Each example's student and teacher features go through trainable linear embedding heads
and an L2 normalisation. A memory bank of dataset size x embedding dim per network holds
a slowly moving embedding of every training example; the student's embedding is scored
against the teacher bank's rows of the example itself (positive) and of K negatives,
and the teacher's against the student bank's, each through the NCE critic
(``crd_nce``). After the step the banks' rows of the batch move to
normalize(m * old + (1 - m) * new).

Distributed exactly: negatives are drawn with a stateless RNG from the run seed and the
global step, per position in the global batch, so every replica count draws the same
ones; the banks are mirrored variables updated with the gathered global batch (each
replica computes the same update; the first replica's is written), and the
normalisation constants Z come from the global batch of the first step. Each example's
dataset index is in the batch (the training stream's ``index``).

Defaults follow RepDistiller / mdistiller (embedding 128, K = 16384, NCE temperature
0.07, momentum 0.5, weight 0.8; negatives from other classes, RepDistiller's 'exact'
sampling); mdistiller scores without Z re-estimation, as here.
"""

import keras
import numpy as np
import tensorflow as tf

from kd_research.common.errors import UserError
from kd_research.methods import base


def crd_nce(scores, num_examples, eps=1e-7):
  """CRD's NCE loss per example from normalised scores [B, 1 + K] (positive first).

  With noise probability Pn = 1 / num_examples and K negatives, the critic of a pair is
  D = P / (P + K Pn); the loss is -(log D(positive) + sum_k log(1 - D(negative_k))).
  """
  scores = base.f32(scores)
  k = tf.cast(tf.shape(scores)[1] - 1, tf.float32)
  noise = k / float(num_examples)
  positive = tf.math.log(scores[:, 0] / (scores[:, 0] + noise + eps))
  negatives = tf.reduce_sum(tf.math.log(noise / (scores[:, 1:] + noise + eps)), -1)
  return -(positive + negatives)


def _normalize(x):
  return x / tf.norm(x, axis=-1, keepdims=True)


def _global(x):
  """x over the global batch (an all-gather across replicas; x itself on one replica)."""
  return base.gather_global(x)[0]


def _replicated(value, name):
  """A non-trainable variable identical on every replica, written in replica context with
  the first replica's value (all replicas compute the same one)."""
  return tf.Variable(value, trainable=False, name=name,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class NegativeSampler:
  """K negative dataset indices per example, a pure function of (seed, step, position).

  ``labels`` given: negatives from the other classes only (RepDistiller's 'exact' mode);
  None: uniform over the dataset.
  """

  def __init__(self, num_examples, k, seed, labels=None):
    self.num_examples, self.k, self.seed = num_examples, k, seed
    self.by_class = self.starts = self.counts = self.labels = None
    if labels is not None:
      labels = np.asarray(labels).astype(np.int64)
      counts = np.bincount(labels)
      self.labels = tf.constant(labels)
      self.by_class = tf.constant(np.argsort(labels, kind="stable").astype(np.int64))
      self.starts = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64))
      self.counts = tf.constant(counts.astype(np.int64))

  def __call__(self, index, step, position, global_batch_size):
    seed = tf.stack([tf.constant(self.seed, tf.int64), tf.cast(step, tf.int64)])
    draws = tf.random.stateless_uniform([global_batch_size, self.k], seed=seed,
                                        dtype=tf.float64)
    draws = tf.gather(draws, position)  # This replica's rows of the global draw.
    if self.labels is None:
      return tf.cast(draws * self.num_examples, tf.int64)
    label = tf.gather(self.labels, index)
    count, start = tf.gather(self.counts, label)[:, None], tf.gather(self.starts, label)[:, None]
    slot = tf.cast(draws * tf.cast(self.num_examples - count, tf.float64), tf.int64)
    slot += tf.where(slot >= start, count, 0)  # Skip the example's own class block.
    return tf.gather(self.by_class, slot)


@base.register
class CRD(base.FeatureMethod):
  """ce_weight * CE + weight * (NCE(student vs teacher bank) + NCE(teacher vs student bank)).

  One set of embedding heads, banks and Z per teacher.
  """

  name, order = "crd", 8
  bank_field = "negatives"
  # negative_sampling: other_class (RepDistiller's 'exact') or uniform (needs no labels).
  defaults = dict(weight=0.8, feature_dim=128, negatives=16384, temperature=0.07,
                  momentum=0.5, negative_sampling="other_class", student_tap="pooled",
                  teacher_tap="pooled")
  reference = "RepDistiller scripts/run_cifar_distill.sh, mdistiller configs/cifar100/crd"
  field_docs = dict(
      weight="weight of the contrastive loss",
      feature_dim="dimension of the embedding heads",
      negatives="negatives drawn per example from the memory banks",
      temperature="NCE temperature",
      momentum="momentum of the memory-bank update",
      negative_sampling="other_class (RepDistiller's exact mode) or uniform (needs no labels)",
      **base.TAP_DOCS)

  def __init__(self, weight, ce_weight, teacher_weights, pairs, num_examples, global_batch_size,
               feature_dim=128, negatives=16384, temperature=0.07, momentum=0.5, seed=0,
               labels=None):
    super().__init__(weight, ce_weight, teacher_weights, pairs)
    if not 0 < negatives < num_examples:
      raise UserError(f"config.distill.crd.negatives={negatives} must be in [1, "
                      f"{num_examples - 1}] (the training examples minus one).")
    if not 0.0 <= momentum < 1.0 or temperature <= 0 or feature_dim < 1:
      raise UserError("config.distill.crd: momentum must be in [0, 1), temperature > 0 and "
                      f"feature_dim >= 1 (got {momentum}, {temperature}, {feature_dim}).")
    self.num_examples, self.global_batch_size = num_examples, global_batch_size
    self.dim, self.t, self.momentum, self.seed = feature_dim, temperature, momentum, seed
    self.sampler = NegativeSampler(num_examples, negatives, seed, labels)
    self.heads, self.banks, self.z = [], [], []

  @classmethod
  def from_config(cls, ctx):
    section, training_set = ctx.section(cls.name), ctx.training_set
    sampling = section.negative_sampling
    if sampling not in ("other_class", "uniform"):
      raise UserError(f"config.distill.crd.negative_sampling={sampling!r}; valid: "
                      "other_class, uniform.")
    labels = training_set.labels
    if sampling == "other_class" and labels is None:
      raise UserError("config.distill.crd.negative_sampling=other_class needs every training "
                      "label, but the transfer set (config.labels) hides some: use "
                      "--config.distill.crd.negative_sampling=uniform.")
    return cls(section.weight, ctx.distill.ce_weight, ctx.teacher_weights,
               ctx.tap_pair(section), training_set.num_examples,
               training_set.global_batch_size, section.feature_dim, section.negatives,
               section.temperature, section.momentum, training_set.seed,
               labels if sampling == "other_class" else None)

  def build(self, student_shapes, teacher_shapes):
    (s_tap, t_tap), = self.pairs
    rng = np.random.default_rng(self.seed)
    stdv = 1.0 / np.sqrt(self.dim / 3.0)  # The reference's bank initialisation.
    for k, shapes in enumerate(teacher_shapes):
      heads = []
      for who, shape in (("student", student_shapes[s_tap]), ("teacher", shapes[t_tap])):
        head = keras.layers.Dense(self.dim, dtype="float32", name=f"crd{k}_embed_{who}")
        head.build((None, int(np.prod(shape))))
        heads.append(head)
      self.heads.append(heads)
      self.banks.append([_replicated(rng.uniform(-stdv, stdv, (self.num_examples, self.dim))
                                     .astype(np.float32), f"crd{k}_memory_{who}")
                         for who in ("student", "teacher")])
      self.z.append(_replicated(tf.constant([-1.0, -1.0]), f"crd{k}_z"))

  @property
  def trainable_variables(self):
    return [v for heads in self.heads for h in heads for v in h.trainable_variables]

  @property
  def variables(self):
    return self.trainable_variables + [v for b in self.banks for v in b] + list(self.z)

  def method_loss(self, batch, student, teacher, k, step):
    (s_tap, t_tap), = self.pairs
    head_s, head_t = self.heads[k]
    bank_s, bank_t = self.banks[k]
    v_s = _normalize(head_s(base.flatten(student["features"][s_tap])))
    v_t = _normalize(head_t(base.flatten(teacher["features"][k][t_tap])))
    index = tf.cast(batch["index"], tf.int64)
    negatives = self.sampler(index, batch["step"][0], batch["position"], self.global_batch_size)
    contrast = tf.concat([index[:, None], negatives], 1)  # [B, 1 + K], positive first
    # Scores: the student's embedding against the teacher bank and vice versa.
    e_s = tf.exp(tf.einsum("bkd,bd->bk", tf.gather(bank_t, contrast), v_s) / self.t)
    e_t = tf.exp(tf.einsum("bkd,bd->bk", tf.gather(bank_s, contrast), v_t) / self.t)
    z = self._normalisers(k, e_s, e_t)
    loss = (crd_nce(e_s / z[0], self.num_examples)
            + crd_nce(e_t / z[1], self.num_examples))
    with tf.control_dependencies([loss]):
      self._update_banks(k, index, v_s, v_t)
    return loss

  def _normalisers(self, k, e_s, e_t):
    """Z = mean score x dataset size, fixed from the first step's global batch."""
    z = self.z[k]
    first = tf.stack([base.global_mean(e_s), base.global_mean(e_t)]) * float(self.num_examples)
    value = tf.stop_gradient(tf.where(z < 0, first, z))
    z.assign(value)
    return value

  def _update_banks(self, k, index, v_s, v_t):
    """Rows of the global batch: normalize(m * old + (1 - m) * new), on every replica."""
    rows = _global(index)
    for bank, new in zip(self.banks[k], (v_s, v_t)):
      new = _global(tf.stop_gradient(new))
      mixed = self.momentum * tf.gather(bank, rows) + (1.0 - self.momentum) * new
      bank.scatter_update(tf.IndexedSlices(_normalize(mixed), rows))
