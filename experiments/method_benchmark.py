"""The method benchmark on a CPU budget: every distillation method, two teacher -> student
pairs, hyper-parameters chosen on validation, 3 seeds each.

    ./launch.sh benchmark          # the whole campaign below and results/RESULTS.md; rerun to continue
    ./launch.sh pipeline --experiment=method_benchmark:article --workdir=runs/benchmark/article
    ./launch.sh pipeline --experiment=method_benchmark:resnet --workdir=runs/benchmark/resnet
    ./launch.sh report --workdir=runs/benchmark --sweep=runs/benchmark_sweep \\
        --output=results/RESULTS.md --figure=results/results_methods.svg
    ./launch.sh benchmark_features  # only the feature methods below, kd and the baselines
    ./launch.sh benchmark_vit       # the cross-architecture pairs (vit, vit_reverse, vit_from_vit)

Each pipeline trains its teacher, runs every method's candidates once (seed 0) in
runs/benchmark_sweep/<pair>/ and keeps the one with the best *validation* accuracy
(selection.json), then trains the labels-only student and each method with the chosen
hyper-parameters over seeds 0, 1, 2. Every run is resumable and finished runs are
skipped: rerunning a command continues the campaign wherever it stopped.

Protocol (article, resnet, curve): Fashion-MNIST, a fixed 5,000-image training subset
(config.train_size; the teacher trains on it too), the usual 5,000-image validation split,
the full 10,000-image test split evaluated once at the end of each run (last epoch, not
best); Adam with cosine decay from 1e-2, batch 128, teacher and students 40 epochs. The
budget is one at which the labels-only student has nearly converged: with Adam 1e-3 it was
still gaining 1.6 points from 160 to 320 epochs; with 1e-2 (chosen on validation over 1e-3
and 3e-3) it is within a point of its best by 40 epochs (3 seeds: +0.77 at 80, +0.07 at 160);
the ``curve`` preset trains it for twice that (80) over the same seeds to show it. The
resnet pair's students (a larger network, and BatchNorm) converge sooner: 20 epochs (teacher
40), and ``./launch.sh benchmark`` trains its labels-only student at 40 too. Logit methods
and RKD/PKT/CRD read the teacher-output cache; the methods on feature maps (FitNets, AT,
SP, ...) and MLKD (its strong view changes every step) run the teacher live. CRD uses
4,096 negatives (16,384 in the reference; the CPU cost of the bank's gather grows with K). DKD's warm-up is 3 epochs (20 of 240 in the reference:
a similar share of 40 or 20 epochs); ReviewKD's is 3 epochs too (20 of 240 in mdistiller).

Presets:
  article  the seed article's pair, resnet_article w16 (174K) -> cnn_article w16 (24K): kd,
           kd + logit standardization, dkd, dist, fitnets, at, rkd, pkt, sp, crd, ofd,
           reviewkd, vid, nst, cc, kd + ctkd, dkd + ctkd, mlkd, crld (each also with its
           second view the image itself: *_no_strong), wttm, wttm + crd, nkd, SD-KD,
           SD-DKD, and kd with SGD with and without DOT (kd_sgd, kd_dot: SGD momentum 0.9,
           learning rate chosen over 0.05 and 0.01); and two students with no teacher: a
           DML cohort of 2 (student_dml) and USKD (student_uskd).
  resnet   a same-family pair of the standard benchmark at half width, resnet56 w8
           (0.22M) -> resnet20 w8 (0.07M): kd, dkd, fitnets, crd, ofd, reviewkd, vid,
           nst, cc, kd + ctkd, dkd + ctkd, mlkd, mlkd_no_strong, crld, crld_no_strong,
           wttm, wttm + crd, nkd, sdd_kd, sdd_dkd,
           kd_sgd, kd_dot; the
           DML cohort and USKD too.
  article_features, resnet_features  the same pairs and protocol with kd and the feature
           methods added last (ofd, reviewkd, vid, nst, cc) only: their runs are the full
           presets' runs (same identities), so the full campaign later skips them.
  article_new_logit  the article pair's teacher and labels-only student with kd (alpha 0.9,
           T 4: kd's validation choice there), WTTM (gamma 0.2, weight 4), NKD (T 1, gamma
           1.5) and kd with SGD (learning rate 0.01: mdistiller's 0.05 stays at chance with
           this student, which has no BatchNorm) with and without DOT, each
           at its reference's values with no sweep, 3 seeds: the new logit rows within one
           session's budget (results/RESULTS_NEW_METHODS.md).
  article_views  the same pair and budget: kd (as above), MLKD and CRLD at their
           references' values with their strong view (flip, crop, RandAugment) and with the
           image itself as the second view, 3 seeds, no sweep: whether their gain comes from
           the strong augmentation (MLKD's tracker, issue 2); results/RESULTS_NEW_METHODS.md
           holds both presets' runs (./launch.sh report --workdir=runs/new_logit).
  article_fitnets, resnet_fitnets  the teacher, the labels-only student and FitNets alone
           (the runs that the connector's reference parity changed), identities as above.
  article_born_again, resnet_born_again  one born-again generation (Furlanello et al.):
           the ``distill`` command's settings for a student of the pair distilled with kd
           (alpha 0.9, T 4: kd's validation choice on both pairs) from a teacher of its own
           architecture, given by --config.teacher.path: ``./launch.sh benchmark`` gives it
           the kd student of seed 0, so generation 2 learns from generation 1.
  vit      cross-architecture, CNN -> ViT: the resnet pair's teacher (resnet56 w8, given by
           --config.teacher.path) -> vit_mini_distilled (64 wide, 4 blocks, patch 4: 0.2M)
           with a distillation token, 40 epochs at the learning rate the campaign chooses
           for the ViT on validation (labels only, seed 0, over 1e-3, 3e-3 and 1e-2; the
           preset's own 1e-3 otherwise): labels only, kd on the class token, DeiT soft,
           DeiT hard, OFA-KD, DKD.
  vit_reverse  ViT -> CNN: a vit_mini teacher at width 128 (0.8M; trained by the campaign
           at the ViT's learning rate, then given by --config.teacher.path) -> the resnet
           pair's student (resnet20 w8, 20 epochs, 1e-2): labels only, kd, OFA-KD.
  vit_from_vit  the vit preset's student taught by that ViT teacher (kd, DeiT soft and
           hard, NKD, ViTKD, NKD + ViTKD): with the vit preset, whether a CNN teacher helps
           a ViT student more than a ViT teacher does (DeiT's observation), as far as the
           two teachers' accuracies are alike.
  curve    the article pair's labels-only student at twice the budget (is it converged?).
  short    the previous, *unconverged* protocol (Adam 1e-3, 20 epochs for teacher and
           students) on the article pair, all methods: the budget at which plain KD lost
           (results/RESULTS_SHORT.md, results/RESULTS_WHY.md).
  long     the short protocol at 40 student epochs for labels only, kd, kd + ls and dist.
  why      the short protocol's labels only and kd (alpha 0.5, T 2) over 3 seeds, for the
           "why" axes: a teacher given by --config.teacher.path (or trained for
           --config.teacher.epochs) and the student's --config.student.width.
  tiny     synthetic data, a few steps: the tests' smoke run of the whole protocol.
"""

import ml_collections

from kd_research import config as config_lib

PRESETS = ("article", "resnet", "article_features", "resnet_features", "article_new_logit",
           "article_views", "article_fitnets",
           "resnet_fitnets", "article_born_again",
           "resnet_born_again", "vit", "vit_reverse", "vit_from_vit", "curve", "short", "long",
           "why", "tiny")

# {method variant: its fixed settings}; candidates below are tried on validation.
_ARTICLE_METHODS = {
    "kd": dict(method="kd"),
    "kd_ls": dict(method="kd", logit_standardization=True),
    "dkd": dict(method="dkd", dkd=dict(warmup_epochs=3)),
    # The weight and tau this campaign ran DIST at (the defaults before they followed
    # DIST_KD's configs: weight 2, tau 1), kept so that its runs keep their identity.
    "dist": dict(method="dist", dist=dict(weight=1.0, temperature=4.0)),
    # cnn_article's 12x12 middle stage against resnet_article's 14x14: ConvReg maps no such
    # pair, so the article pair resizes first (conv -> BN -> ReLU after it, as ConvReg).
    # The resnet pair inherits the setting; its maps are of equal size (one family, one
    # width), where 'resize' builds exactly ConvReg's 1x1 conv -> BN -> ReLU (no resize
    # layer; the same weights and outputs, checked), so its runs are the reference's.
    "fitnets": dict(method="fitnets", fitnets=dict(connector="resize")),
    "at": dict(method="at"),
    "rkd": dict(method="rkd"),
    "pkt": dict(method="pkt"),
    "sp": dict(method="sp"),
    "crd": dict(method="crd", crd=dict(negatives=4096)),
    "ofd": dict(method="ofd"),
    "reviewkd": dict(method="reviewkd", reviewkd=dict(warmup_epochs=3)),
    "vid": dict(method="vid"),
    "nst": dict(method="nst"),
    "cc": dict(method="cc"),
    # CTKD's learnable temperature on kd and dkd; its curriculum over 3 epochs (10 of 240
    # in the reference: the share DKD's and ReviewKD's warm-ups scale by too).
    "kd_ctkd": dict(method="kd", ctkd=dict(enabled=True, decay_epochs=3)),
    "dkd_ctkd": dict(method="dkd", dkd=dict(warmup_epochs=3),
                     ctkd=dict(enabled=True, decay_epochs=3)),
    # MLKD: its weak view is the protocol's image (no augmentation, as for every method
    # here), its strong view flip + crop + RandAugment(2) + Cutout (methods/mlkd.py).
    "mlkd": dict(method="mlkd"),
    # CRLD reads the same strong view as MLKD (its reference's crop + flip + RandAugment).
    "crld": dict(method="crld"),
    # Without a strong view: the second view is the image itself (the protocol's main view
    # has no augmentation), so that these rows against crld and mlkd show how much of their
    # gain the strong augmentation brings (MLKD's tracker, issue 2).
    "crld_no_strong": dict(method="crld", crld=dict(view_ops="")),
    "mlkd_no_strong": dict(method="mlkd", mlkd=dict(view_ops="")),
    "wttm": dict(method="wttm"),
    # The README's WTTM + CRD row: CRD at weight 0.8 beside WTTM (its command, vgg13 -> vgg8).
    "wttm_crd": dict(method="wttm,crd", crd=dict(negatives=4096, weight=0.8)),
    "nkd": dict(method="nkd"),
    # SD-KD (mdistiller's KD weights: CE 0.1, KD 0.9, T 4) and SD-DKD (DKD's CE 1; its warm-up
    # at the share of 40 epochs that DKD's gets here).
    "sdd_kd": dict(method="sdd"),
    "sdd_dkd": dict(method="sdd", sdd=dict(type="dkd", ce_weight=1.0, weight=1.0,
                                           warmup_epochs=3)),
    # DOT changes the optimizer: kd (mdistiller's CE 0.1 / KD 0.9, T 4) with SGD momentum
    # 0.9, with and without DOT's split momenta (delta 0.075, configs/cifar100/dot), so that
    # the row compares DOT with the same SGD, not with the protocol's Adam.
    "kd_sgd": dict(method="kd", alpha=0.9, temperature=4.0,
                   optimizer=dict(name="sgd", momentum=0.9)),
    "kd_dot": dict(method="kd", alpha=0.9, temperature=4.0,
                   optimizer=dict(name="sgd", momentum=0.9, dot_delta=0.075)),
}
# Methods that read teacher feature maps run the teacher live (the cache holds logits and
# the pooled feature).
_MAP_METHODS = ("fitnets", "at", "sp", "ofd", "reviewkd", "vid", "nst", "sdd")
# ... and so does MLKD: the teachers run on its strong view, which changes every step.
_LIVE_METHODS = _MAP_METHODS + ("mlkd", "crld")
_FEATURE_METHODS = ("ofd", "reviewkd", "vid", "nst", "cc")
# The reference weight first (RepDistiller / mdistiller / the paper), then weaker ones: at
# short budgets the feature terms of the reference weights swamp the CE term.
_CANDIDATES = {
    "kd": {"a05_T2": dict(alpha=0.5, temperature=2.0),
           "a09_T4": dict(alpha=0.9, temperature=4.0)},
    "kd_ls": {"a05_T2": dict(alpha=0.5, temperature=2.0),
              "a09_T4": dict(alpha=0.9, temperature=4.0)},
    "dkd": {"beta8": dict(dkd=dict(beta=8.0)), "beta2": dict(dkd=dict(beta=2.0))},
    "dist": {"b1_g1": dict(dist=dict(beta=1.0, gamma=1.0)),
             "b2_g2": dict(dist=dict(beta=2.0, gamma=2.0))},
    "fitnets": {"w100": dict(fitnets=dict(weight=100.0)), "w10": dict(fitnets=dict(weight=10.0))},
    "at": {"w1000": dict(at=dict(weight=1000.0)), "w100": dict(at=dict(weight=100.0))},
    "rkd": {"w1": dict(rkd=dict(weight=1.0)), "w01": dict(rkd=dict(weight=0.1))},
    "pkt": {"w30000": dict(pkt=dict(weight=30000.0)), "w3000": dict(pkt=dict(weight=3000.0))},
    "sp": {"w3000": dict(sp=dict(weight=3000.0)), "w300": dict(sp=dict(weight=300.0))},
    "crd": {"w08": dict(crd=dict(weight=0.8)), "w02": dict(crd=dict(weight=0.2))},
    "ofd": {"w1e-3": dict(ofd=dict(weight=1e-3)), "w1e-4": dict(ofd=dict(weight=1e-4))},
    "reviewkd": {"w5": dict(reviewkd=dict(weight=5.0)), "w1": dict(reviewkd=dict(weight=1.0))},
    "vid": {"w1": dict(vid=dict(weight=1.0)), "w01": dict(vid=dict(weight=0.1))},
    "nst": {"w50": dict(nst=dict(weight=50.0)), "w5": dict(nst=dict(weight=5.0))},
    # No reference weight for the paper's form of CC (methods/cc.py): the default and 10x
    # weaker ones (100 already cost 4 points of validation accuracy on the article pair).
    "cc": {"w100": dict(cc=dict(weight=100.0)), "w10": dict(cc=dict(weight=10.0)),
           "w1": dict(cc=dict(weight=1.0))},
    # The temperature is learned: the candidates are kd's alpha and dkd's beta.
    "kd_ctkd": {"a09": dict(alpha=0.9), "a05": dict(alpha=0.5)},
    "dkd_ctkd": {"beta8": dict(dkd=dict(beta=8.0)), "beta2": dict(dkd=dict(beta=2.0))},
    # The reference's loss as it is, or with its levels in the balance they have at
    # CIFAR-100's batch 64 and 100 classes (here 128 and 10: the class level, which grows
    # with (B / C)^2, would be 400x larger; methods/mlkd.py).
    "mlkd": {"reference": dict(mlkd=dict(mask="reference")),
             "balanced": dict(mlkd=dict(batch_weight=0.5, class_weight=0.0025))},
    # The reference's CV weight 0.5 / WV 2, and the views weighted alike.
    "crld": {"wv2_cv05": dict(crld=dict(wv_weight=2.0, cv_weight=0.5)),
             "wv1_cv1": dict(crld=dict(wv_weight=1.0, cv_weight=1.0))},
    "crld_no_strong": {"wv2_cv05": dict(crld=dict(wv_weight=2.0, cv_weight=0.5)),
                       "wv1_cv1": dict(crld=dict(wv_weight=1.0, cv_weight=1.0))},
    "mlkd_no_strong": {"reference": dict(mlkd=dict(mask="reference")),
                       "balanced": dict(mlkd=dict(batch_weight=0.5, class_weight=0.0025))},
    # The README's gamma 0.2 / weight 4, and a milder transform at weight 1.
    "wttm": {"g02_w4": dict(wttm=dict(gamma=0.2, weight=4.0)),
             "g05_w1": dict(wttm=dict(gamma=0.5, weight=1.0))},
    "wttm_crd": {"g02_w4": dict(wttm=dict(gamma=0.2, weight=4.0))},
    # cls_KD's ImageNet values (temp 1, gamma 1.5), and temperature 2.
    "nkd": {"T1_g15": dict(nkd=dict(temperature=1.0, gamma=1.5)),
            "T2_g15": dict(nkd=dict(temperature=2.0, gamma=1.5))},
    # kd's two settings, as SD-KD's weights; SD-DKD's beta as dkd's.
    "sdd_kd": {"w09_T4": dict(sdd=dict(weight=0.9, ce_weight=0.1, temperature=4.0)),
               "w05_T2": dict(sdd=dict(weight=0.5, ce_weight=0.5, temperature=2.0))},
    "sdd_dkd": {"beta8": dict(sdd=dict(beta=8.0)), "beta2": dict(sdd=dict(beta=2.0))},
    # SGD's learning rate: mdistiller's 0.05 (BatchNorm networks; on the article pair, whose
    # student has no BatchNorm, kd + SGD at 0.05 stayed at chance over 3 seeds, with and
    # without DOT), and 0.01 (62% validation accuracy after 5 epochs there; 0.002: 11%).
    "kd_sgd": {"lr005": dict(optimizer=dict(learning_rate=dict(start=0.05))),
               "lr001": dict(optimizer=dict(learning_rate=dict(start=0.01)))},
    "kd_dot": {"lr005": dict(optimizer=dict(learning_rate=dict(start=0.05))),
               "lr001": dict(optimizer=dict(learning_rate=dict(start=0.01)))},
}
# The cross-architecture pairs (DeiT reads the distillation token's head; kd and dkd the
# class token's). DeiT's hard distillation has no hyper-parameter (alpha 0.5, its paper's).
_VIT_METHODS = {
    "kd": dict(method="kd"),
    "deit_soft": dict(method="deit", deit=dict(type="soft")),
    "deit_hard": dict(method="deit", deit=dict(type="hard")),
    "ofa": dict(method="ofa"),
    "dkd": dict(method="dkd", dkd=dict(warmup_epochs=3)),
    # Between two ViTs: NKD, ViTKD on the tokens (the teacher live), and both (cls_KD's
    # DeiT III-S -> DeiT-T rows: NKD 76.68, ViTKD 76.06, both 77.78), at their references'
    # values.
    "nkd": dict(method="nkd"),
    "vitkd": dict(method="vitkd", cache_teacher=False),
    "nkd_vitkd": dict(method="nkd,vitkd", cache_teacher=False),
}
_VIT_CANDIDATES = {
    "kd": _CANDIDATES["kd"], "dkd": _CANDIDATES["dkd"],
    # DeiT's main.py defaults (alpha 0.5, tau 1), and kd's stronger pair.
    "deit_soft": {"a05_T1": dict(deit=dict(alpha=0.5, temperature=1.0)),
                  "a09_T4": dict(deit=dict(alpha=0.9, temperature=4.0))},
    # OFAKD's train.py default eps 1, and its ImageNet README's 1.5.
    "ofa": {"eps1": dict(ofa=dict(eps=(1.0,))), "eps1_5": dict(ofa=dict(eps=(1.5,)))},
}
_VIT_PRESET_METHODS = {"vit": ("kd", "deit_soft", "deit_hard", "ofa", "dkd"),
                       "vit_reverse": ("kd", "ofa"),
                       "vit_from_vit": ("kd", "deit_soft", "deit_hard", "nkd", "vitkd",
                                        "nkd_vitkd")}
_RESNET_METHODS = (("kd", "dkd", "fitnets", "crd") + _FEATURE_METHODS
                   + ("kd_ctkd", "dkd_ctkd", "mlkd", "mlkd_no_strong", "crld",
                      "crld_no_strong", "wttm", "wttm_crd", "nkd", "sdd_kd",
                      "sdd_dkd", "kd_sgd", "kd_dot"))
# Learning rate and epochs (teacher and students) of each protocol.
_CONVERGED = dict(learning_rate=1e-2, epochs=40)
_SHORT = dict(learning_rate=1e-3, epochs=20)


def _set_protocol(c, learning_rate, epochs, student_epochs=None):
  """Adam with cosine decay from ``learning_rate``; teacher and student epochs."""
  c.optimizer.learning_rate.start = learning_rate
  c.teacher.epochs = epochs
  c.student.epochs = student_epochs or epochs


def _only(c, variants):
  """Train just ``variants`` ({name: fixed settings}) with no validation sweep."""
  c.pipeline.variants = ml_collections.ConfigDict(variants)
  c.pipeline.candidates = ml_collections.ConfigDict()


def _narrow_to_preset(c, arg):
  """The presets that run a subset of the variants, or fixed settings (why, long, curve,
  article_new_logit, *_born_again)."""
  if arg == "article_views":  # MLKD and CRLD with and without their strong view, no sweep.
    live = {"cache_teacher": False}
    _only(c, {"kd": dict(method="kd", alpha=0.9, temperature=4.0),
              **{name: dict(_ARTICLE_METHODS[name], **live)
                 for name in ("mlkd", "mlkd_no_strong", "crld", "crld_no_strong")}})
  if arg == "article_new_logit":  # One session's budget: the references' values, no sweep.
    _only(c, {"kd": dict(method="kd", alpha=0.9, temperature=4.0),
              "wttm": dict(_ARTICLE_METHODS["wttm"], wttm=dict(gamma=0.2, weight=4.0)),
              "nkd": dict(_ARTICLE_METHODS["nkd"], nkd=dict(temperature=1.0, gamma=1.5)),
              "kd_sgd": dict(_ARTICLE_METHODS["kd_sgd"],
                             optimizer=dict(_ARTICLE_METHODS["kd_sgd"]["optimizer"],
                                            learning_rate=dict(start=0.01))),
              "kd_dot": dict(_ARTICLE_METHODS["kd_dot"],
                             optimizer=dict(_ARTICLE_METHODS["kd_dot"]["optimizer"],
                                            learning_rate=dict(start=0.01)))})
  if arg == "why":  # kd alone, with the short protocol's validation choice.
    _only(c, {"kd": dict(method="kd", alpha=0.5, temperature=2.0)})
  if arg == "long":  # The short protocol's choices, at 40 student epochs.
    _only(c, {"kd": dict(method="kd", alpha=0.5, temperature=2.0),
              "kd_ls": dict(method="kd", logit_standardization=True, alpha=0.9,
                            temperature=4.0),
              "dist": dict(method="dist", dist=dict(beta=2.0, gamma=2.0, weight=1.0,
                                                    temperature=4.0))})
  if arg == "curve":  # Labels only at twice the budget: pipeline with no variants.
    _only(c, {})
  if arg.endswith("_born_again"):  # A distill run's settings: kd with its chosen values.
    _only(c, {})
    c.distill.method = "kd"
    c.distill.alpha = config_lib.schedule(0.9)
    c.distill.temperature = config_lib.schedule(4.0)


def _cross_architecture(c, arg):
  """The vit, vit_reverse and vit_from_vit presets: models, budgets and methods."""
  vit_teacher = config_lib.model_config("vit_mini", width=128, epochs=40, seed=0)
  c.teacher = (vit_teacher if arg != "vit" else
               config_lib.model_config("resnet56", width=8, epochs=40, seed=0))
  if arg == "vit_reverse":
    c.student = config_lib.model_config("resnet20", width=8, epochs=20, seed=0)
  else:  # The ViT student's learning rate: the campaign passes its validation choice.
    c.student = config_lib.model_config("vit_mini_distilled", epochs=40, seed=0)
    c.optimizer.learning_rate.start = 1e-3
  c.pipeline.variants = ml_collections.ConfigDict()
  c.pipeline.candidates = ml_collections.ConfigDict()
  for name in _VIT_PRESET_METHODS[arg]:
    c.pipeline.variants[name] = dict(_VIT_METHODS[name])
    if name in _VIT_CANDIDATES:
      c.pipeline.candidates[name] = _VIT_CANDIDATES[name]


def _shrink_to_tiny(c):
  """The tiny preset: the same campaign on synthetic data in seconds (tests)."""
  c.dataset = "synthetic"
  c.train_size = 0
  c.validation_size = 200
  c.global_batch_size = 64
  c.run.eval_batch_size = 128
  c.run.steps_per_loop = 10
  c.run.latency_repeats = 2  # Its latency figures are not read.
  c.teacher = config_lib.model_config("resnet_article", width=4, epochs=1, seed=0)
  c.student = config_lib.model_config("cnn_article", width=4, epochs=1, seed=0)
  c.pipeline.seeds = (0, 1)
  c.pipeline.variants.crd.crd.negatives = 64
  c.run.allow_weak_teacher = True


def get_config(arg="article"):
  """The benchmark protocol for preset ``arg`` (see the module docstring)."""
  arg = arg or "article"
  config_lib.check_preset("method_benchmark", arg, PRESETS)
  c = config_lib.base_config()
  c.dataset = "fashion_mnist"
  c.train_size = 5000
  c.teacher = config_lib.model_config("resnet_article", width=16, seed=0)
  c.student = config_lib.model_config("cnn_article", width=16, seed=0)
  methods = dict(_ARTICLE_METHODS)
  if arg in ("resnet", "resnet_features", "resnet_fitnets", "resnet_born_again"):
    c.teacher = config_lib.model_config("resnet56", width=8, seed=0)
    c.student = config_lib.model_config("resnet20", width=8, seed=0)
    methods = {name: _ARTICLE_METHODS[name] for name in _RESNET_METHODS}
  if arg.endswith("_features"):
    methods = {name: methods[name] for name in ("kd",) + _FEATURE_METHODS}
  if arg.endswith("_fitnets"):
    methods = {"fitnets": methods["fitnets"]}
  if arg in ("short", "long", "why"):
    methods["dkd"] = dict(method="dkd", dkd=dict(warmup_epochs=1))
    _set_protocol(c, **_SHORT, student_epochs=40 if arg == "long" else None)
  else:  # Nearly converged: resnet20 by 20 epochs (+0.63 at 40), cnn_article by 40 (+0.77 at 80).
    _set_protocol(c, **_CONVERGED,
                  student_epochs={"curve": 80, "resnet": 20, "resnet_features": 20,
                                  "resnet_fitnets": 20, "resnet_born_again": 20}.get(arg))
  # The teacher-output cache: logits, and the pooled feature RKD, PKT, CRD and CC read; the
  # methods on feature maps run the teacher live.
  c.distill.cache_teacher = True
  c.pipeline.seeds = (0, 1, 2)
  if arg in ("article", "resnet"):  # No teacher: a DML cohort of 2, and USKD.
    c.pipeline.dml_cohort = 2
    c.pipeline.teacher_free = ("uskd",)
  for name, settings in methods.items():
    live = settings["method"] in _LIVE_METHODS
    c.pipeline.variants[name] = dict(settings, **({"cache_teacher": False} if live else {}))
    c.pipeline.candidates[name] = _CANDIDATES[name]
  _narrow_to_preset(c, arg)
  if arg in _VIT_PRESET_METHODS:
    _cross_architecture(c, arg)
  c.run.stability_ops = ()
  c.run.eval_every_epochs = 5
  c.run.checkpoint_every_seconds = 120
  c.pipeline.export_students = False
  if arg == "tiny":
    _shrink_to_tiny(c)
  return config_lib.finalize(c)
