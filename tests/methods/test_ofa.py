"""OFA-KD against float64 NumPy transcriptions of Hao840/OFAKD: its modulated loss
(distillers/ofa.py, ofa_loss), its stage branches layer by layer (SepConv, PatchMerging,
timm's Block: distillers/utils.py), their sizes at the reference's own pairs, its stage
choice (custom_forward's stage_info) and train.py's defaults."""

import math

import numpy as np
import pytest

from kd_research import run_spec
from kd_research.common.errors import UserError
from kd_research.methods import base
from kd_research.methods import ofa as ofa_lib
from kd_research.methods import ofa_branches
from kd_research.methods import registry as method_registry
from kd_research.models import registry as model_registry
from conftest import check, tiny_config
from method_references import case, layers_of, np_bn_train, softmax

ERF = np.vectorize(math.erf)


def reference_ofa_loss(student, teacher, labels, eps, temperature):
  """ofa_loss: sum(-((p_t + mask)^eps - mask) * log(p_s)), per example (before .mean())."""
  mask = np.eye(student.shape[-1])[labels if labels.ndim == 1 else labels.argmax(-1)]
  prod = (softmax(teacher, temperature) + mask) ** eps
  return (-(prod - mask) * np.log(softmax(student, temperature))).sum(-1)


@pytest.mark.parametrize("eps, temperature", [(1.0, 1.0), (1.5, 1.0), (0.8, 2.0)])
@pytest.mark.parametrize("mixed", [False, True])
def test_the_modulated_loss_is_the_references(eps, temperature, mixed):
  student, teacher, labels, _, _ = case(11)
  if mixed:  # a mixed label: the reference takes its argmax as the target class
    eye = np.eye(student.shape[-1])
    labels = (0.7 * eye[labels] + 0.3 * eye[np.roll(labels, 1)]).astype(np.float32)
  mask = ofa_lib.target_mask(labels, student.shape[-1])
  got = ofa_lib.modulated_loss(student, teacher, mask, eps, temperature)
  want = reference_ofa_loss(student.astype(np.float64), teacher.astype(np.float64), labels,
                            eps, temperature)
  check(f"ofa loss eps {eps} T {temperature}", got, want)


def test_eps_one_is_cross_entropy_with_the_teacher():
  student, teacher, labels, _, _ = case(12)
  got = ofa_lib.modulated_loss(student, teacher, ofa_lib.target_mask(labels, 7), 1.0, 1.0)
  want = -(softmax(teacher) * np.log(softmax(student))).sum(-1)
  check("ofa eps 1 = CE(p_t)", got, want)


def test_the_total_weighs_branches_logits_and_smoothed_ce():
  student, teacher, labels, _, _ = case(13)
  branch = np.random.default_rng(14).normal(0, 2, student.shape).astype(np.float32)
  method = ofa_lib.OFA([("stage3", 4)], (1.2, 1.5), 2.0, 0.5, 0.25, 0.75, 0.1, [1.0], [])
  method.modules = [lambda x, training: x]  # the branch: its input, to check the sum alone
  terms = method.terms({"label": labels}, {"logits": student, "features": {"stage3": branch}},
                       {"logits": teacher[None]}, 0)
  s64, t64 = student.astype(np.float64), teacher.astype(np.float64)
  targets = np.eye(7)[labels] * 0.9 + 0.1 / 7
  want = (0.75 * (-targets * np.log(softmax(s64))).sum(-1)
          + 0.25 * reference_ofa_loss(s64, t64, labels, 1.5, 2.0)
          + 0.5 * reference_ofa_loss(branch.astype(np.float64), t64, labels, 1.2, 2.0))
  check("ofa total", terms["total"], want)


def test_defaults_are_the_reference_train_py_values():
  assert ofa_lib.OFA.defaults == dict(stages=(), eps=(1.0,), temperature=1.0, weight=1.0,
                                      kd_weight=1.0, label_smoothing=0.1)


# NumPy forward passes of the branches (training mode: batch statistics), from the layers'
# own weights.

def np_depthwise(x, kernel, stride):
  """3x3 depthwise conv, padding 1 on every side (PyTorch's), ``stride``."""
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows, cols = (x.shape[1] + 2 - 3) // stride + 1, (x.shape[2] + 2 - 3) // stride + 1
  out = np.zeros((x.shape[0], rows, cols, x.shape[-1]))
  for di in range(3):
    for dj in range(3):
      out += (padded[:, di:di + stride * (rows - 1) + 1:stride,
                     dj:dj + stride * (cols - 1) + 1:stride] * kernel[di, dj, :, 0])
  return out


def np_cnn_branch(model, x):
  depthwise = iter(layers_of(model, "DepthwiseConv2D"))
  pointwise = iter(layers_of(model, "Conv2D"))
  norms = iter(layers_of(model, "BatchNormalization"))
  w = lambda layer: np.asarray(layer.kernel, np.float64)  # noqa: E731
  for _ in range(len(layers_of(model, "DepthwiseConv2D")) // 2):  # SepConv blocks
    x = np_depthwise(x, w(next(depthwise)), 2) @ w(next(pointwise))[0, 0]
    x = np.maximum(np_bn_train(x, next(norms)), 0)
    x = np_depthwise(x, w(next(depthwise)), 1) @ w(next(pointwise))[0, 0]
    x = np.maximum(np_bn_train(x, next(norms)), 0)
  for conv in pointwise:  # stage 4: the 1x1 conv with bias
    x = x @ w(conv)[0, 0] + np.asarray(conv.bias)
  head = layers_of(model, "Dense")[-1]
  return x.mean((1, 2)) @ w(head) + np.asarray(head.bias)


def np_layer_norm(x, layer):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return ((x - mean) / np.sqrt(var + layer.epsilon) * np.asarray(layer.gamma)
          + np.asarray(layer.beta))


def np_gelu(x):
  return 0.5 * x * (1 + ERF(x / math.sqrt(2)))


def np_dense(x, layer):
  out = x @ np.asarray(layer.kernel, np.float64)
  return out + np.asarray(layer.bias) if layer.use_bias else out


def np_timm_block(x, norm1, attention, norm2, fc1, fc2, heads=4):
  b, n, d = x.shape
  qkv = np_dense(np_layer_norm(x, norm1), attention.qkv).reshape(b, n, 3, heads, d // heads)
  q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # timm: permute(2, 0, 3, 1, 4)
  weights = softmax(q @ k.transpose(0, 1, 3, 2) * (d // heads) ** -0.5)
  x = x + np_dense((weights @ v).transpose(0, 2, 1, 3).reshape(b, n, d), attention.proj)
  return x + np_dense(np_gelu(np_dense(np_layer_norm(x, norm2), fc1)), fc2)


def np_vit_branch(model, x, grid, num_tokens, merges):
  norms = iter(layers_of(model, "LayerNormalization"))
  dense = iter(layers_of(model, "Dense"))
  tokens, patches = x[:, :num_tokens], x[:, num_tokens:]
  for i in range(merges):  # PatchMerging: x0 (0::2, 0::2), x1 (1::2, 0::2), x2, x3
    p = patches.reshape(len(x), grid, grid, -1)
    p = np.concatenate([p[:, 0::2, 0::2], p[:, 1::2, 0::2], p[:, 0::2, 1::2],
                        p[:, 1::2, 1::2]], -1)
    grid //= 2
    patches = np_dense(np_layer_norm(p.reshape(len(x), grid * grid, -1), next(norms)),
                       next(dense))
    if i == 0 or i != merges - 1:
      patches = np_gelu(patches)
  x = np.concatenate([tokens, patches], 1)
  for attention in layers_of(model, "Attention"):
    norm1, norm2, fc1, fc2 = next(norms), next(norms), next(dense), next(dense)
    x = np_timm_block(x, norm1, attention, norm2, fc1, fc2)
  return np_dense(x[:, 0], next(dense))


@pytest.mark.parametrize("stage", [2, 4])
def test_a_cnn_branch_is_the_references(stage):
  model = randomised(ofa_branches.cnn_branch((8, 8, 6), stage, 20, 7, "branch"), stage)
  x = np.random.default_rng(stage).normal(0, 1, (5, 8, 8, 6)).astype(np.float32)
  assert len(layers_of(model, "DepthwiseConv2D")) == 2 * (4 - stage)
  check(f"ofa cnn branch, stage {stage}", model(x, training=True),
        np_cnn_branch(model, x.astype(np.float64)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("grid, num_tokens, stage, merges", [(14, 1, 3, 1), (7, 2, 1, 0),
                                                             (28, 1, 4, 2)])
def test_a_vit_branch_is_the_references(grid, num_tokens, stage, merges):
  assert ofa_branches.merge_count(grid) == merges
  model = randomised(ofa_branches.vit_branch((num_tokens + grid * grid, 16), (grid, grid),
                                             num_tokens, stage, 7, "branch"), grid)
  assert len(layers_of(model, "Attention")) == max(4 - stage, 1)
  x = np.random.default_rng(grid).normal(0, 1, (3, num_tokens + grid * grid, 16))
  check(f"ofa vit branch, grid {grid}, stage {stage}", model(x.astype(np.float32)),
        np_vit_branch(model, x, grid, num_tokens, merges), rtol=1e-4, atol=1e-5)


def randomised(model, seed):
  """``model`` with every weight redrawn from N(0, 0.5) (moving variances |N| + 0.5): the
  initialisation's small values would hide a wrong scale or order."""
  rng = np.random.default_rng(seed)
  model.set_weights([np.abs(rng.normal(0, 0.5, w.shape)) + 0.5 if "variance" in w.path
                     else rng.normal(0, 0.5, w.shape) for w in model.weights])
  return model


def trainable(model):
  return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_branch_sizes_at_the_reference_pairs():
  """ResNet-18 student (DeiT-T teacher: dim max(512, 192)) and DeiT-T student, stage 1, at
  1,000 classes, counted from the reference's module list."""
  def sep(cin, cout):  # dw 3x3, pw, BN, dw 3x3, pw, BN
    return 9 * cin + cin * cin + 2 * cin + 9 * cin + cin * cout + 2 * cout
  resnet = ofa_branches.cnn_branch((56, 56, 64), 1, 512, 1000, "b")
  assert trainable(resnet) == sep(64, 128) + sep(128, 256) + sep(256, 512) + 512 * 1000 + 1000
  stage4 = ofa_branches.cnn_branch((7, 7, 512), 4, 512, 1000, "b")
  assert trainable(stage4) == 512 * 512 + 512 + 512 * 1000 + 1000
  d = 192
  block = 2 * d + 3 * d * d + d * d + d + 2 * d + 4 * d * d + 4 * d + 4 * d * d + d
  deit = ofa_branches.vit_branch((197, d), (14, 14), 1, 1, 1000, "b")
  assert trainable(deit) == 2 * 4 * d + 4 * d * d + 3 * block + d * 1000 + 1000


def test_the_reference_stages_of_a_cnn_and_a_vit():
  assert ofa_lib.default_vit_blocks(12) == (2, 4, 10, 12)
  assert [ofa_lib.reference_vit_stage(b, 12) for b in (2, 4, 10, 12)] == [1, 2, 3, 4]
  assert [ofa_lib.reference_vit_stage(b, 12) for b in (1, 3, 9, 11)] == [1, 2, 3, 4]
  resnet18 = model_registry.build("resnet18", (64, 64, 3), 10)
  assert ofa_lib.student_stages(resnet18, ()) == [
      ("stage1", 1), ("stage2", 2), ("stage3", 3), ("stage4", 4)]
  three_stages = model_registry.build("resnet_article", (28, 28, 1), 10, 8)
  assert ofa_lib.student_stages(three_stages, ("stage2",)) == [("stage2", 3)]
  vit_mini = model_registry.build("vit_mini", (28, 28, 1), 10, 16)  # depth 4
  assert ofa_lib.student_stages(vit_mini, ()) == [("block1", 1), ("block3", 3), ("block4", 4)]


def build_ofa(student, teacher, **section):
  spec = run_spec.parse(tiny_config(**{"distill.method": "ofa", **{
      f"distill.ofa.{k}": v for k, v in section.items()}}))
  return method_registry.build(base.BuildContext(spec.distill, student, teacher, [1.0], 10,
                                                 100))


def test_bad_stages_and_eps_are_refused():
  student = model_registry.build("resnet_article", (28, 28, 1), 10, 8)
  teacher = model_registry.build("vit_mini", (28, 28, 1), 10, 16)
  with pytest.raises(UserError, match=r"no stage 'block2'; valid: stage1, stage2, stage3"):
    build_ofa(student, teacher, stages=("block2",))
  with pytest.raises(UserError, match=r"eps has 2 values for 3 stages .*give one value, or 4"):
    build_ofa(student, teacher, eps=(1.0, 1.5))
  with pytest.raises(UserError, match=r"ofa\.eps=\(0\.0,\): one or more values > 0"):
    build_ofa(student, teacher, eps=(0.0,))
  mlp = model_registry.build("mlp", (28, 28, 1), 10, 16)
  with pytest.raises(UserError, match="vector stages"):
    build_ofa(mlp, teacher)


@pytest.mark.parametrize("method", ["at", "nst", "vid"])
def test_map_methods_refuse_a_vit_naming_ofa(method):
  spec = run_spec.parse(tiny_config(**{"distill.method": method}))
  student = model_registry.build("vit_mini", (28, 28, 1), 10, 16)
  teacher = model_registry.build("resnet_article", (28, 28, 1), 10, 8)
  for pair in ((student, teacher), (teacher, student)):
    with pytest.raises(UserError, match=r"vision transformer.*method=ofa \(OFA-KD"):
      method_registry.build(base.BuildContext(spec.distill, *pair, [1.0], 10, 100))


def test_a_vit_teacher_teaches_a_cnn_student_and_a_cnn_teacher_a_vit():
  """Both directions build and give finite terms on one batch (the teacher's logits only)."""
  from kd_research.methods import registry as registry_lib  # pylint: disable=g-import-not-at-top
  from kd_research.models import taps  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).uniform(0, 255, (4, 28, 28, 1)).astype(np.float32)
  for s_name, t_name in (("resnet_article", "vit_mini"), ("vit_mini_distilled",
                                                          "resnet_article")):
    student = model_registry.build(s_name, (28, 28, 1), 10, 16)
    teacher = model_registry.build(t_name, (28, 28, 1), 10, 16)
    method = build_ofa(student, teacher)
    assert not method.teacher_taps  # the cache can serve it
    registry_lib.build_variables(method, student, type("Ensemble", (), {"models": [teacher]}))
    outputs = taps.feature_model(student, method.student_taps)(x, training=True)
    terms = method.terms({"label": np.arange(4)},
                         {"logits": outputs[0],
                          "features": dict(zip(method.student_taps, outputs[1:]))},
                         {"logits": teacher(x)[None]}, 0)
    assert all(np.all(np.isfinite(v)) for v in terms.values()), (s_name, terms)
    assert len(method.modules) == len(method.stages) == 3
