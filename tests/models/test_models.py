"""Model registry: shapes, sizes and the residual-block projection fix."""

import keras
import numpy as np
import pytest

from kd_research.models import cifar
from kd_research.models import vit
from kd_research.models import registry as model_registry
from kd_research.common.errors import UserError


def _width_and_fit(name, shape):
  """A small width for ``name`` and whether ``shape`` fits it (a ViT's patches must tile
  the image; its width must be a multiple of its heads: 12 is, for every ViT)."""
  if name.startswith(("deit_", "vit_")):
    return 12, shape[0] % vit.CONFIGS[name.removesuffix("_distilled")][3] == 0
  return (16 if name == "mlp" else 4), True


@pytest.mark.parametrize("name", model_registry.names())
@pytest.mark.parametrize("shape,classes", [((28, 28, 1), 10), ((32, 32, 3), 100)])
def test_every_model_builds_and_outputs_float32_logits(name, shape, classes):
  width, fits = _width_and_fit(name, shape)
  if not fits:  # 28 x 28 into DeiT's 16 x 16 patches: refused, naming the image size.
    with pytest.raises(UserError, match="divisible by 16"):
      model_registry.build(name, shape, classes, width=width)
    return
  model = model_registry.build(name, shape, classes, width=width)
  out = model(np.zeros((2,) + shape, np.float32), training=False)
  assert out.shape == (2, classes)
  assert out.dtype == "float32"


def test_seed_model_sizes():
  # Widths the issues quote: resnet_article at 32 is about 690K params, cnn_article at 32 about 93K.
  assert model_registry.build("resnet_article", (28, 28, 1), 10, width=32).count_params() == 689_098
  assert model_registry.build("cnn_article", (28, 28, 1), 10, width=32).count_params() == 93_322
  # The seed's CIFAR models at their default widths.
  teacher = model_registry.build("resnet_article", (32, 32, 3), 10).count_params()
  assert 1.0e6 < teacher < 3.0e6


def test_resnet_projects_shortcut_only_when_shape_changes():
  model = model_registry.build("resnet_article", (28, 28, 1), 10, width=8)
  one_by_one = [l for l in model.layers if getattr(l, "kernel_size", None) == (1, 1)]
  # Block 1 (1 -> 8 channels), block 3 (stride 2) and block 5 (stride 2) need projections.
  assert len(one_by_one) == 3


def test_unknown_model_lists_valid_names():
  with pytest.raises(UserError, match="cnn_article"):
    model_registry.build("vgg", (28, 28, 1), 10)


def test_width_zero_means_default():
  assert (model_registry.build("cnn_article", (28, 28, 1), 10, width=0).count_params() ==
          model_registry.build("cnn_article", (28, 28, 1), 10, width=32).count_params())
  with pytest.raises(UserError, match="width"):
    model_registry.build("cnn_article", (28, 28, 1), 10, width=-1)


def _trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", sorted(cifar.PUBLISHED_PARAMS_M))
def test_cifar_family_matches_published_parameter_counts(name):
  # Trainable parameters at 100 classes (BatchNorm moving statistics are buffers in the
  # references' counts) within one unit of the published figure's last digit (0.01M).
  count = _trainable(model_registry.build(name, (32, 32, 3), 100))
  assert abs(count / 1e6 - cifar.PUBLISHED_PARAMS_M[name]) <= 0.01, count


def test_cifar_family_exact_counts_from_the_reference_layer_lists():
  # Counted by hand from the reference PyTorch definitions (conv kernels, BN gamma/beta,
  # linear weight + bias), e.g. resnet8x4: stem 864 + 64, three stages with projection
  # 57,728 + 230,144 + 919,040, fc 25,700.
  expected = {"resnet8x4": 1_233_540, "wrn_16_2": 703_284, "vgg8": 3_965_028,
              "vgg13": 9_462_180}
  for name, count in expected.items():
    assert _trainable(model_registry.build(name, (32, 32, 3), 100)) == count, name


def test_cifar_family_taps_and_grayscale_inputs():
  model = model_registry.build("shufflenetv2", (28, 28, 1), 10)
  assert [l.name for l in model.layers if l.name.startswith("stage")] == [
      "stage1", "stage2", "stage3"]
  assert model.get_layer("pooled").output.shape[-1] == 1024
  assert model_registry.build("wrn_16_2", (28, 28, 1), 10).get_layer("stage3").output.shape[1:] == (
      7, 7, 128)


def test_shufflenet_saves_and_loads_with_safe_mode(tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  model = model_registry.build("shufflenetv2", (28, 28, 1), 10, width=8)
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.models.load_model(path, safe_mode=True, compile=False)
  x = np.random.default_rng(0).uniform(0, 255, (2, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


PREACT_MODELS = [n for n in model_registry.names() if n not in (
    "shufflenetv2", "mlp", "efficientnetb0", "mobilenetv2", "resnet50_keras")
                 and not n.startswith(("deit_", "vit_"))]  # No stages: tokens (test_vit.py).


@pytest.mark.parametrize("name", PREACT_MODELS)
def test_preactivation_taps_feed_the_stage_outputs(name):
  """stage<i>_preact is the tensor whose ReLU is stage i (MobileNetV2: the stage output
  itself, a linear bottleneck; WRN: the next block's first BN, or the final BN for stage3,
  of the raw stage output, so no identity: test_reference_parity checks it),
  and stage<i>_preact_bn is a BatchNorm (cnn_article has none)."""
  import keras  # pylint: disable=g-import-not-at-top
  from kd_research.models import taps  # pylint: disable=g-import-not-at-top
  shape = (64, 64, 3) if name in ("resnet18", "resnet34", "resnet50", "mobilenetv1") else (
      32, 32, 3)
  model = model_registry.build(name, shape, 10, 8 if name in ("resnet18", "resnet34",
                                                               "resnet50", "mobilenetv1") else None)
  stages = taps.stage_names(model)
  names = taps.require_preact(model, stages, "model", "ofd")
  outputs = taps.feature_model(model, list(stages) + names)(
      np.random.default_rng(0).uniform(0, 255, (2,) + shape).astype(np.float32), training=False)
  for i, stage in enumerate(stages):
    out, pre = np.asarray(outputs[1 + i]), np.asarray(outputs[1 + len(stages) + i])
    assert out.shape == pre.shape
    wrn = name.startswith("wrn")
    if name == "mobilenetv2_cifar":
      np.testing.assert_array_equal(out, pre)
    elif not wrn:
      np.testing.assert_array_equal(out, np.maximum(pre, 0.0))
      assert pre.min() < 0  # A real pre-activation, not the ReLU's output.
    bn = taps.preact_batch_norm(model, stage)
    assert (bn is None) == (name == "cnn_article")
    assert bn is None or isinstance(bn, keras.layers.BatchNormalization)


def test_models_without_preactivation_taps_are_named_in_the_error():
  from kd_research.models import taps  # pylint: disable=g-import-not-at-top
  model = model_registry.build("shufflenetv2", (32, 32, 3), 10, width=8)
  with pytest.raises(UserError, match=r"shufflenetv2 has no stage1_preact.*Identity"):
    taps.require_preact(model, ["stage1"], "teacher", "ofd")


def test_the_article_models_former_names_still_build_load_and_match_identities(tmp_path):
  """resnet_seed and cnn_seed were renamed resnet_article and cnn_article (the random seed
  is 'seed'): the old names build the same model, a run directory recorded with them has
  the same identity, and a .keras file saved under the old name loads."""
  from kd_research.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  assert model_registry.canonical("resnet_seed") == "resnet_article"
  assert model_registry.is_known("cnn_seed") and "cnn_seed" not in model_registry.names()
  keras.utils.set_random_seed(0)
  old = model_registry.build("cnn_seed", (28, 28, 1), 10, 4)
  keras.utils.set_random_seed(0)
  new = model_registry.build("cnn_article", (28, 28, 1), 10, 4)
  for a, b in zip(old.get_weights(), new.get_weights()):
    np.testing.assert_array_equal(a, b)
  identity = {"model": {"model": "cnn_article", "width": 4}, "role": "student"}
  recorded = {"model": {"model": "cnn_seed", "width": 4}, "role": "student"}
  assert workdir_lib.diff(recorded, identity) == {}
  assert workdir_lib.diff(dict(recorded, role="teacher"), identity) == {
      "role": ("teacher", "student")}
  path = str(tmp_path / "old.keras")
  keras.Model(old.inputs, old.outputs, name="cnn_seed").save(path)
  loaded = model_registry.load_keras(path)
  np.testing.assert_array_equal(loaded.get_weights()[0], old.get_weights()[0])
