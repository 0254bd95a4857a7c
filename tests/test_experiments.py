"""Every experiment module loads, and every preset validates."""

import os

import pytest

from kd_research import run_spec
from conftest import REPO, load_experiment

PRESETS = {"fashion_mnist": ["quick", "full", "tiny"], "cifar10_article": [None, "mini"],
           "fashion_mnist_schedules": [None], "fashion_mnist_multi_teacher": [None],
           "fashion_mnist_pretrained_teacher": [None, "imagenet"],
           "fashion_mnist_results": [None],
           "method_benchmark": ["article", "resnet", "article_features", "resnet_features",
                                "article_new_logit", "article_views",
                                 "article_born_again", "resnet_born_again", "vit",
                                 "vit_reverse", "vit_from_vit", "curve",
                                 "short", "long", "why", "tiny"],
           "cifar100_benchmark": ["resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2",
                                  "resnet56_resnet20", "vgg13_vgg8", "vgg13_mobilenetv2",
                                  "mini"],
           "imagenet_benchmark": ["resnet34_resnet18", "resnet50_mobilenetv1", "mini",
                                  "deit_tiny", "deit_mini"],
           "fashion_mnist_view_cache": [None]}


def test_every_experiment_module_is_covered():
  names = {f[:-3] for f in os.listdir(os.path.join(REPO, "experiments")) if f.endswith(".py")}
  assert names == set(PRESETS)


@pytest.mark.parametrize("name,preset", [(n, p) for n, ps in PRESETS.items() for p in ps])
def test_preset_validates_and_is_locked(name, preset):
  config = load_experiment(name, preset) if preset else load_experiment(name)
  run_spec.parse(config)
  with pytest.raises(AttributeError):
    config.distill.temprature = 4.0
  module = open(os.path.join(REPO, "experiments", f"{name}.py")).read()
  assert "./launch.sh" in module  # The docstring gives the launch command.


def test_cifar10_docstring_quotes_the_claimed_table():
  module = open(os.path.join(REPO, "experiments", "cifar10_article.py")).read()
  for figure in ("92.1%", "86.3%", "89.7%"):
    assert figure in module
  from experiments import cifar10_article  # The same figures, quoted by report --claims.
  for figure in ("92.1%", "86.3%", "89.7%"):
    assert figure in cifar10_article.CLAIMED_TABLE


def test_cifar100_protocol_and_claimed_table():
  from experiments import cifar100_benchmark  # pylint: disable=g-import-not-at-top
  config = load_experiment("cifar100_benchmark", "vgg13_mobilenetv2")
  assert config.optimizer.name == "sgd" and config.optimizer.l2 == 5e-4
  assert config.global_batch_size == 64 and config.student.epochs == 240
  lr = config.optimizer.learning_rate
  assert lr["values"] == pytest.approx((0.01, 0.001, 0.0001, 0.00001))  # MobileNetV2: 0.01.
  assert lr.boundaries == (150 / 240, 180 / 240, 210 / 240)
  assert tuple(config.augment.ops) == ("crop", "flip") and config.augment.crop_padding == 4
  resnet = load_experiment("cifar100_benchmark", "resnet56_resnet20")
  assert resnet.optimizer.learning_rate.start == 0.05
  assert resnet.pipeline.variants.dkd.dkd.beta == 2.0  # mdistiller's beta for this pair.
  assert resnet.pipeline.variants.kd.alpha == 0.9
  for figure in ("79.42", "72.50", "75.51", "76.32", "71.97", "73.09", "73.30", "72.97",
                 "75.63", "77.08", "73.39", "78.28", "76.67"):
    assert figure in cifar100_benchmark.CLAIMED_TABLE
  assert set(resnet.pipeline.variants) == set(cifar100_benchmark.METHODS)
  assert resnet.pipeline.variants.ofd.method == "ofd"


def test_imagenet_protocol_and_claimed_table():
  from experiments import imagenet_benchmark  # pylint: disable=g-import-not-at-top
  config = load_experiment("imagenet_benchmark", "resnet50_mobilenetv1")
  assert (config.teacher.model, config.student.model) == ("resnet50", "mobilenetv1")
  assert config.optimizer.name == "sgd" and config.optimizer.l2 == 1e-4
  assert config.image_size == 224 and config.data.train_view == "inception"
  lr = config.optimizer.learning_rate  # 0.1 at batch 256, x0.1 at epochs 30, 60, 90 of 100
  assert lr["values"] == pytest.approx((0.1, 0.01, 0.001, 0.0001))
  assert lr["boundaries"] == pytest.approx((0.3, 0.6, 0.9))
  assert imagenet_benchmark.learning_rate(512)["start"] == pytest.approx(0.2)
  for figure in ("71.03 (a)", "71.70 (a)", "72.05 (a)", "72.07 (b)", "73.31", "68.87"):
    assert figure in imagenet_benchmark.CLAIMED_TABLE


def test_deit_preset_is_deits_recipe():
  """facebookresearch/deit main.py: AdamW, lr 5e-4 x batch / 512, weight decay 0.05 (no decay
  on norms, biases, tokens), cosine to 1e-5 after 5 warm-up epochs from 1e-6, label
  smoothing 0.1, mixup 0.8, cutmix 1.0, random erasing 0.25, repeated augmentation 3,
  drop path 0.1, hard
  distillation alpha 0.5, 300 epochs; and DeiT's published rows in the claims."""
  from experiments import imagenet_benchmark  # pylint: disable=g-import-not-at-top
  config = load_experiment("imagenet_benchmark", "deit_tiny")
  assert (config.student.model, config.student.epochs) == ("deit_tiny_distilled", 300)
  assert config.optimizer.name == "adamw" and config.optimizer.weight_decay == 0.05
  assert not config.optimizer.decay_norms_biases_tokens and config.optimizer.l2 == 0.0
  lr = config.optimizer.learning_rate
  assert lr["kind"] == "cosine" and lr["start"] == pytest.approx(5e-4 * 1024 / 512)
  assert lr["end"] == pytest.approx(1e-5) and lr["warmup_from"] == pytest.approx(1e-6)
  assert lr["warmup_steps"] == 5 * ((1_281_167 - 10_000) // 1024)
  assert set(config.augment.ops) == {"randaugment", "erase", "mixup", "cutmix"}
  assert (config.augment.mixup_alpha, config.augment.cutmix_alpha,
          config.augment.erase_prob) == (0.8, 1.0, 0.25)
  assert config.student.drop_path == 0.1 and config.distill.method == "deit"
  assert config.augment.repeats == 3
  assert (config.distill.deit.type, config.distill.deit.alpha,
          config.distill.deit.label_smoothing) == ("hard", 0.5, 0.1)
  for figure in ("74.5", "72.2", "79.8", "81.2", "82.9"):
    assert figure in imagenet_benchmark.CLAIMED_TABLE


def test_cross_architecture_presets_have_the_rows_of_the_vit_pair():
  """method_benchmark:vit: the resnet pair's CNN teacher -> a ViT with a distillation token:
  labels only, kd on the class token, DeiT soft and hard, OFA-KD and DKD, every method's
  candidates but DeiT hard's (none); vit_reverse: a ViT teacher -> the resnet pair's student
  with kd and OFA-KD; vit_from_vit: the ViT student from that ViT teacher (kd, DeiT, NKD,
  ViTKD, NKD + ViTKD)."""
  resnet = load_experiment("method_benchmark", "resnet")
  vit, reverse, from_vit = (load_experiment("method_benchmark", preset)
                            for preset in ("vit", "vit_reverse", "vit_from_vit"))
  assert vit.teacher.to_dict() == resnet.teacher.to_dict()
  assert reverse.student.to_dict() == resnet.student.to_dict()
  assert reverse.optimizer.learning_rate.start == resnet.optimizer.learning_rate.start
  assert from_vit.teacher.to_dict() == reverse.teacher.to_dict()
  assert reverse.teacher.model == "vit_mini" and from_vit.student.to_dict() == (
      vit.student.to_dict())
  assert (vit.student.model, vit.student.epochs) == ("vit_mini_distilled", 40)
  deit = {name: (v.method, v.get("deit", {}).get("type")) for name, v in
          vit.pipeline.variants.items()}
  assert deit == {"kd": ("kd", None), "deit_soft": ("deit", "soft"),
                  "deit_hard": ("deit", "hard"), "ofa": ("ofa", None), "dkd": ("dkd", None)}
  assert set(vit.pipeline.candidates) == set(deit) - {"deit_hard"}
  assert set(reverse.pipeline.variants) == {"kd", "ofa"}
  assert set(from_vit.pipeline.variants) == {"kd", "deit_soft", "deit_hard", "nkd", "vitkd",
                                             "nkd_vitkd"}
  assert not from_vit.pipeline.variants.vitkd.cache_teacher  # ViTKD reads the tokens
  launch = open(os.path.join(REPO, "launch.sh")).read()
  for preset in ("vit", "vit_reverse", "vit_from_vit"):
    assert f"--experiment=method_benchmark:{preset} " in launch
