"""The seed article's exact CIFAR-10 setup (needs the real CIFAR-10 data and, in practice, a GPU).

    ./launch.sh pipeline --experiment=cifar10_article --workdir=runs/cifar10_article \
        --config.run.data_dir=/path/containing/cifar-10-batches-py

Teacher: resnet_article (64 base filters, ~1.2M params here with the projection
shortcuts), Adam, 50 epochs. Student: cnn_article (32 base filters), T=10,
alpha=0.7, Adam, 30 epochs. Expected runtime: about an hour on one modern GPU; days
on a 2-core CPU (not recommended there).

The article's claimed table (as printed, NOT reproduced by us; CLAIMED_TABLE below,
quoted by ``./launch.sh report --claims=cifar10_article``):

| model | params | test accuracy | inference ms/batch |
|---|---|---|---|
| ResNet teacher | ~1.4M | 92.1% | 48 |
| CNN student, labels only | ~120K | 86.3% | 12 |
| CNN student, distilled | ~120K | 89.7% | 12 |

Preset ``mini`` runs the same pipeline for a few steps on whatever CIFAR-format
data is in data_dir (the tests use a generated miniature in the real format).
"""

from kd_research import config as config_lib

PRESETS = ("mini",)

# The seed article's CIFAR-10 numbers, verbatim. A claim, never a measurement of ours.
CLAIMED_TABLE = """\
| model (CIFAR-10, the article's setup) | params | test accuracy | inference ms/batch |
|---|---|---|---|
| ResNet teacher | ~1.4M | 92.1% | 48 |
| CNN student, labels only | ~120K | 86.3% | 12 |
| CNN student, distilled (T=10, alpha=0.7) | ~120K | 89.7% | 12 |

Source: the tutorial article this project grew from ("knowledge distillation in
TensorFlow 2: a small model reproduces a large model's results"), whose setup the
docstring of experiments/cifar10_article.py restates. Not reproduced here: no
CIFAR-10 download and no GPU on the machine that produced the measured tables. Run it with
`./launch.sh pipeline --experiment=cifar10_article --workdir=runs/cifar10_article
--config.run.data_dir=DIR_WITH_cifar-10-batches-py` on a GPU.
"""


def get_config(arg=None):
  """The seed's CIFAR-10 configuration; ``mini`` shrinks it to a smoke test."""
  config_lib.check_preset("cifar10_article", arg, PRESETS)
  c = config_lib.base_config()
  c.dataset = "cifar10"
  c.validation_size = 5000
  c.optimizer.learning_rate = config_lib.schedule(1e-3)  # The article uses plain Adam(1e-3).
  c.teacher = config_lib.model_config("resnet_article", width=64, epochs=50, seed=0)
  c.student = config_lib.model_config("cnn_article", width=32, epochs=30, seed=0)
  c.distill.alpha = config_lib.schedule(0.7)
  c.distill.temperature = config_lib.schedule(10.0)
  if arg == "mini":
    c.validation_size = 20
    c.global_batch_size = 16
    c.run.eval_batch_size = 32
    c.teacher = config_lib.model_config("resnet_article", width=4, epochs=1, seed=0)
    c.student = config_lib.model_config("cnn_article", width=4, epochs=1, seed=0)
    c.run.steps_per_loop = 5
    c.run.latency_repeats = 2  # A smoke test: its latency figures are not read.
    # A smoke test of the pipeline: one epoch of a width-4 teacher is not expected to
    # beat chance, so the teacher check is waived on purpose.
    c.run.allow_weak_teacher = True
  return config_lib.finalize(c)
