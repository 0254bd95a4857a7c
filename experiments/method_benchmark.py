"""The method benchmark on a CPU budget: every distillation method, two teacher -> student
pairs, hyper-parameters chosen on validation, 3 seeds each.

    ./launch.sh pipeline --experiment=method_benchmark:article --workdir=runs/benchmark/article
    ./launch.sh pipeline --experiment=method_benchmark:resnet --workdir=runs/benchmark/resnet
    ./launch.sh report --workdir=runs/benchmark --sweep=runs/benchmark_sweep \\
        --output=RESULTS.md --figure=results_methods.svg

Each command trains its teacher, runs every method's candidates once (seed 0) in
runs/benchmark_sweep/<pair>/ and keeps the one with the best *validation* accuracy
(selection.json), then trains the labels-only student and each method with the chosen
hyper-parameters over seeds 0, 1, 2. Every run is resumable and finished runs are
skipped: rerunning a command continues the campaign wherever it stopped.
``./launch.sh benchmark`` runs these, the ``curve``, ``long`` and ``why`` runs, Keras' own
Distiller on the article pair (``keras_peer``) and both reports (RESULTS.md, RESULTS_WHY.md).

Presets:
  article  the seed article's pair, resnet_seed w16 (174K) -> cnn_seed w16 (24K): kd,
           kd + logit standardization, dkd, dist, fitnets, at, rkd, pkt, sp, crd.
  resnet   a same-family pair of the standard benchmark at half width, resnet56 w8
           (0.22M) -> resnet20 w8 (0.07M): kd, dkd, fitnets, crd.
  curve    the article pair's labels-only student at twice the budget (is it converged?).
  long     the article pair at twice the budget (40 epochs) for labels only and the logit
           methods kd, kd + ls and dist with their validation choice: does the ranking hold?
  why      labels only and kd (alpha and T as chosen for the article pair) over 3 seeds, for
           the "why" axes: a teacher given by --config.teacher.path (or trained for
           --config.teacher.epochs) and the student's --config.student.width.
  tiny     synthetic data, a few steps: the tests' smoke run of the whole protocol.

Protocol (both pairs): Fashion-MNIST, a fixed 10,000-image training subset
(config.train_size; the teacher trains on it too), the usual 5,000-image validation split,
the full 10,000-image test split evaluated once at the end of each run (last epoch, not
best); Adam 1e-3 with cosine decay, batch 128; teacher 15 epochs; students 15 epochs
(the labels-only student's learning curve flattens there: the ``curve`` preset trains it
for 30). Logit methods read the teacher-output cache; feature methods run the teacher
live. CRD uses 4,096 negatives (16,384 in the reference; the CPU cost of the bank's gather
grows with K). DKD's warm-up is 1 epoch (20 of 240 in the reference: the same share of a
short run). The budget was chosen from measured step rates on a 2-core CPU so that the
whole campaign fits in about 90 minutes there.
"""

import ml_collections

from kd_research import config as config_lib

PRESETS = ("article", "resnet", "curve", "why", "long", "tiny")

# {method variant: its fixed settings}; candidates below are tried on validation.
_ARTICLE_METHODS = {
    "kd": dict(method="kd"),
    "kd_ls": dict(method="kd", logit_standardization=True),
    "dkd": dict(method="dkd", dkd=dict(warmup_epochs=1)),
    "dist": dict(method="dist"),
    "fitnets": dict(method="fitnets"),
    "at": dict(method="at"),
    "rkd": dict(method="rkd"),
    "pkt": dict(method="pkt"),
    "sp": dict(method="sp"),
    "crd": dict(method="crd", crd=dict(negatives=4096)),
}
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
}
_RESNET_METHODS = ("kd", "dkd", "fitnets", "crd")


def get_config(arg="article"):
  """The benchmark protocol for pair ``arg`` (see the module docstring)."""
  arg = arg or "article"
  config_lib.check_preset("method_benchmark", arg, PRESETS)
  c = config_lib.base_config()
  c.dataset = "fashion_mnist"
  c.train_size = 5000
  c.teacher = config_lib.model_config("resnet_seed", width=16, epochs=20, seed=0)
  c.student = config_lib.model_config("cnn_seed", width=16, epochs=20, seed=0)
  methods = dict(_ARTICLE_METHODS)
  if arg == "resnet":
    c.teacher = config_lib.model_config("resnet56", width=8, epochs=20, seed=0)
    c.student = config_lib.model_config("resnet20", width=8, epochs=20, seed=0)
    methods = {name: _ARTICLE_METHODS[name] for name in _RESNET_METHODS}
  # The teacher-output cache: logits, and the pooled feature RKD, PKT and CRD read; the
  # methods on feature maps (fitnets, at, sp) run the teacher live.
  c.distill.cache_teacher = True
  c.pipeline.seeds = (0, 1, 2)
  for name, settings in methods.items():
    maps = settings["method"] in ("fitnets", "at", "sp")
    c.pipeline.variants[name] = dict(settings, **({"cache_teacher": False} if maps else {}))
    c.pipeline.candidates[name] = _CANDIDATES[name]
  if arg == "why":  # kd alone, with the article pair's validation choice (selection.json).
    c.pipeline.variants = ml_collections.ConfigDict({"kd": dict(method="kd", alpha=0.5,
                                                                temperature=2.0)})
    c.pipeline.candidates = ml_collections.ConfigDict()
  if arg == "long":  # The article pair's choices (selection.json), at 40 epochs.
    c.student = config_lib.model_config("cnn_seed", width=16, epochs=40, seed=0)
    c.pipeline.variants = ml_collections.ConfigDict({
        "kd": dict(method="kd", alpha=0.5, temperature=2.0),
        "kd_ls": dict(method="kd", logit_standardization=True, alpha=0.9, temperature=4.0),
        "dist": dict(method="dist", dist=dict(beta=2.0, gamma=2.0))})
    c.pipeline.candidates = ml_collections.ConfigDict()
  if arg == "curve":  # Labels only at twice the budget: pipeline with no variants.
    c.student = config_lib.model_config("cnn_seed", width=16, epochs=40, seed=0)
    c.pipeline.variants = ml_collections.ConfigDict()
    c.pipeline.candidates = ml_collections.ConfigDict()
  c.run.stability_ops = ()
  c.run.eval_every_epochs = 5
  c.run.checkpoint_every_seconds = 120
  c.pipeline.export_students = False
  if arg == "tiny":
    c.dataset = "synthetic"
    c.train_size = 0
    c.validation_size = 200
    c.global_batch_size = 64
    c.run.eval_batch_size = 128
    c.run.steps_per_loop = 10
    c.teacher = config_lib.model_config("resnet_seed", width=4, epochs=1, seed=0)
    c.student = config_lib.model_config("cnn_seed", width=4, epochs=1, seed=0)
    c.pipeline.seeds = (0, 1)
    c.pipeline.variants.crd.crd.negatives = 64
    c.run.allow_weak_teacher = True
  return config_lib.finalize(c)
