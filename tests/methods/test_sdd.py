"""SDD against float64 NumPy transcriptions of shicaiwei123/SDD-CVPR2024: the SPP regions
(models/cifar/utils.py, M '[1,2,4]', PyTorch's adaptive pooling), the per-region classifier
(models/cifar/resnet.py, ResNet_SDD.forward), SD-KD's ``sdd_kd_loss`` (distillers/KD.py) and
SD-DKD's ``multi_dkd`` (distillers/SDD_DKD.py), whose batch means are the means over the
examples of ours."""

import numpy as np
import pytest

from kd_research.methods import sdd as sdd_lib
from conftest import check
from method_references import kl, np_pool, softmax


def reference_spp(x):
  """SPP.forward on [B, H, W, C] (ours is channels-last): [B, C, 21], 1x1 then 2x2 then 4x4."""
  x4 = np_pool(x, (4, 4))
  x2, x1 = np_pool(x4, (2, 2)), np_pool(x4, (1, 1))
  flat = [a.reshape(a.shape[0], -1, a.shape[-1]).transpose(0, 2, 1) for a in (x1, x2, x4)]
  return np.concatenate(flat, 2)


def reference_weights(out_t, target, m):
  """The masks of sdd_kd_loss / multi_dkd: index 1 or 2 per row of the [M * B] layout."""
  b = len(target)
  target_r = np.tile(target, m)
  pred = out_t.argmax(1)
  global_right = np.tile(pred[:b] == target, m)
  right = pred == target_r
  index = np.where(right == global_right, 1.0, 2.0)
  index[:b] = 1.0
  return index


def reference_sdd_kd(patch_s, patch_t, t, target):
  """sdd_kd_loss: patch logits [B, K, M] -> the batch loss."""
  m = patch_s.shape[2]
  out_s = patch_s.transpose(2, 0, 1).reshape(-1, patch_s.shape[1])
  out_t = patch_t.transpose(2, 0, 1).reshape(-1, patch_t.shape[1])
  loss = kl(softmax(out_t, t), softmax(out_s, t)) * t * t
  return (loss * reference_weights(out_t, target, m)).sum() / len(out_t)


def reference_multi_dkd(patch_s, patch_t, target, alpha, beta, t):
  """multi_dkd with mdistiller's dkd_loss (each row / (M * B))."""
  m, k = patch_s.shape[2], patch_s.shape[1]
  out_s = patch_s.transpose(2, 0, 1).reshape(-1, k)
  out_t = patch_t.transpose(2, 0, 1).reshape(-1, k)
  target_r = np.tile(target, m)
  rows = np.arange(len(target_r))
  ps, pt = softmax(out_s, t), softmax(out_t, t)
  b_s = np.stack([ps[rows, target_r], 1 - ps[rows, target_r]], 1)
  b_t = np.stack([pt[rows, target_r], 1 - pt[rows, target_r]], 1)
  mask = np.eye(k, dtype=bool)[target_r]
  ps2 = softmax(out_s / t - 1000.0 * mask)
  pt2 = softmax(out_t / t - 1000.0 * mask)
  tckd = kl(b_t, b_s) * t * t / len(target_r)
  nckd = kl(pt2, np.where(mask, 1.0, ps2)) * t * t / len(target_r)
  return ((alpha * tckd + beta * nckd) * reference_weights(out_t, target, m)).sum()


@pytest.mark.parametrize("size", [8, 7])  # 32x32 CIFAR's 8x8 map; a 28x28 input's 7x7
def test_regions_match_the_reference_spp(size):
  x = np.random.default_rng(size).normal(0, 1, (3, size, size, 5)).astype(np.float32)
  got = sdd_lib.region_features(x, (1, 2, 4)).numpy()
  check("sdd", got, reference_spp(x).transpose(0, 2, 1), atol=1e-6)


@pytest.mark.parametrize("kind", ["kd", "dkd"])
def test_sdd_loss_matches_the_reference(kind):
  rng = np.random.default_rng(1)
  b, k, m = 6, 5, 21
  patch_s = rng.normal(0, 2, (b, k, m)).astype(np.float32)
  patch_t = rng.normal(0, 2, (b, k, m)).astype(np.float32)
  target = rng.integers(0, k, b)
  patch_t[:, :, 0] += 4.0 * np.eye(k)[target] * (np.arange(b) % 2)[:, None]  # mixed rights
  got = sdd_lib.sdd_loss(patch_s.transpose(0, 2, 1), patch_t.transpose(0, 2, 1), target,
                         kind, 4.0, 1.0, 2.0).numpy()
  want = (reference_sdd_kd(patch_s, patch_t, 4.0, target) if kind == "kd"
          else reference_multi_dkd(patch_s, patch_t, target, 1.0, 2.0, 4.0))
  check("sdd", got.mean(), want, atol=2e-6)
  weights = sdd_lib.region_weights(patch_t.transpose(0, 2, 1), target).numpy()
  assert set(np.unique(weights)) == {1.0, 2.0} and (weights[:, 0] == 1.0).all()
