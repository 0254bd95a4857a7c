"""What each config field means: the text of docs/config.md (config_reference.py renders it
with the defaults read from the schema, and refuses a field without a line here)."""

INTRO = """# Configuration reference

Generated from the config schema (`kd_research/config.py:base_config()`) by `{command}`;
do not edit by hand (tests/tools/test_config_reference.py checks that it is current).

Experiments (`experiments/NAME.py`) start from `base_config()` and change a few fields;
`--config.FIELD=VALUE` overrides them on the command line, `kd_research.make_config(...)` in
Python. The config is locked: a misspelt field fails with the valid names. The top-level
fields and the sections `optimizer`, `teacher`, `student`, `extra_teachers`, `augment`,
`distill` and `loss_scale` decide a run's result (its identity, `config.json`); the sections
`run`, `distribution` and `pipeline` never do, so they may change between a run and its
resume. Lists are tuples: `--config.pipeline.seeds=0,1,2` or
`"--config.augment.ops=('flip','crop')"` (a comma list in one string works too).
Every value is checked before anything is written (`run_spec.parse`)."""

SCHEDULES = ("distill.alpha", "distill.temperature", "optimizer.learning_rate")

SECTIONS = (
    ("", "Data, batch and precision (top level)",
     "A built-in dataset (in memory) or a streamed source by spec; see docs/data.md. "
     "Precision: bf16 is fast only where the hardware implements it (AMX, Ampere+ GPUs); "
     "`auto` picks it there and float32 elsewhere, and results.json records what it chose "
     "and why. The default `none` gives the same numbers on every machine, up to rounding."),
    ("data", "`data`: how file sources are read",
     "Ignored by the built-in in-memory datasets."),
    ("labels", "`labels`: the transfer set",
     "Students have labels for `count` examples (or a `fraction`) of the training split, "
     "chosen by `seed`; a distilled student learns from the teacher's soft labels on every "
     "training image and from the CE term only where a label exists; a labels-only student "
     "trains on the labelled examples for the same number of steps. Teachers always train "
     "on every label."),
    ("loss_scale", "`loss_scale`: fp16's dynamic loss scaling",
     "Used with `mixed_precision=fp16` only."),
    ("optimizer", "`optimizer`",
     "`optimizer.learning_rate` is a schedule (below), over the whole run."),
    ("model", "`teacher`, `student` and `extra_teachers.NAME`: model entries",
     "The same fields for every model entry (shown here as `model.FIELD`: write "
     "`teacher.FIELD` or `student.FIELD`). `extra_teachers.NAME` adds a teacher for "
     "multi-teacher distillation; the ensemble is `teacher` followed by the extra ones in "
     "name order."),
    ("schedule", "Schedules: `distill.alpha`, `distill.temperature`, `optimizer.learning_rate`",
     "Each scheduled quantity has these fields (shown as `schedule.FIELD`). With p = step / "
     "steps (the distillation phase for alpha and T, the whole run for the learning rate): "
     "`constant` = start; `linear` = start + (end - start) p; `cosine` = end + (start - end)"
     "(1 + cos(pi p)) / 2; `exponential` = start (end / start)^p (both > 0); `piecewise` = "
     "values[i] for boundaries[i-1] <= p < boundaries[i]. Defaults: alpha constant 0.7, T "
     "constant 10, learning rate cosine 1e-3 -> 0. Checked over the whole run before "
     "training: alpha in [0, 1], T > 0, every value finite."),
    ("augment", "`augment`: augmentation",
     "Teacher and student see the same augmented images; stateless and replica-independent."),
    ("distill", "`distill`: distillation",
     "The fields every method shares; each method's own section follows below."),
    ("run", "`run`: bookkeeping and monitoring", "Never part of a run's identity."),
    ("distribution", "`distribution`: devices and cluster", "Never part of a run's identity."),
    ("pipeline", "`pipeline`: the campaign of `./launch.sh pipeline`",
     "Never part of a run's identity. Besides the fields below: `pipeline.variants.NAME.FIELD"
     "=VALUE` names distilled students, each with some `distill.*` fields changed (a "
     "variant's `teachers` key, `all` or `primary`, picks its teachers; a number for a "
     "schedule field is a constant schedule), and `pipeline.candidates.VARIANT.NAME.FIELD` "
     "lists hyper-parameters chosen on validation: each candidate runs once, with the first "
     "seed, in `sweep_dir`; the variant's seeds then use the best, recorded in "
     "`selection.json`."),
)

METHODS_INTRO = """## Method sections: `distill.<name>`

`--config.distill.method=NAME` (several: `kd,at`) picks the methods; each method's fields
live in its own section, documented by the method itself (its `defaults` and `field_docs`).
What each method computes, the taps it reads and every departure from its reference:
docs/methods.md."""

FIELDS = {
    # Top level.
    "dataset": "fashion_mnist, mnist, cifar10, cifar100, synthetic (in memory), npz:PATH, "
               "or a streamed source: folder:PATH, tfrecord:PATTERN, tfds:NAME[:VERSION]",
    "image_size": "file sources: resize and crop to NxN (0: the images' own size)",
    "validation_size": "examples carved from the training split for validation",
    "validation_seed": "which examples form the validation split",
    "train_size": "> 0: use only this many training examples (quick runs)",
    "test_size": "> 0: evaluate on only this many test examples (tests only)",
    "global_batch_size": "examples per step over every replica (must divide by the replica "
                         "count)",
    "mixed_precision": "none (float32) | bf16 | fp16 (dynamic loss scaling) | auto (bf16 "
                       "where the hardware has native bf16 units)",
    "deterministic": "TF op determinism: bit-exact resume, slower",
    # data
    "data.train_view": "center (resize + centre crop) | inception (random-resized crop + "
                       "flip; needs image_size)",
    "data.crop_area_min": "inception crop: the smallest share of the image's area",
    "data.eval_crop_fraction": "evaluation: resize to image_size / this, then centre crop",
    "data.channels": "0: the images' own (must agree) | 1 grey | 3 RGB",
    "data.skip_corrupt": "folder: skip corrupt images (counted in results.json) instead of "
                         "refusing them",
    "data.shuffle_buffer": "TFRecord/TFDS: records mixed after the shard interleave",
    "data.label_offset": "TFRecord: subtracted from the stored labels (1 for converters "
                         "that number classes from 1)",
    "data.num_classes": "TFRecord glob without a manifest: 0 = the largest label + 1",
    "data.tfds_dir": "TFDS data dir (default $TFDS_DATA_DIR, then ~/tensorflow_datasets)",
    # labels
    "labels.count": "labelled training examples for students (0: all)",
    "labels.fraction": "or this share of them (0.0: all)",
    "labels.seed": "which examples carry labels",
    # loss_scale
    "loss_scale.initial": "the starting loss scale (halved on overflow)",
    "loss_scale.growth_steps": "doubled after this many finite steps",
    # optimizer
    "optimizer.name": "adam | adamw | sgd",
    "optimizer.momentum": "SGD's momentum",
    "optimizer.weight_decay": "decoupled weight decay (AdamW-style)",
    "optimizer.decay_norms_biases_tokens": "false: weight_decay spares biases, norm scales "
                                           "and offsets, ViT tokens and position embeddings "
                                           "(timm's rule; coupled l2 is not affected)",
    "optimizer.dot_delta": "DOT (distillation runs, SGD): task momentum - delta, "
                           "distillation momentum + delta (mdistiller's 0.075); 0 = off",
    "optimizer.l2": "coupled L2: l2 * w added to the gradient, PyTorch SGD's weight_decay "
                    "(the CIFAR-100 protocol's 5e-4)",
    # Model entries (teacher, student, extra_teachers.NAME).
    "model.model": "a registered family (resnet_article, cnn_article, mlp, the CIFAR family "
                   "resnet20 ... wrn_40_2, vgg13, the ImageNet family resnet18 ..., the "
                   "vision transformers deit_tiny ... deit_base[_distilled], vit_mini[_distilled], "
                   "keras.applications backbones) or the user's package.module:function",
    "model.width": "0: the model's default; the CIFAR family scales every channel count by "
                   "width / default",
    "model.sync_bn": "BatchNorm statistics over the global batch (results independent of "
                     "the replica count; one all-reduce per BN layer)",
    "model.epochs": "training epochs of this model",
    "model.seed": "initialisation, data order and augmentation",
    "model.path": "teachers: a trained .keras file used instead of training",
    "model.image_size": "keras.applications: input size (0 = 224)",
    "model.weights": "keras.applications: '' (random) | imagenet | a weights file",
    "model.head_epochs": "keras.applications: head-only epochs before unfreezing",
    "model.unfreeze_top": "keras.applications: backbone layers unfrozen after the head "
                          "(0: all)",
    "model.finetune_lr_factor": "keras.applications: learning-rate factor after unfreezing",
    "model.kwargs": "the user's model function: extra keyword arguments (a JSON object)",
    "model.init": "a .keras file to start training from (architecture and weights)",
    "model.cohort": "students: N >= 2 trains N students together by deep mutual learning "
                    "(no teacher); 0 = one student",
    "model.objective": "a teacher-free objective for its labels-only runs ('' = "
                       "cross-entropy; uskd: its fields in distill.uskd)",
    "model.drop_path": "stochastic depth rate of the models that have it (the ViTs: the last "
                       "block's, rising linearly from 0); replica-independent; 0 = none",
    # Schedules.
    "schedule.kind": "constant | linear | cosine | exponential | piecewise",
    "schedule.start": "the value at the start",
    "schedule.end": "the value at the end",
    "schedule.boundaries": "piecewise: boundaries as fractions of the run",
    "schedule.values": "piecewise: one value per interval (one more than boundaries)",
    "schedule.warmup_steps": "> 0: a linear ramp from warmup_from first, over these steps",
    "schedule.warmup_from": "where the warm-up starts",
    # augment
    "augment.ops": "flip, crop, rotate, cutout, randaugment, mixup, cutmix (applied in this "
                   "order)",
    "augment.crop_padding": "crop: pixels of padding before the random crop",
    "augment.rotation_degrees": "rotate: the largest angle",
    "augment.cutout_size": "cutout: the side of the square",
    "augment.repeats": "repeated augmentation (DeiT: 3): each image of a global batch r times, "
                       "each copy augmented on its own; an epoch keeps its steps (about n / r "
                       "distinct images); 1 = off",
    "augment.erase_prob": "erase: the probability of erasing a box of an image (DeiT's "
                          "--reprob 0.25)",
    "augment.mixup_alpha": "mixup: Beta(alpha, alpha)",
    "augment.cutmix_alpha": "cutmix: Beta(alpha, alpha)",
    "augment.randaugment_layers": "randaugment: ops per image",
    "augment.views": "extra views of each image for the methods that read them: "
                     "NAME=OPS;... (MLKD's own strong view needs no entry)",
    # distill
    "distill.method": "the registered methods, one or several: kd, dkd, dist, mlkd, "
                      "fitnets, at, rkd, pkt, sp, crd, ofd, reviewkd, vid, nst, cc, deit; 'kd,at'",
    "distill.ce_weight": "CE weight of the methods beyond kd (kd weighs it 1 - alpha)",
    "distill.logit_standardization": "Sun et al. 2024: z-scored logits (kd, dkd, mlkd)",
    "distill.combine": "several teachers: prob_mean | logit_mean | kl_sum",
    "distill.teacher_weights": "one weight per teacher (empty: uniform)",
    "distill.finetune_epochs": "the last N student epochs train on labels only (alpha 0, "
                               "no teacher run)",
    "distill.finetune_lr_factor": "learning-rate factor in that stage",
    "distill.cache_teacher": "the teachers' outputs computed once and cached (with "
                             "augmentation: per training view); refused for methods on "
                             "feature maps",
    "distill.cache_dtype": "float32 (exact) | float16 (half the disk)",
    "distill.cache_topk": "0: full logits; k: the top k per view and the tail's mass",
    # run
    "run.experiment": "set by main.py to the experiment spec",
    "run.data_dir": "searched first for built-in datasets; then $KD_DATA_DIR and the "
                    "standard places",
    "run.log_every_steps": "train scalars every N steps",
    "run.checkpoint_every_steps": "checkpoint every N steps",
    "run.checkpoint_every_seconds": "> 0: also checkpoint when this much time has passed",
    "run.keep_checkpoints": "checkpoints kept",
    "run.eval_every_epochs": "validation every N epochs",
    "run.steps_per_loop": "steps per tf.function call",
    "run.eval_batch_size": "rounded up to a multiple of the replica count",
    "run.latency_repeats": "timed inference passes (after as many warm-up passes, at most 3) "
                           "behind results.json's ms/batch: their median; smoke presets time "
                           "few",
    "run.saved_model": "also write RUN/saved_model, a SavedModel of the trained model "
                       "(./launch.sh export writes a verified one with the TFLite files)",
    "run.jit_compile": "XLA for the forward and backward pass (a GPU option; slower on CPU)",
    "run.data_threads": "tf.data's private thread pool (0: TF's default)",
    "run.stability_ops": "the teacher-stability probe's augmentation (empty: off)",
    "run.cache_dir": "where teacher outputs are cached (default RUN/teacher_cache; a "
                     "pipeline shares WORKDIR/teacher_cache; files are fingerprinted)",
    "run.allow_weak_teacher": "distil from a teacher not clearly above chance (refused by "
                              "default)",
    # distribution
    "distribution.strategy": "default | mirrored | multi_worker | auto",
    "distribution.num_cpu_devices": "mirrored without GPUs: logical CPU replicas",
    "distribution.cross_device_ops": "mirrored: auto | nccl | hierarchical_copy | "
                                     "reduce_to_one",
    "distribution.cluster": "multi_worker: tf_config | slurm",
    "distribution.slurm_port_base": "cluster=slurm: task k of a node listens on this + k",
    "distribution.collective_timeout_seconds": "a dead peer becomes an error after this long",
    # pipeline
    "pipeline.seeds": "student seeds: each student stage runs in STAGE/seed_K (empty: the "
                      "student's seed once)",
    "pipeline.sweep_dir": "where candidates run (default <parent of WORKDIR>_sweep/<name of "
                          "WORKDIR>)",
    "pipeline.export_students": "SavedModel + TFLite of each distilled student",
    # The training schemes' fields (pipeline.chain, ...) are described by the schemes.
}
