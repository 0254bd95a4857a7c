"""The ViT / DeiT family: timm's parameter counts, a float64 NumPy transcription of timm's
forward (VisionTransformer / VisionTransformerDistilled), the taps, save and load, and a
run through the driver."""

import math

import keras
import numpy as np
import pytest

from kd_research.common.errors import UserError
from kd_research.models import registry
from kd_research.models import stochastic_depth
from kd_research.models import taps
from kd_research.models import vit
from kd_research.train import end_to_end
from conftest import DEFAULT, tiny_config

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(vit.TIMM_PARAMS))
def test_trainable_parameters_equal_timms_at_1000_classes_and_224_pixels(name):
  """timm 1.0: deit_{tiny,small,base}_patch16_224 and their distilled variants."""
  want = {"deit_tiny": 5_717_416, "deit_small": 22_050_664, "deit_base": 86_567_656,
          "deit_tiny_distilled": 5_910_800, "deit_small_distilled": 22_436_432,
          "deit_base_distilled": 87_338_192}[name]
  model = registry.build(name, (224, 224, 3), 1000)
  assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == want


def _layer_norm(x, layer):
  gamma, beta = (np.asarray(w, np.float64) for w in layer.get_weights())
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * gamma + beta


def _attention(x, layer, heads):
  """timm's Attention: qkv, softmax(q k^T / sqrt(dh)), output projection (Keras' weight
  layout: query/key/value kernels [D, H, dh], output kernel [H, dh, D])."""
  wq, bq, wk, bk, wv, bv, wo, bo = (np.asarray(w, np.float64) for w in layer.get_weights())
  q = np.einsum("btd,dhk->bhtk", x, wq) + bq[None, :, None, :]
  k = np.einsum("btd,dhk->bhtk", x, wk) + bk[None, :, None, :]
  v = np.einsum("btd,dhk->bhtk", x, wv) + bv[None, :, None, :]
  scores = np.einsum("bhtk,bhsk->bhts", q, k) / math.sqrt(q.shape[-1])
  scores = np.exp(scores - scores.max(-1, keepdims=True))
  attn = scores / scores.sum(-1, keepdims=True)
  return np.einsum("bhts,bhsk->bthk", attn, v).reshape(x.shape[0], x.shape[1], -1) @ (
      wo.reshape(-1, wo.shape[-1])) + bo


def _gelu(x):
  return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def timm_forward(model, images, patch, heads, distilled):
  """(class head, distillation head) of timm's forward, in float64 from the model's weights."""
  layers = {type(l).__name__: [] for l in model.layers}
  for layer in model.layers:
    layers[type(layer).__name__].append(layer)
  x = (images / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("patch_embed").get_weights())
  b, h, w, c = x.shape
  cells = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  tokens = cells.reshape(b, -1, patch * patch * c) @ kernel.reshape(-1, kernel.shape[-1]) + bias
  special, positions = (np.asarray(v, np.float64) for v in model.get_layer("tokens").get_weights())
  x = np.concatenate([np.repeat(special, b, 0), tokens], 1) + positions
  norms, denses = layers["LayerNormalization"], layers["Dense"]
  for i, attention in enumerate(layers["MultiHeadAttention"]):
    x = x + _attention(_layer_norm(x, norms[2 * i]), attention, heads)
    w1, b1 = (np.asarray(v, np.float64) for v in denses[2 * i].get_weights())
    w2, b2 = (np.asarray(v, np.float64) for v in denses[2 * i + 1].get_weights())
    x = x + _gelu(_layer_norm(x, norms[2 * i + 1]) @ w1 + b1) @ w2 + b2
  x = _layer_norm(x, model.get_layer("norm"))
  head = [np.asarray(v, np.float64) for v in model.get_layer("head").get_weights()]
  cls = x[:, 0] @ head[0] + head[1]
  if not distilled:
    return cls, None
  head_dist = [np.asarray(v, np.float64) for v in model.get_layer("head_dist").get_weights()]
  return cls, x[:, 1] @ head_dist[0] + head_dist[1]


@pytest.mark.parametrize("distilled", [False, True])
def test_the_forward_pass_is_timms(distilled):
  """Random weights (the position embeddings and tokens included), 16 x 16 x 3 images in
  4 x 4 patches, width 32, 2 blocks of 4 heads: training returns the class token's head,
  inference (distilled) the mean of the two heads, as DeiT's eval mode."""
  keras.utils.set_random_seed(3)
  model = vit.vision_transformer((16, 16, 3), 7, 32, 2, 4, 4, distilled)
  rng = np.random.default_rng(0)
  for v in model.weights:
    v.assign(rng.normal(0.0, 0.3, v.shape).astype(np.float32))
  images = rng.uniform(0, 255, (3, 16, 16, 3))
  cls, dist = timm_forward(model, images, 4, 4, distilled)
  np.testing.assert_allclose(model(images.astype(np.float32), training=True), cls,
                             rtol=1e-4, atol=1e-4)
  inference = cls if dist is None else (cls + dist) / 2
  np.testing.assert_allclose(model(images.astype(np.float32), training=False), inference,
                             rtol=1e-4, atol=1e-4)
  print(f"ViT (distilled={distilled}) vs NumPy timm forward: max |diff| "
        f"{np.max(np.abs(model(images.astype(np.float32), training=False) - inference)):.2e}")


def test_taps_save_and_load(tmp_path):
  """block<i> (all tokens), block<i>_map (the patch tokens as a map), pooled (the normed
  class token) and the heads; the model round-trips through a .keras file in safe mode."""
  model = registry.build("vit_mini_distilled", (28, 28, 1), 10)
  names = ["block2", "block2_map", "pooled", "pooled_dist", "head", "head_dist"]
  images = np.random.default_rng(1).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
  logits, *features = taps.feature_model(model, names)(images, training=False)
  out = dict(zip(names, (np.asarray(f) for f in features)))
  assert out["block2"].shape == (2, 2 + 49, 64) and out["block2_map"].shape == (2, 7, 7, 64)
  np.testing.assert_array_equal(out["block2_map"].reshape(2, 49, 64), out["block2"][:, 2:])
  assert out["pooled"].shape == (2, 64) == out["pooled_dist"].shape
  np.testing.assert_allclose(logits, (out["head"] + out["head_dist"]) / 2, atol=1e-6)
  path = str(tmp_path / "vit.keras")
  model.save(path)
  loaded = keras.saving.load_model(path, safe_mode=True)
  np.testing.assert_array_equal(loaded(images, training=False), model(images, training=False))


def test_stochastic_depth_reads_the_steps_uniforms():
  """timm's DropPath: keep an example's branch when u >= rate (floor(1 - rate + u)), scale
  the kept by 1 / (1 - rate); the rate rises linearly over the blocks to the model's
  drop_path; inference is the identity; the training step's draws are per example."""
  model = registry.build("vit_mini", (28, 28, 1), 10, 16, drop_path=0.1)
  layers = [l for l in model.layers if isinstance(l, stochastic_depth.DropPath)]
  np.testing.assert_allclose([l.rate for l in layers],
                             np.repeat(np.linspace(0, 0.1, 4), 2), atol=1e-7)
  assert [l.index for l in layers] == list(range(8)) and stochastic_depth.columns(model) == 8
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (6, 5, 3)).astype(np.float32)
  u = rng.uniform(0, 1, (6, 8)).astype(np.float32)
  layer = stochastic_depth.DropPath(0.3, index=5)
  with stochastic_depth.uniforms(u):
    got = np.asarray(layer(x, training=True))
  keep = np.floor(0.7 + u[:, 5])[:, None, None]
  np.testing.assert_allclose(got, x * keep / 0.7, rtol=1e-6)
  assert 0 < keep.sum() < 6
  np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
  assert stochastic_depth.columns(registry.build("vit_mini", (28, 28, 1), 10, 16)) == 0
  with pytest.raises(UserError, match=r"cnn_article has no stochastic depth .*vit_mini"):
    registry.build("cnn_article", (28, 28, 1), 10, 4, drop_path=0.1)


def test_each_replica_thread_reads_its_own_draws():
  """MirroredStrategy traces each replica's step in its own thread and switches threads at
  cross-replica calls: a DropPath traced in one thread while another thread is inside its
  own draws' block must still read its own."""
  import threading  # pylint: disable=g-import-not-at-top
  layer = stochastic_depth.DropPath(0.5, index=0)
  x = np.ones((2, 3), np.float32)
  a_in, b_in, a_done, seen = (threading.Event(), threading.Event(), threading.Event(), {})

  def replica_a():
    with stochastic_depth.uniforms(np.full((2, 1), 0.9, np.float32)):
      a_in.set()
      b_in.wait(10)  # replica b has entered its draws and waits inside its block
      seen["a"] = np.asarray(layer(x, training=True))
      a_done.set()

  def replica_b():
    a_in.wait(10)
    with stochastic_depth.uniforms(np.full((2, 1), 0.1, np.float32)):
      b_in.set()
      a_done.wait(10)
      seen["b"] = np.asarray(layer(x, training=True))

  threads = [threading.Thread(target=replica_a), threading.Thread(target=replica_b)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(20)
  np.testing.assert_array_equal(seen["a"], 2 * x)  # u 0.9 >= 0.5: kept, scaled by 1 / 0.5
  np.testing.assert_array_equal(seen["b"], 0 * x)  # u 0.1 < 0.5: dropped


def test_images_that_do_not_tile_into_patches_are_refused():
  with pytest.raises(UserError, match=r"30x30 images into 4x4 patches; use an image size "
                                      r"divisible by 4"):
    registry.build("vit_mini", (30, 30, 1), 10)
  with pytest.raises(UserError, match="width 66 is not a multiple of its 4 heads"):
    registry.build("vit_mini", (28, 28, 1), 10, width=66)


def test_a_vit_student_trains_through_the_driver(tmp_path):
  """A labels-only vit_mini_distilled student (width 16) on the tiny preset's synthetic
  28 x 28 images of 10 classes trains, evaluates its averaged heads and saves; 2 epochs lift
  it clearly above chance (0.10; 500 test examples: its std is 0.013)."""
  config = tiny_config(**{"student.model": "vit_mini_distilled", "student.width": 16,
                          "student.epochs": 2})
  results = end_to_end.train_and_evaluate(config, str(tmp_path / "vit"), "student", DEFAULT)
  assert results["test_accuracy"] > 0.15, results
  loaded = keras.saving.load_model(str(tmp_path / "vit" / "model.keras"))
  assert loaded.get_layer("head_dist").units == 10
