"""Per-example losses of the distillation methods beyond Hinton KD, from their papers.

Arguments come in one order: student, teacher (, labels). Every function returns one
float32 value per example of the (local) batch, so that the step's single average
over the global batch gives the paper's batch loss. Relational losses (DIST's
intra-class term, RKD, PKT, SP) compare examples with each other: they take the
local rows and the *global* batch (gathered over replicas by the caller) and return
the local rows' shares, so that results do not depend on the replica count.

  dkd_terms      Zhao et al., CVPR 2022, Decoupled KD: TCKD and NCKD (each x T^2)
  standardize    Sun et al., CVPR 2024, logit standardization (a modifier of kd / dkd)
  dist_inter/intra  Huang et al., NeurIPS 2022, DIST: Pearson correlation of softmaxes
  hint           Romero et al., ICLR 2015, FitNets: mean squared error after a connector
  attention      Zagoruyko & Komodakis, ICLR 2017, attention transfer (p = 2)
  rkd            Park et al., CVPR 2019, relational KD: distance and angle, smooth L1
  pkt            Passalis & Tefas, ECCV 2018, probabilistic knowledge transfer (cosine kernel)
  sp             Tung & Mori, ICCV 2019, similarity-preserving KD
  crd_nce        Tian et al., ICLR 2020, contrastive representation distillation (NCE form)
"""

import tensorflow as tf


def _f32(x):
  return tf.cast(x, tf.float32)


def standardize(logits):
  """(z - mean(z)) / (1e-7 + std(z)) per example; std unbiased (n - 1), as the reference."""
  z = _f32(logits)
  mean = tf.reduce_mean(z, -1, keepdims=True)
  n = tf.cast(tf.shape(z)[-1], tf.float32)
  std = tf.sqrt(tf.reduce_sum(tf.square(z - mean), -1, keepdims=True) / (n - 1.0))
  return (z - mean) / (1e-7 + std)


def _kl(p, log_q):
  """sum_c p log p - p log q, with 0 log 0 = 0."""
  return tf.reduce_sum(tf.math.xlogy(p, p) - p * log_q, -1)


def dkd_terms(student_logits, teacher_logits, labels, temperature):
  """Per-example (TCKD, NCKD), each multiplied by T^2 (mdistiller's scaling).

  TCKD = KL(b_T || b_S) of the binary (target, non-target) probabilities; NCKD =
  KL of the distributions over the non-target classes. KD = TCKD + (1 - p_t^T) NCKD.
  """
  t = _f32(temperature)
  s, te = _f32(student_logits) / t, _f32(teacher_logits) / t
  mask = tf.one_hot(labels, tf.shape(s)[-1])
  p_s, p_t = tf.nn.softmax(s), tf.nn.softmax(te)
  pt_s = tf.reduce_sum(p_s * mask, -1, keepdims=True)
  pt_t = tf.reduce_sum(p_t * mask, -1, keepdims=True)
  b_s = tf.concat([pt_s, 1.0 - pt_s], -1)
  b_t = tf.concat([pt_t, 1.0 - pt_t], -1)
  tckd = _kl(b_t, tf.math.log(tf.maximum(b_s, 1e-30)))
  # Non-target distributions: the target class removed (a large negative logit).
  nckd = _kl(tf.nn.softmax(te - 1000.0 * mask), tf.nn.log_softmax(s - 1000.0 * mask))
  return tf.square(t) * tckd, tf.square(t) * nckd


def _pearson_rows(a, b, eps=1e-8):
  """Pearson correlation of matching rows of a and b ([N, D] -> [N])."""
  a = a - tf.reduce_mean(a, -1, keepdims=True)
  b = b - tf.reduce_mean(b, -1, keepdims=True)
  return tf.reduce_sum(a * b, -1) / (tf.norm(a, axis=-1) * tf.norm(b, axis=-1) + eps)


def dist_inter(student_logits, teacher_logits, temperature):
  """tau^2 (1 - Pearson(softmax(s / tau), softmax(t / tau))) per example (inter-class)."""
  t = _f32(temperature)
  return tf.square(t) * (1.0 - _pearson_rows(tf.nn.softmax(_f32(student_logits) / t),
                                             tf.nn.softmax(_f32(teacher_logits) / t)))


def dist_intra(student_global, teacher_global, temperature, local_size):
  """tau^2 (1 - mean over classes of Pearson over the batch): a batch loss, given to each of
  the ``local_size`` local examples (their average is the batch loss)."""
  t = _f32(temperature)
  y_s = tf.nn.softmax(_f32(student_global) / t)
  y_t = tf.nn.softmax(_f32(teacher_global) / t)
  value = tf.square(t) * (1.0 - tf.reduce_mean(_pearson_rows(tf.transpose(y_s),
                                                               tf.transpose(y_t))))
  return tf.fill([local_size], value)


def hint(student_feature, teacher_feature):
  """Mean squared error per example over every feature element (FitNets, after a connector)."""
  diff = _f32(student_feature) - _f32(teacher_feature)
  return tf.reduce_mean(tf.reshape(tf.square(diff), [tf.shape(diff)[0], -1]), -1)


def attention_map(feature, p=2.0):
  """L2-normalised, flattened mean over channels of |f|^p: [B, H, W, C] -> [B, H*W]."""
  f = _f32(feature)
  am = tf.reduce_mean(tf.pow(tf.abs(f), p), -1)
  am = tf.reshape(am, [tf.shape(am)[0], -1])
  return tf.math.l2_normalize(am, -1, epsilon=1e-12)


def _pool_matrix(size_in, size_out):
  """[out, in] averaging weights of adaptive average pooling along one axis (as PyTorch's
  adaptive_avg_pool2d: output i averages inputs floor(i*in/out) .. ceil((i+1)*in/out)-1)."""
  rows = []
  for i in range(size_out):
    start, end = (i * size_in) // size_out, -(-((i + 1) * size_in) // size_out)
    rows.append([1.0 / (end - start) if start <= j < end else 0.0 for j in range(size_in)])
  return tf.constant(rows, tf.float32)


def adaptive_avg_pool(x, size):
  """Adaptive average pooling of [B, H, W, C] maps to ``size`` (differentiable)."""
  ph, pw = _pool_matrix(x.shape[1], size[0]), _pool_matrix(x.shape[2], size[1])
  return tf.einsum("ih,bhwc,jw->bijc", ph, x, pw)


def _match_size(student, teacher):
  """Pools the larger map to the smaller's spatial size, as RepDistiller's AT does."""
  (hs, ws), (ht, wt) = student.shape[1:3], teacher.shape[1:3]
  if hs * ws > ht * wt:
    student = adaptive_avg_pool(student, (ht, wt))
  elif ht * wt > hs * ws:
    teacher = adaptive_avg_pool(teacher, (hs, ws))
  return student, teacher


def attention(student_feature, teacher_feature, p=2.0):
  """Mean over positions of (a_S - a_T)^2 of the attention maps, per example."""
  s, t = _match_size(_f32(student_feature), _f32(teacher_feature))
  return tf.reduce_mean(tf.square(attention_map(s, p) - attention_map(t, p)), -1)


def _flatten(x):
  x = _f32(x)
  return tf.reshape(x, [tf.shape(x)[0], -1])


def sp(student_local, teacher_local, student_global, teacher_global):
  """Similarity-preserving KD: local rows' shares of ||G_T - G_S||_F^2 / B^2, where G is the
  row-normalised Gram matrix of the flattened features over the global batch."""
  def gram(local, glob):
    return tf.math.l2_normalize(tf.matmul(_flatten(local), _flatten(glob), transpose_b=True),
                                -1)
  diff = gram(teacher_local, teacher_global) - gram(student_local, student_global)
  batch = tf.cast(tf.shape(student_global)[0], tf.float32)
  return tf.reduce_sum(tf.square(diff), -1) / batch


def pkt(student_local, teacher_local, student_global, teacher_global, eps=1e-7):
  """PKT: KL between the rows of the teacher's and student's cosine-similarity kernels
  (shifted to [0, 1], rows normalised); local rows' shares of the mean over B^2 entries."""
  def kernel(local, glob):
    a = tf.math.l2_normalize(_flatten(local), -1)
    b = tf.math.l2_normalize(_flatten(glob), -1)
    k = (tf.matmul(a, b, transpose_b=True) + 1.0) / 2.0
    return k / tf.reduce_sum(k, -1, keepdims=True)
  s, t = kernel(student_local, student_global), kernel(teacher_local, teacher_global)
  batch = tf.cast(tf.shape(student_global)[0], tf.float32)
  return tf.reduce_sum(t * tf.math.log((t + eps) / (s + eps)), -1) / batch


def _smooth_l1(x):
  x = tf.abs(x)
  return tf.where(x < 1.0, 0.5 * tf.square(x), x - 0.5)


def _distances(local, glob, offset):
  """Euclidean distances [b, B] of local rows (global rows offset, offset + 1, ...) to every
  global row, 0 for a row and itself."""
  sq = (tf.reduce_sum(tf.square(local), -1)[:, None] + tf.reduce_sum(tf.square(glob), -1)[None]
        - 2.0 * tf.matmul(local, glob, transpose_b=True))
  self_mask = tf.one_hot(offset + tf.range(tf.shape(local)[0]), tf.shape(glob)[0])
  return tf.sqrt(tf.maximum(sq, 1e-12)) * (1.0 - self_mask)


def _angles(local, glob):
  """cos of the angle j-i-k for local i and global j, k: [b, B, B]."""
  diff = tf.math.l2_normalize(glob[None] - local[:, None], -1)
  return tf.matmul(diff, diff, transpose_b=True)


def rkd(student_local, teacher_local, student_global, teacher_global, offset,
        distance_weight=25.0, angle_weight=50.0):
  """RKD per example: distance (distances over the batch divided by their mean over the
  pairs of distinct examples, smooth L1) and angle (smooth L1 of the cosines of all
  triplets) shares of the local rows, which are global rows ``offset``, ``offset + 1``...
  """
  s_l, t_l = _flatten(student_local), _flatten(teacher_local)
  s_g, t_g = _flatten(student_global), _flatten(teacher_global)
  batch = tf.cast(tf.shape(s_g)[0], tf.float32)
  d_s = _distances(s_l, s_g, offset) / _mean_distance(s_g)
  d_t = _distances(t_l, t_g, offset) / _mean_distance(t_g)
  distance = tf.reduce_sum(_smooth_l1(d_s - d_t), -1) / batch
  angle = tf.reduce_sum(_smooth_l1(_angles(s_l, s_g) - _angles(t_l, t_g)), [1, 2]) / (
      batch * batch)
  return distance_weight * distance + angle_weight * angle


def _mean_distance(glob):
  """Mean Euclidean distance over the pairs of distinct examples of the global batch."""
  d = _distances(glob, glob, 0)
  n = tf.cast(tf.shape(glob)[0], tf.float32)
  return tf.reduce_sum(d) / tf.maximum(n * (n - 1.0), 1.0)


def crd_nce(scores, num_examples, eps=1e-7):
  """CRD's NCE loss per example from normalised scores [B, 1 + K] (positive first).

  With noise probability Pn = 1 / num_examples and K negatives, the critic of a pair is
  D = P / (P + K Pn); the loss is -(log D(positive) + sum_k log(1 - D(negative_k))).
  """
  scores = _f32(scores)
  k = tf.cast(tf.shape(scores)[1] - 1, tf.float32)
  noise = k / float(num_examples)
  positive = tf.math.log(scores[:, 0] / (scores[:, 0] + noise + eps))
  negatives = tf.reduce_sum(tf.math.log(noise / (scores[:, 1:] + noise + eps)), -1)
  return -(positive + negatives)
