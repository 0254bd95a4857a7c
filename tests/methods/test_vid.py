"""VID against float64 NumPy: the regressor, the learnt variance, its initial value."""

import numpy as np

from kd_research.methods import vid as vid_lib
from conftest import check
from method_references import layers_of, np_pool, rng_maps


def test_vid_matches_numpy_and_starts_at_its_initial_variance():
  s, t = rng_maps(5, [(6, 8, 8, 3), (6, 4, 4, 5)])
  method = vid_lib.VID(1.0, 0.0, [1.0], [("s", "t")], init_variance=5.0, eps=1e-5)
  method.build({"s": s.shape[1:]}, [{"t": t.shape[1:]}])
  scale = method.owned[0]
  np.testing.assert_allclose(np.log1p(np.exp(scale.numpy().astype(np.float64))) + 1e-5, 5.0,
                             rtol=1e-6)
  scale.assign(np.linspace(-1.0, 2.0, 5).astype(np.float32))
  got = method.method_loss({}, {"features": {"s": s}}, {"features": [{"t": t}]}, 0, 0)
  x = np_pool(s.astype(np.float64), (4, 4))
  for i, conv in enumerate(layers_of(method.modules[0], "Conv2D")):
    x = x @ conv.kernel.numpy().astype(np.float64)[0, 0]
    x = np.maximum(x, 0.0) if i < 2 else x
  var = np.log1p(np.exp(scale.numpy().astype(np.float64))) + 1e-5
  want = (0.5 * ((x - t.astype(np.float64)) ** 2 / var + np.log(var))).mean((1, 2, 3))
  check("vid", got, want)
