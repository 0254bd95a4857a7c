"""The CIFAR family's feature lists against mdistiller's (models/cifar/vgg.py, wrn.py), which
the feature methods pair as ``feats[1:]`` (AT, NST, VID; OFD's ``get_stage_channels()[1:]``;
ReviewKD drops f0).

VGG: a float64 NumPy transcription of mdistiller's ``VGG.forward`` (blocks of conv(bias) ->
BN -> ReLU, the last ReLU of each block outside it, max pooling after blocks 0-2 and after
block 3 only on 64-pixel inputs, global average pooling, one linear layer), with the
model's own weights read back: its f1..f4 are our stage1..stage4, f0 our stem. WRN: the
reference's ``f3 = out`` is block 3's raw output, before ``relu(bn1(out))``.
"""

import numpy as np
import pytest

from kd_research.methods import maps
from kd_research.models import registry as model_registry
from kd_research.models import taps
from conftest import check


def np_conv3x3(x, kernel, bias):
  """Conv2d(kernel_size=3, padding=1) with a bias, NHWC, as loops over the kernel offsets."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
  for di in range(3):
    for dj in range(3):
      out += padded[:, di:di + x.shape[1], dj:dj + x.shape[2]] @ kernel[di, dj]
  return out + bias


def np_bn_eval(x, layer):
  """BatchNorm in inference mode with the layer's moving statistics."""
  mean, var, gamma, beta = (np.asarray(v, np.float64) for v in (
      layer.moving_mean, layer.moving_variance, layer.gamma, layer.beta))
  return (x - mean) / np.sqrt(var + layer.epsilon) * gamma + beta


def np_maxpool2(x):
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))


def mdistiller_vgg(x, blocks, convs, bns, dense):
  """VGG.forward: (logits, feats, preact_feats) as mdistiller returns them."""
  x = x / 255.0  # Our models take [0, 255] pixels and rescale inside.
  feats, preact, layer = [], [], 0
  for index, block in enumerate(blocks):
    for position in range(len(block)):
      x = np_bn_eval(np_conv3x3(x, convs[layer].kernel.numpy().astype(np.float64),
                                convs[layer].bias.numpy().astype(np.float64)), bns[layer])
      layer += 1
      if position < len(block) - 1:
        x = np.maximum(x, 0.0)  # ReLUs inside the block's Sequential
    preact.append(x)
    x = np.maximum(x, 0.0)  # F.relu after the block
    feats.append(x)
    if index < 3 or (index == 3 and x.shape[1] * 8 == 64):
      x = np_maxpool2(x)
  pooled = x.mean((1, 2))
  return pooled @ dense.kernel.numpy() + dense.bias.numpy(), feats, preact


@pytest.mark.parametrize("name,blocks", [("vgg8", (1, 1, 1, 1, 1)), ("vgg13", (2, 2, 2, 2, 2))])
def test_vgg_feature_list_is_mdistillers(name, blocks):
  rng = np.random.default_rng(0)
  model = model_registry.build(name, (32, 32, 3), 10, width=8)
  kinds = lambda kind: [l for l in model.layers if type(l).__name__ == kind]
  convs, bns, (dense,) = kinds("Conv2D"), kinds("BatchNormalization"), kinds("Dense")
  for bn in bns:  # Moving statistics away from their initial 0 / 1.
    bn.moving_mean.assign(rng.normal(0, 0.1, bn.moving_mean.shape).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, bn.moving_variance.shape).astype(np.float32))
  stages = taps.stage_names(model)
  assert stages == ("stage1", "stage2", "stage3", "stage4")
  names = ["stem", *stages, *taps.require_preact(model, stages, "model", "ofd")]
  x = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  outputs = [np.asarray(o) for o in taps.feature_model(model, names)(x, training=False)]
  logits, feats, preact = mdistiller_vgg(x.astype(np.float64), [[0] * n for n in blocks],
                                         convs, bns, dense)
  check(f"{name}_logits", outputs[0], logits, atol=1e-4)
  check(f"{name}_f0_stem", outputs[1], feats[0], atol=1e-4)
  for i in range(1, 5):  # feats[1:] and preact_feats[1:] are stage1..stage4 and their preacts
    check(f"{name}_f{i}", outputs[1 + i], feats[i], atol=1e-4)
    check(f"{name}_f{i}_pre", outputs[5 + i], preact[i], atol=1e-4)
  # mdistiller's get_stage_channels()[1:] at the published width.
  full = model_registry.build(name, (32, 32, 3), 100)
  assert [taps.shape(full, s) for s in stages] == [(16, 16, 128), (8, 8, 256), (4, 4, 512),
                                                    (4, 4, 512)]


def test_vgg13_to_vgg8_pairs_four_stages_as_mdistiller():
  teacher = model_registry.build("vgg13", (32, 32, 3), 100, width=8)
  student = model_registry.build("vgg8", (32, 32, 3), 100, width=8)
  assert maps.stage_pairs(student, teacher, "at") == [(f"stage{i}", f"stage{i}")
                                                      for i in range(1, 5)]


@pytest.mark.parametrize("name", ["wrn_16_2", "wrn_40_2"])
def test_wrn_stage3_is_block3s_raw_output(name):
  rng = np.random.default_rng(1)
  model = model_registry.build(name, (32, 32, 3), 100)
  final_bn = model.get_layer("stage3_preact_bn")
  final_bn.moving_mean.assign(rng.normal(0, 0.1, final_bn.moving_mean.shape).astype(np.float32))
  names = ["stage1", "stage2", "stage3", "stage3_preact", "pooled"]
  x = rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
  _, f1, f2, f3, f3_pre, pooled = [
      np.asarray(o, np.float64) for o in taps.feature_model(model, names)(x, training=False)]
  assert (f1.shape[1:], f2.shape[1:], f3.shape[1:]) == ((32, 32, 32), (16, 16, 64), (8, 8, 128))
  assert f3.min() < 0  # Raw: no ReLU after it.
  # out = relu(bn1(f3)); avg_pool2d(out, 8): the reference's pooled feature; f3_pre = bn1(f3).
  check(f"{name}_f3_pre", f3_pre, np_bn_eval(f3, final_bn), atol=1e-4)
  check(f"{name}_pooled", pooled, np.maximum(np_bn_eval(f3, final_bn), 0).mean((1, 2)),
        atol=1e-4)


def test_models_saved_with_the_earlier_taps_are_refused_for_feature_methods(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  from kd_research.common.errors import UserError  # pylint: disable=g-import-not-at-top
  inputs = keras.Input((8, 8, 3))
  x = keras.layers.Identity(name="stage5")(inputs)  # The old VGG layout had five stages.
  old = keras.Model(inputs, keras.layers.Dense(2, name="logits")(
      keras.layers.GlobalAveragePooling2D()(x)), name="vgg8")
  with pytest.raises(UserError, match="VGG's block 0 was stage1.*retrain"):
    taps.feature_model(old, ["stage5"])
  assert taps.feature_model(old, []) is old  # Logit methods read no taps: it still serves.
