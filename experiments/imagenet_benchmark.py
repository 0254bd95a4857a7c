"""The ImageNet KD benchmark (mdistiller / torchdistill protocol), ready for GPUs.

    ./launch.sh convert --source=folder:/data/imagenet --output=/data/imagenet_tfr --shards=1024
    ./launch.sh pipeline --experiment=imagenet_benchmark:resnet34_resnet18 \\
        --workdir=runs/imagenet/resnet34_resnet18 --config.dataset=tfrecord:/data/imagenet_tfr
    ./launch.sh report --workdir=runs/imagenet --output=results/RESULTS_IMAGENET.md \\
        --claims=imagenet_benchmark

``--config.dataset`` takes the ImageNet folder itself (``folder:/data/imagenet`` with
train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, ImageFolder's layout) or its TFRecord shards
(the converter's, or the common converters' ``tfrecord:/data/imagenet/train-*`` with
``--config.data.label_offset=1``). Presets: resnet34_resnet18 and resnet50_mobilenetv1
(the two pairs of every KD paper's ImageNet table) and ``mini`` (the same pipeline for a
few steps on a generated JPEG folder; the tests run it); ``deit_tiny`` (DeiT's recipe and
hard distillation through the distillation token, ``deit_recipe``; ``distill`` it from a
trained CNN teacher: --config.teacher.path) and ``deit_mini`` (that recipe on the mini
folder; repeated augmentation reads images by row: a folder, not TFRecord shards).
Departures of the DeiT presets from DeiT's main.py: RandAugment is the one of
data/randaugment.py (2 ops per image,
uniform magnitudes) where DeiT's is timm's rand-m9-mstd0.5-inc1; mixup and cutmix switch
per example (timm: per batch); the teacher is not RegNetY-16GF. Each pair preset trains the
teacher, the labels-only student and one student per method over seed 0 (ImageNet runs
are long; add seeds with --config.pipeline.seeds=0,1,2); rerunning skips finished runs.

Protocol (both references): SGD momentum 0.9, learning rate 0.1 at batch 256 scaled
linearly with the global batch (0.2 at mdistiller's 512), x0.1 at epochs 30, 60 and 90 of
100, weight decay 1e-4 added to the gradient as PyTorch's SGD does (``optimizer.l2``);
training view: inception crop 224 + flip (``data.train_view=inception``), evaluation:
resize 256 + centre crop 224; the teacher sees the student's view. Loss weights as the
references' ImageNet configs: kd CE 0.5 + KD 0.5 at T 1 (mdistiller configs/imagenet/
r34_r18/kd.yaml), dkd CE 1, alpha 1, beta 0.5, T 1, 1 warm-up epoch (dkd.yaml), at weight
1000 (mdistiller's default), crd weight 0.8, 16,384 negatives (crd.yaml and its defaults),
dist weight 2, beta 1, gamma 1, tau 1 (DIST_KD's resnet_dist.yaml: kd_loss_weight 2,
method ``dist`` = tau 1). The validation split is
10,000 training images (the references train on all 1.28M); we report the last epoch.

Cost (an estimate from FLOPs, not a measurement: this project's machines have no GPU).
Forward GFLOP per 224x224 image from ``kd_research.tools.bench_runs.forward_flops``:
ResNet-34 7.3, ResNet-18 3.6, ResNet-50 8.2, MobileNet-V1 1.1. One distillation epoch is
1.27M x (3 x student + teacher) forward FLOPs: 23 PFLOP for R34 -> R18, 15 PFLOP for
R50 -> MV1; 100 epochs 2.3 and 1.5 EFLOP. At an assumed sustained 100 TFLOP/s (mixed
precision on an A100-class GPU) that is about 6.4 and 4.2 GPU-hours of arithmetic per run;
in practice ImageNet ResNet-18 runs are bound by the input: the step wants some 3,000
images/s per GPU, and our inception pipeline measured 1,412 images/s per core on generated
500x375 JPEGs (docs/research.md: bench --data), so 2-3 cores per GPU on those and more on natural
JPEGs, which decode slower (about 110 KB each): budget 4-8 cores per GPU. One GPU then
needs about 12 hours per R34 -> R18 run (1.28M x 100 / 3,000 images/s), 8 GPUs about 1.5
hours with 32-64 cores. A pair preset is 2 + 5 methods = 7 runs: about 4 GPU-days.

    # 8 GPUs on one machine: global batch 512, so lr 0.2 (the linear rule, by hand: the
    # schedule is fixed when the preset is built, before command-line overrides):
    LR="--config.optimizer.learning_rate.start=0.2"
    LR="$LR --config.optimizer.learning_rate.values=0.2,0.02,0.002,0.0002"
    ./launch.sh pipeline --experiment=imagenet_benchmark:resnet34_resnet18 \\
        --workdir=runs/imagenet/r34_r18 --config.dataset=tfrecord:/data/imagenet_tfr \\
        --config.distribution.strategy=mirrored --config.global_batch_size=512 $LR \\
        --config.mixed_precision=auto
    # 2 machines x 8 GPUs (TF_CONFIG on each host, see BUILD.md "Multi-worker"), batch 1024:
    ./launch.sh pipeline ... --config.distribution.strategy=multi_worker \\
        --config.global_batch_size=1024 --config.optimizer.learning_rate.start=0.4 \\
        --config.optimizer.learning_rate.values=0.4,0.04,0.004,0.0004
"""

from kd_research import config as config_lib

# teacher, student
PAIRS = {"resnet34_resnet18": ("resnet34", "resnet18"),
         "resnet50_mobilenetv1": ("resnet50", "mobilenetv1")}
# A literal (read by main.py).
PRESETS = ("resnet34_resnet18", "resnet50_mobilenetv1", "mini", "deit_tiny", "deit_mini")
METHODS = ("kd", "dkd", "at", "crd", "dist")
EPOCHS, DECAY_EPOCHS = 100, (30, 60, 90)
LR_PER_256 = 0.1

# Published top-1 (%) on the ImageNet validation set. A claim, never a measurement of ours.
CLAIMED_TABLE = """\
| teacher -> student | teacher | student | KD | DKD | AT | CRD | ReviewKD | DIST | KD + LS |
|---|---|---|---|---|---|---|---|---|---|
| ResNet-34 -> ResNet-18 | 73.31 | 69.76 | 71.03 (a) | 71.70 (a) | 70.70 (b) | 71.17 (b) | 71.61 (b) | 72.07 (b) | 71.42 (b) |
| ResNet-50 -> MobileNet-V1 | 76.16 | 68.87 | 70.50 (a) | 72.05 (a) | | | | | |

| teacher -> student | WTTM (d) | NKD (e) | KD + DOT (a) |
|---|---|---|---|
| ResNet-34 -> ResNet-18 | 72.19 | 71.96 | 71.72 |
| ResNet-50 -> MobileNet-V1 | 73.09 | 72.58 | 73.09 |

Teacher-free, USKD (e): ResNet-18 69.90 -> 70.79, MobileNet 69.21 -> 70.38 (its own
baselines, trained alone in its code base).

| RegNetY-16GF -> DeiT-Ti (distilled) | 82.9 | 72.2 | | | | | | | |

DeiT rows (c): the student alone 72.2 and with the distillation token, hard distillation from
RegNetY-16GF: DeiT-Ti 74.5, DeiT-S 79.8 -> 81.2 (DeiT-S alone 79.8), the teacher 82.9; 300
epochs of the recipe below.

(a) mdistiller's README (Zhao et al., CVPR 2022: DKD; KD as they reproduced it).
(b) torchdistill's benchmark tables, "original work" column (the methods' own papers);
torchdistill's own reproductions for R34 -> R18: KD 71.37, CRD 70.93, ReviewKD 71.64,
DIST 71.95. Teachers and students trained alone: torchvision's pretrained ResNet-34 73.31,
ResNet-18 69.76, ResNet-50 76.16 and the MobileNet-V1 of the CRD / mdistiller pair 68.87.
(d) zkxufo/TTM's README, ImageNet table (Zheng & Yang, ICLR 2024; run with torchdistill).
(e) yzd-v/cls_KD's nkd.md (Yang et al., ICCV 2023): NKD and USKD ("tf-NKD") tables; its
ResNet-18 baseline is 69.90.
(c) Touvron et al., ICML 2021 (DeiT), Tables 1 and 5 (the paper's "DeiT-Ti⚗" row: 74.5);
facebookresearch/deit README (deit_tiny_distilled_patch16_224: 74.5).
Blank: not in the sources we checked. Not reproduced here (no GPU): run this experiment.
"""

IMAGENET_TRAIN = 1_281_167  # ImageNet-1k training images (the validation split comes off)


def deit_recipe(c, epochs=300, warmup_epochs=5):
  """DeiT's recipe (facebookresearch/deit main.py defaults) on config ``c``: AdamW, lr 5e-4
  per 512 examples, weight decay 0.05 sparing norms, biases and tokens, cosine to 1e-5 after
  a linear warm-up from 1e-6 over ``warmup_epochs``, label smoothing 0.1, RandAugment,
  mixup 0.8 + cutmix 1.0, random erasing 0.25, repeated augmentation (3), stochastic depth
  0.1, hard distillation through the distillation token (alpha 0.5)."""
  c.optimizer.name = "adamw"
  c.optimizer.weight_decay = 0.05
  c.optimizer.decay_norms_biases_tokens = False
  c.optimizer.l2 = 0.0
  lr = 5e-4 * c.global_batch_size / 512
  steps_per_epoch = (IMAGENET_TRAIN - c.validation_size) // c.global_batch_size
  c.optimizer.learning_rate = config_lib.schedule(
      lr, "cosine", end=1e-5, warmup_steps=warmup_epochs * steps_per_epoch, warmup_from=1e-6)
  c.augment.ops = ("randaugment", "erase", "mixup", "cutmix")
  c.augment.randaugment_layers = 2
  c.augment.mixup_alpha, c.augment.cutmix_alpha, c.augment.erase_prob = 0.8, 1.0, 0.25
  c.augment.repeats = 3  # --repeated-aug (timm's RepeatAugSampler, 3 repeats)
  c.student.epochs, c.student.drop_path = epochs, 0.1
  c.distill.method = "deit"
  c.distill.deit.type, c.distill.deit.alpha, c.distill.deit.label_smoothing = "hard", 0.5, 0.1


def _variants():
  """One pipeline variant per method, with the references' ImageNet loss weights."""
  return {
      "kd": dict(method="kd", alpha=0.5, temperature=1.0),
      "dkd": dict(method="dkd", temperature=1.0,
                  dkd=dict(alpha=1.0, beta=0.5, warmup_epochs=1)),
      "at": dict(method="at"),
      "crd": dict(method="crd"),
      "dist": dict(method="dist", dist=dict(weight=2.0, beta=1.0, gamma=1.0, temperature=1.0)),
  }


def learning_rate(global_batch_size, epochs=EPOCHS):
  """lr 0.1 per 256 examples, x0.1 at epochs 30/60/90 (fractions of ``epochs``)."""
  lr = LR_PER_256 * global_batch_size / 256
  return config_lib.schedule(lr, "piecewise", boundaries=tuple(e / EPOCHS for e in DECAY_EPOCHS),
                             values=(lr, lr / 10, lr / 100, lr / 1000))


def get_config(arg="resnet34_resnet18"):
  """The ImageNet protocol for the pair ``arg`` (or the ``mini`` smoke test)."""
  arg = arg or "resnet34_resnet18"
  config_lib.check_preset("imagenet_benchmark", arg, PRESETS)
  c = config_lib.base_config()
  c.dataset = "folder:data/imagenet"
  c.image_size = 224
  c.data.train_view = "inception"
  c.validation_size = 10000
  c.global_batch_size = 256
  teacher, student = PAIRS.get(arg, PAIRS["resnet34_resnet18"])
  c.teacher = config_lib.model_config(teacher, epochs=EPOCHS, seed=0)
  c.student = config_lib.model_config(student, epochs=EPOCHS, seed=0)
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.l2 = 1e-4
  c.optimizer.learning_rate = learning_rate(c.global_batch_size)
  c.distill.ce_weight = 1.0
  c.distill.cache_teacher = False  # Random crops: the teacher runs live.
  c.pipeline.seeds = (0,)
  for name, variant in _variants().items():
    c.pipeline.variants[name] = variant
  c.run.stability_ops = ()
  c.run.checkpoint_every_seconds = 1800
  c.run.eval_batch_size = 500
  c.pipeline.export_students = False
  if arg in ("mini", "deit_mini"):
    c.image_size = 32
    c.validation_size = 12
    c.global_batch_size = 8
    c.optimizer.learning_rate = learning_rate(c.global_batch_size)
    c.run.eval_batch_size = 24
    c.run.steps_per_loop = 2
    c.run.latency_repeats = 2  # A smoke test: its latency figures are not read.
    c.teacher = config_lib.model_config("resnet18", width=8, epochs=1, seed=0)
    c.student = config_lib.model_config("mobilenetv1", width=4, epochs=1, seed=0)
    c.distill.dkd.warmup_epochs = 1
    for name in set(METHODS) - {"kd"}:  # A smoke test: one distilled student.
      del c.pipeline.variants[name]
    c.run.allow_weak_teacher = True  # One epoch of a width-8 teacher on a few images.
  if arg.startswith("deit"):
    _deit(c, arg)
  return config_lib.finalize(c)


def _deit(c, arg):
  """deit_tiny: DeiT-Ti with the distillation token from a trained CNN teacher given with
  ``--config.teacher.path`` (DeiT's RegNetY-16GF is not in the registry; the entry names
  ResNet-50, which a pipeline would otherwise train with this recipe, not the ResNet one),
  batch 1024 (lr 1e-3); deit_mini: the same recipe for a few steps of vit_mini_distilled on
  a generated folder (the tests distil it from the mini preset's teacher)."""
  c.global_batch_size = 1024 if arg == "deit_tiny" else 8
  c.student = config_lib.model_config(
      "deit_tiny_distilled" if arg == "deit_tiny" else "vit_mini_distilled",
      width=0 if arg == "deit_tiny" else 16, epochs=1, seed=0)
  if arg == "deit_tiny":
    c.teacher = config_lib.model_config("resnet50", epochs=EPOCHS, seed=0)
  deit_recipe(c, epochs=300 if arg == "deit_tiny" else 1,
              warmup_epochs=5 if arg == "deit_tiny" else 0)
  c.pipeline.variants = {"deit": dict(method="deit")}
