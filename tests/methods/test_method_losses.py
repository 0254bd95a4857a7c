"""The methods' losses against float64 NumPy written from the papers' formulas.

Each reference below is an independent transcription of the paper's definition (batch
means, not the TF code's per-example shares); relational losses are also checked to
split exactly over two "replicas" (local rows against the global batch).
"""

import numpy as np
import pytest

from kd_research.methods import losses
from kd_research.methods import at as at_lib
from kd_research.methods import dist as dist_lib
from kd_research.methods import dkd as dkd_lib
from kd_research.methods import fitnets as fitnets_lib
from kd_research.methods import logit_standardization as ls
from kd_research.methods import pkt as pkt_lib
from kd_research.methods import rkd as rkd_lib
from kd_research.methods import sp as sp_lib
from conftest import check

RELATIVE = {}  # name -> max relative error, printed for the closing note.


def softmax(z, t=1.0):
  z = np.asarray(z, np.float64) / t
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def kl(p, q):
  return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300)) - np.log(q)), 0.0), -1)


def case(seed, b=12, c=7, d=5):
  rng = np.random.default_rng(seed)
  return (rng.normal(0, 3, (b, c)).astype(np.float32), rng.normal(0, 3, (b, c)).astype(np.float32),
          rng.integers(0, c, b).astype(np.int32), rng.normal(0, 1, (b, 4, 4, d)).astype(np.float32),
          rng.normal(0, 1, (b, 4, 4, d + 2)).astype(np.float32))


@pytest.mark.parametrize("seed,t", [(0, 1.0), (1, 4.0), (2, 8.0)])
def test_dkd_matches_numpy_and_decomposes_kd(seed, t):
  s, te, y, _, _ = case(seed)
  tckd, nckd = dkd_lib.dkd_terms(s, te, y, t)
  ps, pt = softmax(s, t), softmax(te, t)
  rows = np.arange(len(y))
  b_s = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
  b_t = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
  mask = np.eye(s.shape[1], dtype=bool)[y]
  hat_s = np.where(mask, 0, ps) / (1 - ps[rows, y])[:, None]
  hat_t = np.where(mask, 0, pt) / (1 - pt[rows, y])[:, None]
  atol = 2e-6 * t * t  # float32 rounding of the KL sums, magnified by T^2.
  check("dkd", tckd, t * t * kl(b_t, b_s), atol=atol)
  check("dkd", nckd, t * t * kl(hat_t, np.where(mask, 1, hat_s)), atol=atol)
  # The paper's identity (eq. 1-3): KD = TCKD + (1 - p_t^T) NCKD.
  kd = t * t * kl(pt, ps)
  check("dkd", tckd.numpy() + (1 - pt[rows, y]) * nckd.numpy(), kd, atol=atol)


def test_logit_standardization_is_invariant_to_shift_and_scale():
  s, te, _, _, _ = case(3)
  z = ls.standardize(s).numpy()
  want = (s - s.mean(-1, keepdims=True)) / (1e-7 + s.std(-1, ddof=1, keepdims=True))
  check("ls", z, want)
  kd = losses.kl_divergence(ls.standardize(s), ls.standardize(te), 2.0).numpy()
  moved = losses.kl_divergence(ls.standardize(3.0 * s + 5.0), ls.standardize(0.5 * te - 2.0),
                               2.0).numpy()
  np.testing.assert_allclose(moved, kd, rtol=1e-4, atol=1e-6)


def pearson_rows(a, b):
  a = a - a.mean(-1, keepdims=True)
  b = b - b.mean(-1, keepdims=True)
  return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_dist_matches_numpy(tau):
  s, te, _, _, _ = case(4)
  ys, yt = softmax(s, tau), softmax(te, tau)
  check("dist", dist_lib.dist_inter(s, te, tau), tau**2 * (1 - pearson_rows(ys, yt)))
  intra = tau**2 * (1 - pearson_rows(ys.T, yt.T).mean())
  check("dist", dist_lib.dist_intra(s, te, tau, 5), np.full(5, intra))
  atol = 1e-6 * tau * tau  # float32 rounding of 1 - correlation, magnified by tau^2.
  np.testing.assert_allclose(dist_lib.dist_inter(s, s, tau).numpy(), 0.0, atol=atol)
  np.testing.assert_allclose(dist_lib.dist_intra(s, s, tau, 3).numpy(), 0.0, atol=atol)


def test_hint_and_attention_match_numpy():
  _, _, _, fs, ft = case(5)
  check("fitnets", fitnets_lib.hint(fs, fs[..., ::-1] * 2), ((fs - fs[..., ::-1] * 2) ** 2).mean((1, 2, 3)))
  np.testing.assert_allclose(fitnets_lib.hint(fs, fs).numpy(), 0.0, atol=1e-7)

  def at(f):
    a = (np.abs(f.astype(np.float64)) ** 2).mean(-1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)
  check("at", at_lib.attention(fs, ft), ((at(fs) - at(ft)) ** 2).mean(-1))
  np.testing.assert_allclose(at_lib.attention(fs, fs).numpy(), 0.0, atol=1e-7)
  # Maps of different sizes: the larger is average-pooled to the smaller.
  big = np.repeat(np.repeat(fs, 2, 1), 2, 2)
  np.testing.assert_allclose(at_lib.attention(big, ft).numpy(), at_lib.attention(fs, ft).numpy(),
                             rtol=1e-5, atol=1e-7)


def np_sp(fs, ft):
  def gram(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    g = f @ f.T
    return g / np.linalg.norm(g, axis=1, keepdims=True)
  return ((gram(ft) - gram(fs)) ** 2).sum() / len(fs) ** 2


def np_pkt(fs, ft, eps=1e-7):
  def kernel(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    k = (f @ f.T + 1) / 2
    return k / k.sum(1, keepdims=True)
  s, t = kernel(fs), kernel(ft)
  return (t * np.log((t + eps) / (s + eps))).mean()


def np_rkd(fs, ft, wd=25.0, wa=50.0):
  def dist(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    d = np.linalg.norm(f[:, None] - f[None], axis=-1)
    return d / d[~np.eye(len(f), dtype=bool)].mean()

  def angle(f):
    f = f.reshape(len(f), -1).astype(np.float64)
    diff = f[None] - f[:, None]
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    diff = np.where(norm > 0, diff / np.maximum(norm, 1e-300), 0.0)
    return np.einsum("ijd,ikd->ijk", diff, diff)

  def smooth_l1(x):
    x = np.abs(x)
    return np.where(x < 1, 0.5 * x * x, x - 0.5)
  return wd * smooth_l1(dist(fs) - dist(ft)).mean() + wa * smooth_l1(angle(fs) - angle(ft)).mean()


@pytest.mark.parametrize("name", ["sp", "pkt", "rkd"])
def test_relational_losses_match_numpy_and_split_over_replicas(name):
  _, _, _, fs, ft = case(6, b=10)
  fs_pooled, ft_pooled = fs.mean((1, 2)), ft.mean((1, 2))
  fn = {"sp": lambda sl, tl, sg, tg, o: sp_lib.sp(sl, tl, sg, tg),
        "pkt": lambda sl, tl, sg, tg, o: pkt_lib.pkt(sl, tl, sg, tg),
        "rkd": lambda sl, tl, sg, tg, o: rkd_lib.rkd(sl, tl, sg, tg, o)}[name]
  ref = {"sp": np_sp, "pkt": np_pkt, "rkd": np_rkd}[name]
  s, t = (fs, ft) if name == "sp" else (fs_pooled, ft_pooled)
  whole = fn(s, t, s, t, 0).numpy()
  check(name, whole.mean(), ref(s, t))
  # Two replicas: each computes its rows against the global batch; the shares add up.
  halves = [fn(s[i:i + 5], t[i:i + 5], s, t, i).numpy() for i in (0, 5)]
  np.testing.assert_allclose(np.concatenate(halves), whole, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(fn(s, s, s, s, 0).numpy(), 0.0, atol=1e-6)
