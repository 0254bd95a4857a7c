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
few steps on a generated JPEG folder; the tests run it). Each pair preset trains the
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
PRESETS = ("resnet34_resnet18", "resnet50_mobilenetv1", "mini")  # A literal (read by main.py).
METHODS = ("kd", "dkd", "at", "crd", "dist")
EPOCHS, DECAY_EPOCHS = 100, (30, 60, 90)
LR_PER_256 = 0.1

# Published top-1 (%) on the ImageNet validation set. A claim, never a measurement of ours.
CLAIMED_TABLE = """\
| teacher -> student | teacher | student | KD | DKD | AT | CRD | ReviewKD | DIST | KD + LS |
|---|---|---|---|---|---|---|---|---|---|
| ResNet-34 -> ResNet-18 | 73.31 | 69.76 | 71.03 (a) | 71.70 (a) | 70.70 (b) | 71.17 (b) | 71.61 (b) | 72.07 (b) | 71.42 (b) |
| ResNet-50 -> MobileNet-V1 | 76.16 | 68.87 | 70.50 (a) | 72.05 (a) | | | | | |

(a) mdistiller's README (Zhao et al., CVPR 2022: DKD; KD as they reproduced it).
(b) torchdistill's benchmark tables, "original work" column (the methods' own papers);
torchdistill's own reproductions for R34 -> R18: KD 71.37, CRD 70.93, ReviewKD 71.64,
DIST 71.95. Teachers and students trained alone: torchvision's pretrained ResNet-34 73.31,
ResNet-18 69.76, ResNet-50 76.16 and the MobileNet-V1 of the CRD / mdistiller pair 68.87.
Blank: not in the sources we checked. Not reproduced here (no GPU): run this experiment.
"""


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
  if arg == "mini":
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
  return config_lib.finalize(c)
