"""The results experiment behind RESULTS.md: two teachers, an MLP student, 3 seeds per student.

    ./launch.sh pipeline --experiment=fashion_mnist_results --workdir=runs/results
    ./launch.sh report --workdir=runs/results --output=RESULTS.md

Teachers (trained once, fixed seeds, reused by every student): resnet_seed width 16,
8 epochs, seeds 0 and 1. Student: placeholder until the validation sweep picks it.
"""

from kd_research import config as config_lib


def get_config(arg=None):
  """Two resnet_seed teachers (seeds 0, 1); students over seeds 0, 1, 2."""
  del arg
  c = config_lib.base_config()
  c.teacher = config_lib.model_config("resnet_seed", width=16, epochs=8, seed=0)
  c.extra_teachers.seed1 = config_lib.model_config("resnet_seed", width=16, epochs=8, seed=1)
  c.student = config_lib.model_config("mlp", width=128, epochs=15, seed=0)
  c.distill.cache_teacher = True
  c.checkpoint_every_steps = 1000
  return config_lib.finalize(c)
