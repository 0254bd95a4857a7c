"""A keras.applications teacher (MobileNetV2), fine-tuned on Fashion-MNIST, then distilled.

    ./launch.sh pipeline --experiment=fashion_mnist_pretrained_teacher --workdir=runs/pretrained

CPU version (this file's default): MobileNetV2 with weights=None (no download) at 32x32
input, 1 head-only epoch (the recipe's warm-up; with a random backbone the head learns
little) then 2 epochs with the whole backbone unfrozen (random init: BatchNorm trains, with
momentum 0.9); student cnn_article width 16, 2 epochs, T=2, alpha=0.5. Measured on 2 CPU
cores: a head-only epoch ~40 s, a fine-tune epoch ~85 s (1420 and 660 examples/s).

With network and a GPU, the recipe the seed article means (ImageNet weights, larger input):
    ./launch.sh pipeline --experiment=fashion_mnist_pretrained_teacher:imagenet \
        --workdir=runs/pretrained_imagenet --config.distribution.strategy=auto
(weights='imagenet' at 96x96, full training set, 2 head epochs + 3 fine-tune epochs).
Offline, put the Keras no-top weights file in ~/.keras/models/ or pass
--config.teacher.weights=/path/to/file.h5.
"""

from kd_research import config as config_lib

PRESETS = ("imagenet",)


def get_config(arg=None):
  """'' (CPU, random init) or 'imagenet' (pretrained, bigger input; for GPUs)."""
  config_lib.check_preset("fashion_mnist_pretrained_teacher", arg, PRESETS)
  c = config_lib.base_config()
  c.student = config_lib.model_config("cnn_article", width=16, epochs=2, seed=0)
  c.distill.temperature = config_lib.schedule(2.0)
  c.distill.alpha = config_lib.schedule(0.5)
  if arg == "imagenet":
    c.teacher = config_lib.model_config(
        "mobilenetv2", epochs=5, seed=0, image_size=96, weights="imagenet", head_epochs=2,
        unfreeze_top=50, finetune_lr_factor=0.1)
  else:
    c.teacher = config_lib.model_config(
        "mobilenetv2", epochs=3, seed=0, image_size=32, weights="", head_epochs=1,
        unfreeze_top=0, finetune_lr_factor=1.0)
  return config_lib.finalize(c)
