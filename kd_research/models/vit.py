"""Vision transformers in timm's layout: ViT / DeiT, with DeiT's optional distillation token.

The layout of timm's ``vision_transformer.py`` (VisionTransformer) and ``deit.py``
(VisionTransformerDistilled), layer for layer, so that the trainable parameter counts at
1,000 classes and 224 pixels equal timm's (tests/models/test_vit.py):

  patch embedding   a p x p convolution of stride p, with bias (timm's PatchEmbed)
  tokens            a class token, then (distilled models) a distillation token, then the
                    patches; learned position embeddings over all of them
  blocks            ``depth`` pre-norm blocks: x + attn(LN(x)), then x + mlp(LN(x));
                    multi-head self-attention with biased q, k, v and output projections
                    (timm's qkv_bias=True), an MLP of ratio 4 with exact (erf) GELU,
                    LayerNorm epsilon 1e-6; stochastic depth on both branches, its rate
                    rising linearly over the blocks to ``drop_path_rate``
  heads             the final LayerNorm, a linear head on the class token and (distilled)
                    a second head on the distillation token

A distilled model returns the class token's head in training, which every logit method
and the labels-only objective read, and the mean of its two heads in inference, as DeiT's
VisionTransformerDistilled does in eval mode (so evaluation and export see DeiT's
prediction). Initialisation follows timm: truncated N(0, 0.02) for the linear layers (zero
biases), the position embeddings and the tokens; PyTorch's default for the patch
convolution. Inputs are raw [0, 255] pixels normalised by the ImageNet mean and std, as
the other ImageNet-protocol models.

Registered: deit_tiny, deit_small, deit_base (patch 16, widths 192 / 384 / 768, 3 / 6 / 12
heads, depth 12) and their ``_distilled`` variants; vit_mini and vit_mini_distilled, a
configuration for these machines (patch 4, width 64, depth 4, 4 heads: a 28 x 28 image is
7 x 7 patches). ``width`` overrides the embedding width (a multiple of the head count).

Taps: ``block<i>`` (every token after block i, [B, T, D]), ``block<i>_map`` (its patch
tokens as a map [H/p, W/p, D], for the methods that read maps), ``pooled`` (the class
token after the final norm), ``pooled_dist`` (the distillation token's), ``head`` and
``head_dist`` (the two heads' logits).

Stochastic depth (``config.<role>.drop_path``, 0 by default; DeiT's recipe uses 0.1) is
models/stochastic_depth.py's: in kd_research's training step its masks are stateless draws
of (seed, step, position in the global batch), independent of the replica count and exact
on resume.
"""

import math
import re

import keras
from keras import ops

from kd_research.common.errors import UserError
from kd_research.models import imagenet
from kd_research.models import parts
from kd_research.models import pytorch_layers
from kd_research.models import registry
from kd_research.models import stochastic_depth

LN_EPSILON = 1e-6  # timm's partial(nn.LayerNorm, eps=1e-6)
MLP_RATIO = 4


@keras.saving.register_keras_serializable(package="kd_research")
class TokensAndPositions(keras.layers.Layer):
  """Prepends the class token (and the distillation token) to the patch tokens and adds
  the learned position embeddings (timm's cls_token, dist_token and pos_embed)."""

  def __init__(self, num_tokens=1, **kwargs):
    super().__init__(**kwargs)
    self.num_tokens = num_tokens

  def build(self, input_shape):
    _, patches, width = input_shape
    self.tokens = self.add_weight(shape=(1, self.num_tokens, width), name="tokens",
                                  initializer=pytorch_layers.timm_trunc_normal())
    self.positions = self.add_weight(shape=(1, self.num_tokens + patches, width),
                                     name="positions",
                                     initializer=pytorch_layers.timm_trunc_normal())

  def call(self, patches):
    tokens = ops.broadcast_to(ops.cast(self.tokens, patches.dtype),
                              (ops.shape(patches)[0], self.num_tokens, patches.shape[-1]))
    return ops.concatenate([tokens, patches], axis=1) + ops.cast(self.positions, patches.dtype)

  def get_config(self):
    return {**super().get_config(), "num_tokens": self.num_tokens}


@keras.saving.register_keras_serializable(package="kd_research")
class DistilledLogits(keras.layers.Layer):
  """A distilled model's output: the class token's head in training, the mean of the two
  heads in inference (DeiT's VisionTransformerDistilled)."""

  def call(self, inputs, training=None):
    head, head_dist = inputs
    return head if training else (head + head_dist) / 2.0


def _linear(x, units, name=None, dtype=None):
  return keras.layers.Dense(units, kernel_initializer=pytorch_layers.timm_trunc_normal(),
                            bias_initializer="zeros", name=name, dtype=dtype)(x)


def _block(x, heads, drop_rate, index):
  """One pre-norm transformer block (timm's Block), its output tapped as ``block<index>``."""
  width = x.shape[-1]
  y = keras.layers.LayerNormalization(epsilon=LN_EPSILON)(x)
  y = keras.layers.MultiHeadAttention(
      heads, width // heads, kernel_initializer=pytorch_layers.timm_trunc_normal(),
      bias_initializer="zeros")(y, y)
  x = keras.layers.Add()([x, stochastic_depth.DropPath(drop_rate, 2 * index - 2)(y)])
  y = keras.layers.LayerNormalization(epsilon=LN_EPSILON)(x)
  y = keras.layers.Activation("gelu")(_linear(y, MLP_RATIO * width))  # exact (erf) GELU
  x = keras.layers.Add()([x, stochastic_depth.DropPath(drop_rate, 2 * index - 1)(
      _linear(y, width))])
  return parts.tap(x, f"block{index}")


def _patch_map_tap(x, grid, num_tokens, name):
  """Taps the patch tokens as a map [H/p, W/p, D] named ``name`` and returns the tokens
  unchanged: the map is reshaped back and rejoined, so that the tap lies on the model's
  path (a Keras functional model holds only the layers between its inputs and outputs)."""
  width = x.shape[-1]
  grid_map = parts.tap(keras.layers.Reshape(grid + (width,))(x[:, num_tokens:]), name)
  return keras.layers.Concatenate(axis=1)(
      [x[:, :num_tokens], keras.layers.Reshape((-1, width))(grid_map)])


def vision_transformer(input_shape, num_classes, width, depth, heads, patch, distilled,
                       drop_path_rate=0.0, name="vit"):
  """A ViT (``distilled``: DeiT's, with a distillation token and its head) on images of
  ``input_shape`` whose sides are multiples of ``patch``."""
  height, wide = input_shape[:2]
  if height % patch or wide % patch:
    raise UserError(f"model {name} cuts {height}x{wide} images into {patch}x{patch} patches; "
                    f"use an image size divisible by {patch} (config.image_size).")
  if width % heads:
    raise UserError(f"model {name}: width {width} is not a multiple of its {heads} heads.")
  grid = (height // patch, wide // patch)
  num_tokens = 2 if distilled else 1
  inputs, x = imagenet.normalised_input(input_shape)
  bound = 1.0 / math.sqrt(patch * patch * input_shape[-1])  # PyTorch's Conv2d bias init
  x = keras.layers.Conv2D(width, patch, strides=patch, name="patch_embed",
                          kernel_initializer=pytorch_layers.conv_initializer("default"),
                          bias_initializer=keras.initializers.RandomUniform(-bound, bound))(x)
  x = TokensAndPositions(num_tokens, name="tokens")(keras.layers.Reshape((-1, width))(x))
  for i in range(depth):
    x = _block(x, heads, drop_path_rate * i / max(depth - 1, 1), i + 1)
    x = _patch_map_tap(x, grid, num_tokens, f"block{i + 1}_map")
  x = keras.layers.LayerNormalization(epsilon=LN_EPSILON, name="norm")(x)
  head = _linear(parts.tap(x[:, 0], "pooled"), num_classes, "head", "float32")
  if not distilled:
    return keras.Model(inputs, head, name=name)
  head_dist = _linear(parts.tap(x[:, 1], "pooled_dist"), num_classes, "head_dist", "float32")
  return keras.Model(inputs, DistilledLogits(name="logits", dtype="float32")(
      [head, head_dist]), name=name)


# (default width, depth, heads, patch): timm's deit_{tiny,small,base}_patch16_224, and a
# configuration that trains on these machines.
CONFIGS = {"deit_tiny": (192, 12, 3, 16), "deit_small": (384, 12, 6, 16),
           "deit_base": (768, 12, 12, 16), "vit_mini": (64, 4, 4, 4)}

# Trainable parameters at 1,000 classes and 224 x 224 x 3 (timm's models, counted there).
TIMM_PARAMS = {"deit_tiny": 5_717_416, "deit_small": 22_050_664, "deit_base": 86_567_656,
               "deit_tiny_distilled": 5_910_800, "deit_small_distilled": 22_436_432,
               "deit_base_distilled": 87_338_192}


def _builder(name, distilled):
  default_width, depth, heads, patch = CONFIGS[name]
  full = f"{name}_distilled" if distilled else name

  def build(input_shape, num_classes, width=None, sync_bn=False, drop_path_rate=0.0):
    del sync_bn  # No BatchNorm.
    return vision_transformer(input_shape, num_classes, width or default_width, depth, heads,
                              patch, distilled, drop_path_rate, name=full)
  return full, build


for _config in CONFIGS:
  for _distilled in (False, True):
    registry.register(*_builder(_config, _distilled))


def token_layout(model):
  """(depth, patch grid (rows, columns), class tokens) of a ViT of this family, or None for
  any other model: read from its ``block<i>`` and ``block<i>_map`` taps."""
  names = {layer.name for layer in model.layers}
  if "block1_map" not in names:
    return None
  depth = sum(1 for name in names if re.fullmatch(r"block\d+", name))
  grid = tuple(model.get_layer("block1_map").output.shape[1:3])
  tokens = model.get_layer("block1").output.shape[1]
  return depth, grid, tokens - grid[0] * grid[1]
