"""ViTKD against a float64 NumPy transcription of yzd-v/cls_KD mmcls/models/dis_losses/vitkd.py
(``ViTKDLoss.forward`` and ``random_masking``, the noise given; its sums over the batch / B
are the per-example sums averaged), with the same align, mask-token and conv weights; the
mask keeps the int(N (1 - lambda)) smallest draws; a ViT pair trains through the driver."""

import numpy as np
import pytest
import tensorflow as tf

from kd_research.methods import vitkd as vitkd_lib
from conftest import check
from method_references import np_conv


def reference_masking(noise, ratio):
  n = noise.shape[1]
  keep = int(n * (1 - ratio))
  ids_shuffle = np.argsort(noise, axis=1, kind="stable")
  ids_restore = np.argsort(ids_shuffle, axis=1, kind="stable")
  mask = np.ones_like(noise)
  mask[:, :keep] = 0
  return np.take_along_axis(mask, ids_restore, 1), ids_shuffle[:, :keep], ids_restore


def reference_vitkd(low_s, low_t, high_s, high_t, noise, w, alpha, beta, lam, hw):
  """ViTKDLoss.forward with weights ``w`` (numpy) and the masking noise given."""
  b = low_s.shape[0]
  xc = np.stack([low_s[:, i] @ w["low_k"][i] + w["low_b"][i] for i in range(2)], 1)
  loss_lr = ((xc - low_t) ** 2).sum() / b * alpha
  x = high_s @ w["high_k"] + w["high_b"]
  _, n, d = x.shape
  mat, ids_keep, ids_restore = reference_masking(noise, lam)
  x_keep = np.take_along_axis(x, ids_keep[..., None].repeat(d, -1), 1)
  x_ = np.concatenate([x_keep, np.repeat(w["token"], n - x_keep.shape[1], 1).repeat(b, 0)], 1)
  x = np.take_along_axis(x_, ids_restore[..., None].repeat(d, -1), 1)
  x = x.reshape(b, hw, hw, d)  # channels-last: the reference's permute to NCHW is undone here
  x = np_conv(np.maximum(np_conv(x, w["c1_k"], w["c1_b"]), 0), w["c2_k"], w["c2_b"])
  x = x.reshape(b, n, d)
  m = mat[..., None]
  loss_gen = ((x * m - high_t * m) ** 2).sum() / b * beta / lam
  return loss_lr + loss_gen


def test_masking_matches_the_reference():
  noise = np.random.default_rng(0).uniform(size=(3, 16)).astype(np.float32)
  want, _, _ = reference_masking(noise, 0.5)
  np.testing.assert_array_equal(vitkd_lib.masked_positions(noise, 0.5).numpy(), want)
  assert (want.sum(1) == 8).all()


@pytest.mark.parametrize("d_s,d_t", [(6, 10), (8, 8)])
def test_vitkd_matches_the_reference(d_s, d_t):
  rng = np.random.default_rng(d_s)
  b, hw = 3, 4
  n = hw * hw
  low_s, low_t = rng.normal(0, 1, (b, 2, n, d_s)), rng.normal(0, 1, (b, 2, n, d_t))
  high_s, high_t = rng.normal(0, 1, (b, n, d_s)), rng.normal(0, 1, (b, n, d_t))
  noise = rng.uniform(size=(b, n))
  aligned = d_s != d_t
  lows = [vitkd_lib.align_layer(d_s, d_t, f"l{i}") if aligned else None for i in range(2)]
  high = vitkd_lib.align_layer(d_s, d_t, "h") if aligned else None
  convs = [vitkd_lib.generation_conv(d_t, f"c{i}") for i in range(2)]
  token = rng.normal(0, 1, (1, 1, d_t)).astype(np.float32)
  eye = np.eye(d_s)
  w = {"low_k": [l.kernel.numpy() if l else eye for l in lows],
       "low_b": [l.bias.numpy() if l else 0.0 for l in lows],
       "high_k": high.kernel.numpy() if high else eye, "high_b": high.bias.numpy() if high else 0.0,
       "c1_k": convs[0].kernel.numpy(), "c1_b": convs[0].bias.numpy(),
       "c2_k": convs[1].kernel.numpy(), "c2_b": convs[1].bias.numpy(), "token": token}
  f32 = lambda a: tf.constant(a, tf.float32)
  mask = vitkd_lib.masked_positions(f32(noise), 0.5)
  mimic = vitkd_lib.mimicking([f32(low_s[:, i]) for i in range(2)],
                              [f32(low_t[:, i]) for i in range(2)], lows)
  gen = vitkd_lib.generation(f32(high_s), f32(high_t), mask, f32(token), high, convs, (hw, hw))
  got = (3e-5 * mimic + 3e-6 / 0.5 * gen).numpy().mean()
  want = reference_vitkd(low_s, low_t, high_s, high_t, noise, w, 3e-5, 3e-6, 0.5, hw)
  check("vitkd", got, want, rtol=1e-5)


def test_vitkd_builds_aligns_only_between_widths_that_differ():
  """Its modules per teacher: an align per shallow block and one for the last (16 -> 24,
  with biases, as the reference's nn.Linear) only when the widths differ, two 3x3 convs at
  the teacher's width and the mask token; none of them is in the student. The whole runs:
  tests/methods/test_deit.py (1 vs 2 replicas), tests/train/test_reliability.py (SIGKILL)."""
  from kd_research.methods import base  # pylint: disable=g-import-not-at-top
  from kd_research.methods import registry  # pylint: disable=g-import-not-at-top
  from kd_research.models import registry as model_registry  # pylint: disable=g-import-not-at-top
  from kd_research import run_spec  # pylint: disable=g-import-not-at-top
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  spec = run_spec.parse(tiny_config(**{"distill.method": "vitkd"}))
  sizes = {}
  for d_t in (24, 16):
    student = model_registry.build("vit_mini_distilled", (28, 28, 1), 10, 16)
    teacher = model_registry.build("vit_mini", (28, 28, 1), 10, d_t)
    ctx = base.BuildContext(spec.distill, student, teacher, [1.0], 3, 3, None, (teacher,))
    method = registry.build(ctx)
    ensemble = type("Ensemble", (), {"models": [teacher]})()
    variables = registry.build_variables(method, student, ensemble)
    sizes[d_t] = sum(int(np.prod(v.shape)) for v in variables)
    assert not {id(v) for v in variables} & {id(v) for v in student.weights}
  assert sizes[24] == 3 * (16 * 24 + 24) + 2 * (9 * 24 * 24 + 24) + 24
  assert sizes[16] == 2 * (9 * 16 * 16 + 16) + 16  # equal widths: no align
  assert method.student_taps == ("block1", "block2", "block4")
