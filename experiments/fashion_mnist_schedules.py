"""Alpha/temperature schedules and distill-then-fine-tune on Fashion-MNIST, same step budget.

    ./launch.sh pipeline --experiment=fashion_mnist_schedules --workdir=runs/schedules

Teacher and student as in fashion_mnist:quick (resnet_article width 16, cnn_article width 16);
every student trains 2 epochs (858 steps). Variants (one row each in results.md):
  constant   alpha = 0.7, T = 4 throughout (the seed's recipe)
  linear     alpha 0.9 -> 0.3 linearly (distillation-heavy early, label-heavy late)
  cosine     alpha 0.9 -> 0.3 on a cosine, T 8 -> 2 on a cosine
  finetune   alpha = 0.7 for 1 epoch, then 1 epoch labels only (teacher not evaluated)
About 12 minutes on 2 CPU cores (the teacher and baseline are shared with nothing else;
point --config.teacher.path at runs/quickstart/teacher/model.keras to reuse that teacher).
"""

from kd_research import config as config_lib

PRESETS = ()


def get_config(arg=None):
  """Four distillation variants with the quick preset's models and budget."""
  config_lib.check_preset("fashion_mnist_schedules", arg, PRESETS)
  c = config_lib.base_config()
  c.teacher = config_lib.model_config("resnet_article", width=16, epochs=2, seed=0)
  c.student = config_lib.model_config("cnn_article", width=16, epochs=2, seed=0)
  c.distill.temperature = config_lib.schedule(4.0)
  c.pipeline.variants.constant = dict(alpha=0.7)
  c.pipeline.variants.linear = dict(alpha=dict(kind="linear", start=0.9, end=0.3))
  c.pipeline.variants.cosine = dict(alpha=dict(kind="cosine", start=0.9, end=0.3),
                                    temperature=dict(kind="cosine", start=8.0, end=2.0))
  c.pipeline.variants.finetune = dict(alpha=0.7, finetune_epochs=1)
  return config_lib.finalize(c)
