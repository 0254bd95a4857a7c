"""The standard CIFAR-100 KD benchmark (RepDistiller / mdistiller protocol), ready for a GPU.

    ./launch.sh pipeline --experiment=cifar100_benchmark:resnet32x4_resnet8x4 \\
        --workdir=runs/cifar100/resnet32x4_resnet8x4 \\
        --config.run.data_dir=/path/containing/cifar-100-python
    ./launch.sh report --workdir=runs/cifar100 --output=RESULTS_CIFAR100.md \\
        --figure=results_cifar100.svg --claims=cifar100_benchmark

One preset per teacher -> student pair: resnet32x4_resnet8x4, wrn_40_2_wrn_16_2,
resnet56_resnet20, vgg13_vgg8 (the pairs of the published table below) and
vgg13_mobilenetv2 (the learning-rate rule for light students). Each preset trains the
teacher, the labels-only student and one student per method (kd, dkd, kd + logit
standardization, dist, fitnets, at, sp, rkd, pkt, crd, ofd, reviewkd, vid, nst, cc,
kd + ctkd, mlkd, mlkd + logit standardization) over seeds 0, 1, 2; rerunning the
command skips finished runs and resumes an interrupted one.

Protocol (both references): SGD momentum 0.9, batch 64, 240 epochs, learning rate 0.05
(0.01 for MobileNetV2 / ShuffleNetV2 students) x0.1 at epochs 150, 180 and 210, L2
weight decay 5e-4 added to the gradient as PyTorch's SGD does (``optimizer.l2``), random
crop (padding 4) and horizontal flip seen by teacher and student alike, T = 4, the
per-method loss weights of RepDistiller's run_cifar_distill.sh (kd: CE 0.1, KD 0.9;
FitNets 100, AT 1000, SP 3000, RKD 1 (25/50), PKT 30000, CRD 0.8, each with CE 1),
mdistiller's DKD (alpha 1, beta 8 / 6 / 2 per pair, 20 warm-up epochs), OFD 0.001, ReviewKD
5 (20 warm-up epochs), VID 1 and NST 50 (mdistiller's cfg and configs), CC our default. Two deliberate
differences, to be stated next to any comparison with the numbers below: the last
5,000 training images are a validation split (the references train on all 50,000), and
we report the last epoch's test accuracy (RepDistiller reports the best test epoch,
mdistiller the best epoch averaged over 5 runs).

Cost on one GPU: an estimate, not a measurement (the machine that built this project has
no GPU). Training FLOPs of one distillation run = 240 epochs x 45,000 images x (3 x student
forward + teacher forward), from ``kd_research.bench.forward_flops`` at 32x32x3, 100 classes:

| pair | teacher / student forward (GFLOP) | distillation run | teacher run |
|---|---|---|---|
| resnet32x4 -> resnet8x4 | 2.17 / 0.35 | 34.9 PFLOP | 70.2 PFLOP |
| wrn_40_2 -> wrn_16_2 | 0.66 / 0.20 | 13.6 PFLOP | 21.2 PFLOP |
| resnet56 -> resnet20 | 0.25 / 0.08 | 5.4 PFLOP | 8.1 PFLOP |
| vgg13 -> vgg8 | 0.57 / 0.19 | 12.4 PFLOP | 18.5 PFLOP |

At an assumed sustained 10 TFLOP/s (TF32 on an A100-class GPU; small CIFAR models reach
less) the resnet8x4 run takes about an hour and its teacher two; the lighter pairs are
bound by per-step overhead instead (240 x 703 = 168,750 steps of batch 64: at 5 ms per
step, about 15 minutes a run). A preset (teacher, labels-only and 10 methods x 3 seeds)
is then roughly 35 GPU-hours for resnet32x4 -> resnet8x4 and 8-15 for the others; CRD's
bank gather (16,384 negatives) adds to each of its runs. On this project's 2-core CPU one
resnet32x4 -> resnet8x4 epoch (144 TFLOP) takes at least 10 minutes even at the measured
fp32 matmul peak of about 250 GFLOP/s (`./launch.sh bench`), so a run takes days: use a GPU.

Preset ``mini`` runs the same pipeline for a few steps on whatever CIFAR-100-format data
is in data_dir (the tests use a generated miniature in the real format).
"""

from kd_research import config as config_lib

# teacher, student, learning rate, DKD beta (mdistiller configs/cifar100/dkd/*.yaml).
PAIRS = {
    "resnet32x4_resnet8x4": ("resnet32x4", "resnet8x4", 0.05, 8.0),
    "wrn_40_2_wrn_16_2": ("wrn_40_2", "wrn_16_2", 0.05, 6.0),
    "resnet56_resnet20": ("resnet56", "resnet20", 0.05, 2.0),
    "vgg13_vgg8": ("vgg13", "vgg8", 0.05, 6.0),
    "vgg13_mobilenetv2": ("vgg13", "mobilenetv2_cifar", 0.01, 6.0),
}
PRESETS = ("resnet32x4_resnet8x4", "wrn_40_2_wrn_16_2", "resnet56_resnet20", "vgg13_vgg8",
           "vgg13_mobilenetv2", "mini")  # A literal: main.py reads it without importing.
METHODS = ("kd", "kd_ls", "dkd", "dist", "fitnets", "at", "sp", "rkd", "pkt", "crd", "ofd",
           "reviewkd", "vid", "nst", "cc", "kd_ctkd", "mlkd", "mlkd_ls")

# Published top-1 test accuracy (%) on CIFAR-100. A claim, never a measurement of ours.
CLAIMED_TABLE = """\
| teacher -> student | teacher | student | KD | FitNet | AT | SP | RKD | PKT | CRD | DKD | VID | NST | CC | OFD | ReviewKD |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
| resnet32x4 -> resnet8x4 | 79.42 | 72.50 | 73.33 | 73.50 | 73.44 | 72.94 | 71.90 | 73.64 | 75.51 | 76.32 | 73.09 | 73.30 | 72.97 | 74.95 | 75.63 |
| wrn_40_2 -> wrn_16_2 | 75.61 | 73.26 | 74.92 | 73.58 | 74.08 | 73.83 | 73.35 | 74.54 | 75.48 | 76.23 | 74.11 | 73.68 | 73.56 | - | - |
| resnet56 -> resnet20 | 72.34 | 69.06 | 70.66 | 69.21 | 70.55 | 69.67 | 69.61 | 70.34 | 71.16 | 71.97 | 70.38 | 69.60 | 69.63 | - | 71.89 |
| vgg13 -> vgg8 | 74.64 | 70.36 | 72.98 | 71.02 | 71.43 | 72.68 | 71.48 | 72.88 | 73.94 | 74.68 | 71.23 | 71.53 | 70.71 | - | - |

Source: RepDistiller's README (Tian et al., ICLR 2020; best test epoch, mean of runs) for
every column but DKD, OFD and ReviewKD; CC there is RepDistiller's own ``Correlation`` loss,
not the paper's kernel form that ``cc`` implements. DKD: mdistiller's README (Zhao et al.,
CVPR 2022; best epoch, mean of 5 runs). OFD and ReviewKD: the DKD paper's CIFAR-100 table
(Zhao et al., CVPR 2022, Table 1), the numbers mdistiller quotes; "-" where we could not
check a cell against a stored copy of that table. Not reproduced here (no GPU): run
experiments/cifar100_benchmark.py.

| teacher -> student | KD + LS | CTKD | CTKD + LS | DKD + LS | MLKD | MLKD + LS |
|---|---|---|---|---|---|---|
| resnet32x4 -> resnet8x4 | 76.62 | 73.39 | 76.67 | 77.01 | 77.08 | 78.28 |
| wrn_40_2 -> wrn_16_2 | 76.11 | 75.45 | 76.08 | 76.39 | 76.63 | 76.95 |
| resnet56 -> resnet20 | 71.43 | 71.19 | 71.34 | 72.32 | 72.19 | 72.33 |
| vgg13 -> vgg8 | 74.36 | 73.52 | 74.47 | 74.81 | 75.18 | 75.22 |

Source: the logit-standardization repository's README (Sun et al., CVPR 2024), table
"Teacher and student have identical structures"; its "+ Ours" runs are logit
standardization with base temperature 2 (3 for KD on vgg13 -> vgg8) and KD weight 9.
MLKD (Jin et al., CVPR 2023) and CTKD (Li et al., AAAI 2023) as that README reports them;
that repository's MLKD configs train 480 epochs (the MLKD repository's own, 240; this
protocol trains every method 240).

| teacher -> student | WTTM | WTTM + CRD | KD + DOT | NKD | SD-KD | SD-DKD | CRLD |
|---|---|---|---|---|---|---|---|
| resnet32x4 -> resnet8x4 | 76.06 | 76.65 | 75.12 | - | - | - | - |
| wrn_40_2 -> wrn_16_2 | 76.37 | 76.61 | - | - | - | - | - |
| resnet56 -> resnet20 | 71.92 | 72.20 | - | - | - | - | - |
| vgg13 -> vgg8 | 74.44 | 74.71 | 73.77 | - | - | - | - |

Sources: WTTM and WTTM + CRD: zkxufo/TTM's README (Zheng & Yang, ICLR 2024), its
same-architecture table. KD + DOT: mdistiller's README (Zhao et al., ICCV 2023; its KD
column there: 73.33 and 72.98). NKD, SD-KD / SD-DKD (Wei et al., CVPR 2024) and CRLD (Zhang
et al., ACM MM 2024): "-", no stored text source confirms a CIFAR-100 cell (SDD's README
shows its table as an image; no official CRLD repository is stored).
"""


assert set(PRESETS) == set(PAIRS) | {"mini"}


def _variants(dkd_beta):
  """One pipeline variant per method, with the references' loss weights."""
  kd = dict(method="kd", alpha=0.9, temperature=4.0)
  return {
      "kd": kd,
      "kd_ls": dict(kd, logit_standardization=True),
      "dkd": dict(method="dkd", dkd=dict(beta=dkd_beta)),
      "dist": dict(method="dist"),
      "fitnets": dict(method="fitnets"),
      "at": dict(method="at"),
      "sp": dict(method="sp"),
      "rkd": dict(method="rkd"),
      "pkt": dict(method="pkt"),
      "crd": dict(method="crd"),
      "ofd": dict(method="ofd"),
      "reviewkd": dict(method="reviewkd"),
      "vid": dict(method="vid"),
      "nst": dict(method="nst"),
      # No reference weight for the paper's form (methods/cc.py): our default.
      "cc": dict(method="cc"),
      # CTKD's learnable temperature on KD (its reference's CIFAR script: RepDistiller's KD
      # weights, curriculum over 10 epochs: ctkd.py's defaults).
      "kd_ctkd": dict(kd, ctkd=dict(enabled=True)),
      # MLKD: the weak view is this protocol's crop + flip, the strong one adds RandAugment
      # (methods/mlkd.py's defaults, the reference's). With LS as the logit-standardization
      # README runs it: --base-temp 2 (the temperature 4 of its list becomes 2) --kd-weight 9.
      "mlkd": dict(method="mlkd"),
      "mlkd_ls": dict(method="mlkd", logit_standardization=True,
                      mlkd=dict(temperatures=(2.0, 3.0, 5.0, 2.0, 6.0), weight=9.0)),
  }


def get_config(arg="resnet32x4_resnet8x4"):
  """The CIFAR-100 protocol for the pair ``arg`` (or the ``mini`` smoke test)."""
  arg = arg or "resnet32x4_resnet8x4"
  config_lib.check_preset("cifar100_benchmark", arg, PRESETS)
  c = config_lib.base_config()
  c.dataset = "cifar100"
  c.validation_size = 5000
  c.global_batch_size = 64
  teacher, student, lr, beta = PAIRS.get(arg, PAIRS["resnet32x4_resnet8x4"])
  c.teacher = config_lib.model_config(teacher, epochs=240, seed=0)
  c.student = config_lib.model_config(student, epochs=240, seed=0)
  c.optimizer.name = "sgd"
  c.optimizer.momentum = 0.9
  c.optimizer.l2 = 5e-4
  c.optimizer.learning_rate = config_lib.schedule(
      lr, "piecewise", boundaries=(150 / 240, 180 / 240, 210 / 240),
      values=(lr, lr / 10, lr / 100, lr / 1000))
  c.augment.ops = ("crop", "flip")
  c.augment.crop_padding = 4
  c.distill.ce_weight = 1.0
  c.distill.cache_teacher = False  # Random crops and flips: the teacher runs live.
  c.pipeline.seeds = (0, 1, 2)
  for name, variant in _variants(beta).items():
    c.pipeline.variants[name] = variant
  c.run.stability_ops = ()
  c.run.eval_every_epochs = 10
  c.run.checkpoint_every_seconds = 600
  c.pipeline.export_students = False
  if arg == "mini":
    c.validation_size = 20
    c.global_batch_size = 16
    c.run.eval_batch_size = 32
    c.run.steps_per_loop = 5
    c.run.latency_repeats = 2  # A smoke test: its latency figures are not read.
    c.run.eval_every_epochs = 1
    c.teacher = config_lib.model_config("resnet8x4", width=4, epochs=1, seed=0)
    c.student = config_lib.model_config("resnet8x4", width=2, epochs=2, seed=0)
    c.distill.crd.negatives = 16
    c.distill.crd.feature_dim = 8
    c.distill.dkd.warmup_epochs = 1
    c.distill.reviewkd.warmup_epochs = 1
    c.pipeline.seeds = (0,)
    for name in set(METHODS) - {"kd", "crd"}:  # A shorter smoke test: logits and the bank.
      del c.pipeline.variants[name]
    # A smoke test: one epoch of a width-4 teacher is not expected to beat chance.
    c.run.allow_weak_teacher = True
  return config_lib.finalize(c)
