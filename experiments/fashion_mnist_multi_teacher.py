"""Multi-teacher distillation on Fashion-MNIST: three teachers of different architectures.

    ./launch.sh pipeline --experiment=fashion_mnist_multi_teacher --workdir=runs/multi_teacher

Teachers: resnet_article width 16 (seed 0), resnet20 width 8 (seed 1), cnn_article width 64 (seed 2),
2 epochs each; student cnn_article width 16, 4 epochs, T=4, alpha=0.7; soft labels combined by
``prob_mean`` (the seed's recipe: the mean of the teachers' softened probabilities). The
teacher-output cache is on (no random augmentation), so a distillation step costs about what a
student-only step costs. The table has one row per teacher, the ensemble, the labels-only
student, the student distilled from the first teacher and from all three.
About 20 minutes on 2 CPU cores. Try --config.distill.combine=logit_mean or kl_sum, and
--config.distill.teacher_weights="(2,1,1)".
"""

from kd_research import config as config_lib

PRESETS = ()


def get_config(arg=None):
  """Three teachers, one student."""
  config_lib.check_preset("fashion_mnist_multi_teacher", arg, PRESETS)
  c = config_lib.base_config()
  c.teacher = config_lib.model_config("resnet_article", width=16, epochs=2, seed=0)
  c.extra_teachers.resnet20 = config_lib.model_config("resnet20", width=8, epochs=2, seed=1)
  c.extra_teachers.wide_cnn = config_lib.model_config("cnn_article", width=64, epochs=2, seed=2)
  c.student = config_lib.model_config("cnn_article", width=16, epochs=4, seed=0)
  c.distill.temperature = config_lib.schedule(4.0)
  c.distill.cache_teacher = True
  return config_lib.finalize(c)
