"""The teacher cache with augmentation on Fashion-MNIST: live teacher vs cached views.

    ./launch.sh pipeline --experiment=fashion_mnist_view_cache --workdir=runs/view_cache
    du -b runs/view_cache/student_kd_*/seed_0/teacher_cache/views-*/*.rows   # disk per form

Teacher and student as in fashion_mnist:quick (resnet_article w16, 3 epochs -> cnn_article w16),
every student 2 epochs of KD (alpha 0.5, T 2) with flip and crop (the teacher trains with
them too, and sees the student's augmented view), seeds 0, 1, 2. Variants:
  live      the teacher runs on every step
  f32       cached views, full float32 logits (the same training as live, bit for bit)
  f16       cached views, float16 logits (half the disk)
  top3      cached views, top-3 logits + the tail's mass
  top1      cached views, top-1 logit + the tail's mass
Rerunning the command skips finished runs; every run resumes where it stopped.
"""

from kd_research import config as config_lib

PRESETS = ()


def get_config(arg=None):
  """Five ways to give the student its teacher's outputs on augmented views."""
  config_lib.check_preset("fashion_mnist_view_cache", arg, PRESETS)
  c = config_lib.base_config()
  c.teacher = config_lib.model_config("resnet_article", width=16, epochs=3, seed=0)
  c.student = config_lib.model_config("cnn_article", width=16, epochs=2, seed=0)
  c.augment.ops = ("flip", "crop")
  c.distill.alpha = config_lib.schedule(0.5)
  c.distill.temperature = config_lib.schedule(2.0)
  c.pipeline.seeds = (0, 1, 2)
  c.pipeline.export_students = False
  c.pipeline.variants.live = dict(cache_teacher=False)
  c.pipeline.variants.f32 = dict(cache_teacher=True)
  c.pipeline.variants.f16 = dict(cache_teacher=True, cache_dtype="float16")
  c.pipeline.variants.top3 = dict(cache_teacher=True, cache_topk=3)
  c.pipeline.variants.top1 = dict(cache_teacher=True, cache_topk=1)
  return config_lib.finalize(c)
