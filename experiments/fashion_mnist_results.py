"""The experiment behind results/RESULTS_MLP.md: two teachers, an MLP student, every student over 3 seeds.

    ./launch.sh pipeline --experiment=fashion_mnist_results --workdir=runs/results
    ./launch.sh report --workdir=runs/results --output=results/RESULTS_MLP.md \\
        --sweep=runs/results_sweep --claims=cifar10_article

Teachers (trained once with fixed seeds, reused by every student): resnet_article width 16,
8 epochs, seeds 0 and 1 (174K params each). Student: a 2x128 MLP (118K params), 40 epochs,
seeds 0, 1, 2; all students read the teachers' outputs from one shared cache, so a
distillation run costs what a labels-only run costs. About 45 minutes on 2 CPU cores
(teachers ~20 min each, 15 student runs ~1.5 min each).

Rows (variants):
  labels only   the student trained on labels
  kd            alpha 0.5, T 2 (constant), primary teacher only
  kd_multi      the same from both teachers (mean of their softened probabilities)
  kd_cosine     alpha 0.5, T 4 -> 1 on a cosine, primary teacher (the best schedule on
                validation: 90.74% vs linear alpha 0.9 -> 0.1 90.68%, constant 90.62%)
  kd_finetune   alpha 0.5, T 2 for 30 epochs, then 10 epochs labels only, primary teacher

Every choice (student, epochs, alpha, T, schedule, fine-tune length) was made on the
validation split with single-seed runs listed in results/RESULTS_MLP.md ("Hyper-parameter selection");
the test split is evaluated once at the end of each final run. Per-epoch validation runs
every 5 epochs and the teacher-stability probe is off: both only feed TensorBoard and cost
more than the student's training here.
"""

from kd_research import config as config_lib

PRESETS = ()


def get_config(arg=None):
  """Two resnet_article teachers; an MLP student distilled four ways; seeds 0, 1, 2."""
  config_lib.check_preset("fashion_mnist_results", arg, PRESETS)
  c = config_lib.base_config()
  c.teacher = config_lib.model_config("resnet_article", width=16, epochs=8, seed=0)
  c.extra_teachers.seed1 = config_lib.model_config("resnet_article", width=16, epochs=8, seed=1)
  c.student = config_lib.model_config("mlp", width=128, epochs=40, seed=0)
  c.pipeline.seeds = (0, 1, 2)
  c.distill.cache_teacher = True
  c.distill.alpha = config_lib.schedule(0.5)
  c.distill.temperature = config_lib.schedule(2.0)
  c.pipeline.variants.kd = dict(teachers="primary")
  c.pipeline.variants.kd_multi = dict(teachers="all")
  c.pipeline.variants.kd_cosine = dict(
      teachers="primary", temperature=dict(kind="cosine", start=4.0, end=1.0))
  c.pipeline.variants.kd_finetune = dict(teachers="primary", finetune_epochs=10)
  c.run.stability_ops = ()
  c.run.eval_every_epochs = 5
  c.run.checkpoint_every_steps = 2000
  c.pipeline.export_students = False
  return config_lib.finalize(c)
