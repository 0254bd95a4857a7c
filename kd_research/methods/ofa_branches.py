"""OFA-KD's stage branches: a student stage projected into the logit space.

Layer for layer as Hao840/OFAKD ``distillers/ofa.py`` (the projector of each stage) and
``distillers/utils.py`` (SepConv, PatchMerging, TokenFnContext, init_weights) build them
on timm 0.6.5, so that a branch computes what the reference's computes for the same weights
(tests/methods/test_ofa.py):

- **CNN student**, a map [H, W, C] at reference stage ``n`` (1-4: ResNet's layer1-layer4):
  ``4 - n`` SepConv blocks, each halving the size and doubling the channels, the last to
  ``dim`` = max(student, teacher pooled width) channels; stage 4: a 1x1 conv (with bias) to
  ``dim``. Then global average pooling and a linear layer to the classes. SepConv:
  depthwise 3x3 / 2 -> 1x1 -> BN -> ReLU -> depthwise 3x3 -> 1x1 -> BN -> ReLU, no biases.
- **ViT student**, the tokens [T, D] after a block at reference stage ``n``: the patch
  tokens merged 2x2 (Swin's PatchMerging: LayerNorm(4D), a bias-free linear, GELU on the
  first merge and between merges) until the grid is at most 7 (``log2(grid / 7)`` merges,
  none for a 7x7 grid), the class tokens kept beside them unchanged; ``max(4 - n, 1)``
  timm Blocks of 4 heads (timm's Block defaults: no q/k/v bias, LayerNorm epsilon 1e-5,
  MLP ratio 4, exact GELU); the class token; a linear layer to the classes.

Initialisation (``init_weights``): convolutions kaiming_normal_(fan_out, relu), a 1x1
conv's bias PyTorch's default; BatchNorm 1 / 0; linear layers N(0, 0.02) (timm's
trunc_normal_ cuts at +-2 absolute, 100 standard deviations) with zero biases; LayerNorm
1 / 0. BatchNorm keeps PyTorch's momentum and epsilon and is synchronised across replicas
(as every owned module's), so results do not depend on the replica count.
"""

import math

import keras
from keras import ops

from kd_research.models import pytorch_layers

FINAL_PATCH_GRID = 7        # the reference merges patches until 7 x 7 (49) remain
BRANCH_HEADS = 4            # Block(dim=feature_dim_s, num_heads=4)
LN_EPSILON = 1e-5           # nn.LayerNorm's default (PatchMerging's and Block's norm)


def _dense(x, units, use_bias=True):
  return keras.layers.Dense(units, use_bias=use_bias,
                            kernel_initializer=pytorch_layers.timm_trunc_normal(),
                            bias_initializer="zeros")(x)


def _kaiming_conv(x, filters, kernel, stride=1, depthwise=False, use_bias=False):
  """PyTorch Conv2d(kernel, stride, padding=kernel // 2) with kaiming_normal_(fan_out)."""
  if use_bias:  # The 1x1 conv of stage 4: its bias keeps PyTorch's default init.
    return keras.layers.Conv2D(
        filters, kernel, kernel_initializer=pytorch_layers.conv_initializer("kaiming"),
        bias_initializer=pytorch_layers.default_bias_initializer(kernel * kernel * x.shape[-1]))(x)
  return pytorch_layers.conv(x, filters, kernel, stride, depthwise, init="kaiming")


def sep_conv(x, out_channels):
  """The reference's SepConv: halves the map, ``out_channels`` out."""
  channels = x.shape[-1]
  x = _kaiming_conv(x, channels, 3, stride=2, depthwise=True)
  x = _kaiming_conv(x, channels, 1)
  x = keras.layers.ReLU()(pytorch_layers.batch_norm(True)(x))
  x = _kaiming_conv(x, channels, 3, depthwise=True)
  x = _kaiming_conv(x, out_channels, 1)
  return keras.layers.ReLU()(pytorch_layers.batch_norm(True)(x))


def cnn_branch(shape, stage, dim, num_classes, name):
  """The branch of a CNN student's map ``shape`` [H, W, C] at reference ``stage``."""
  inputs = keras.Input(tuple(shape))
  x, channels = inputs, shape[-1]
  if stage < 4:
    for i in range(4 - stage):
      x = sep_conv(x, dim if i == 3 - stage else channels * 2)
      channels *= 2
  else:
    x = _kaiming_conv(x, dim, 1, use_bias=True)
  x = keras.layers.GlobalAveragePooling2D()(x)
  logits = keras.layers.Dense(num_classes, kernel_initializer=pytorch_layers.timm_trunc_normal(),
                              bias_initializer="zeros", dtype="float32")(x)
  return keras.Model(inputs, logits, name=name)


@keras.saving.register_keras_serializable(package="kd_research")
class PatchMerge(keras.layers.Layer):
  """Concatenates each 2x2 group of patch tokens ([B, H * W, D] -> [B, H/2 * W/2, 4D]) in
  the reference's order: (0, 0), (1, 0), (0, 1), (1, 1) as (row, column) offsets."""

  def __init__(self, grid, **kwargs):
    super().__init__(**kwargs)
    self.grid = tuple(grid)

  def call(self, x):
    (height, width), dim = self.grid, x.shape[-1]
    x = ops.reshape(x, (-1, height, width, dim))
    x = ops.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    return ops.reshape(x, (-1, (height // 2) * (width // 2), 4 * dim))

  def get_config(self):
    return {**super().get_config(), "grid": self.grid}


@keras.saving.register_keras_serializable(package="kd_research")
class Attention(keras.layers.Layer):
  """timm's Attention at its defaults: one bias-free q/k/v projection, softmax(q k^T /
  sqrt(d)) v per head, a projection with bias."""

  def __init__(self, heads, **kwargs):
    super().__init__(**kwargs)
    self.heads = heads

  def build(self, input_shape):
    dim = input_shape[-1]
    self.qkv = keras.layers.Dense(3 * dim, use_bias=False,
                                  kernel_initializer=pytorch_layers.timm_trunc_normal())
    self.proj = keras.layers.Dense(dim, kernel_initializer=pytorch_layers.timm_trunc_normal(),
                                   bias_initializer="zeros")
    self.qkv.build(input_shape)
    self.proj.build(input_shape)

  def call(self, x):
    tokens, dim = ops.shape(x)[1], x.shape[-1]
    head_dim = dim // self.heads
    qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.heads, head_dim))
    q, k, v = (ops.transpose(qkv[:, :, i], (0, 2, 1, 3)) for i in range(3))
    weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))
                          * (head_dim ** -0.5), axis=-1)
    out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (-1, tokens, dim))
    return self.proj(out)

  def get_config(self):
    return {**super().get_config(), "heads": self.heads}


def timm_block(x):
  """timm's Block(dim, num_heads=4) at its defaults."""
  dim = x.shape[-1]
  y = Attention(BRANCH_HEADS)(keras.layers.LayerNormalization(epsilon=LN_EPSILON)(x))
  x = keras.layers.Add()([x, y])
  y = keras.layers.LayerNormalization(epsilon=LN_EPSILON)(x)
  y = _dense(keras.layers.Activation("gelu")(_dense(y, 4 * dim)), dim)
  return keras.layers.Add()([x, y])


def merge_count(grid):
  """How many 2x2 merges the reference applies to a patch grid of side ``grid``."""
  return max(int(math.log2(grid / FINAL_PATCH_GRID)), 0)


def vit_branch(shape, grid, num_tokens, stage, num_classes, name):
  """The branch of a ViT student's tokens ``shape`` [T, D] (``num_tokens`` class tokens,
  then the patches of ``grid`` (rows, columns)) at reference ``stage``."""
  inputs = keras.Input(tuple(shape))
  dim = shape[-1]
  tokens, patches = inputs[:, :num_tokens], inputs[:, num_tokens:]
  merges = merge_count(grid[0])
  for i in range(merges):
    patches = PatchMerge(grid)(patches)
    grid = (grid[0] // 2, grid[1] // 2)
    patches = keras.layers.LayerNormalization(epsilon=LN_EPSILON)(patches)
    patches = _dense(patches, dim, use_bias=False)
    if i == 0 or i != merges - 1:
      patches = keras.layers.Activation("gelu")(patches)
  x = keras.layers.Concatenate(axis=1)([tokens, patches])
  for _ in range(max(4 - stage, 1)):
    x = timm_block(x)
  logits = keras.layers.Dense(num_classes, kernel_initializer=pytorch_layers.timm_trunc_normal(),
                              bias_initializer="zeros", dtype="float32")(x[:, 0])
  return keras.Model(inputs, logits, name=name)
