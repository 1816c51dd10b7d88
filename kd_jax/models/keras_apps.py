"""Keras applications' ResNet50V2 and MobileNetV2, layer for layer.

Registered names (Keras' count_params, BN moving statistics included; the
trainable `params` that kd_jax's count_params counts in brackets):
  resnet50_v2         = keras.applications.ResNet50V2: 23,564,800
                        (23,519,360) without the head, 25,613,800
                        (25,568,360) with 1000 classes
  mobilenet_v2_keras  = keras.applications.MobileNetV2(alpha=1.0): 2,257,984
                        (2,223,872) without the head, 3,538,984 (3,504,872)
                        with 1000 classes

Every Flax leaf module (Conv, depthwise conv as a grouped Conv, BatchNorm,
Dense) carries the name of the Keras layer that holds its weights
(`conv2_block1_preact_bn`, `block_1_depthwise`, `predictions`, ...), so
`kd_jax.models.keras_weights` maps a Keras weight file by layer name. The
head is Keras' include_top head, global average pool -> Dense(num_classes)
named `predictions`, returning logits (Keras applies softmax on top).

Padding follows Keras exactly, so every shape equals Keras' at any input size:
  * ResNet50V2: ZeroPadding 3 -> conv1 7x7/2 (with bias); ZeroPadding 1 (zeros,
    not -inf: conv1's output is not activated, so the padding can win the
    max) -> max-pool 3x3/2; 3x3 convs padded by 1; a strided block's identity
    shortcut is Keras' MaxPooling2D(1, strides=2), i.e. every second pixel.
  * MobileNetV2: stride-1 and 1x1 convs use TF 'same' padding; the stem
    conv (3x3/2 'same') pads (0, 1) on an even side and (1, 1) on an odd one;
    a stride-2 depthwise conv gets `imagenet_utils.correct_pad` from the
    static input size, which gives the same (0, 1) / (1, 1).
Layouts (keras.src.applications.resnet / mobilenet_v2):
  ResNet50V2: pre-activation bottlenecks BN-ReLU -> [1x1 -> BN-ReLU -> 3x3/s
    -> BN-ReLU -> 1x1(4f, bias)] + shortcut; block1 of each stack has a 1x1
    conv shortcut (with bias) on the pre-activation; the stride sits on the
    *last* block of the stacks conv2..conv4 (conv5 has none); post_bn-ReLU
    before the pool. BN epsilon 1.001e-5, momentum 0.99 (Keras' default).
  MobileNetV2: Conv1 3x3/2 -> bn_Conv1 -> ReLU6; inverted residual blocks
    (expand 1x1 -> BN-ReLU6 -> depthwise 3x3 -> BN-ReLU6 -> project 1x1 -> BN,
    + input when the stride is 1 and the width is unchanged; block 0 has no
    expand and Keras names it `expanded_conv`); Conv_1 1x1 (1280) ->
    Conv_1_bn -> ReLU6. BN epsilon 1e-3, momentum 0.999.
Init as Keras' defaults: glorot-uniform kernels, zero biases, BN scale 1 /
bias 0.

Sown features (collection 'features'):
  resnet50_v2: "stem" (conv1 output, stride 2, 64 ch); "conv2".."conv5" (each
    stack's output, Keras' convN_blockK_out: strides 8, 16, 32, 32 since the
    stride sits on the last block; 256/512/1024/2048 ch); "post_relu" (the
    activated final map); "pre_logits" (the pooled 2048 vector).
  mobilenet_v2_keras: "stage1".."stage5" (last map at strides 2..32: 16, 24,
    32, 96, 1280 ch; stage5 is out_relu); "pre_logits" (pooled 1280 vector).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import fast_ops
from kd_jax.models.layers import make_divisible

_glorot = nn.initializers.glorot_uniform()


def _conv(features, kernel, stride=1, pads=(0, 0, 0, 0), *, bias,
          groups=1, name):
  """Keras Conv2D / DepthwiseConv2D with explicit (top, bottom, left, right)
  padding; explicit pads keep fast_ops' depthwise path (it skips strings)."""
  top, bottom, left, right = pads
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((top, bottom), (left, right)),
                 feature_group_count=groups, use_bias=bias,
                 kernel_init=_glorot, name=name,
                 conv_general_dilated=fast_ops.conv_general_dilated)


def _same_pads(size, kernel, stride):
  """TF 'same' padding of one side: (before, after), the extra pixel after."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _same(x, kernel, stride):
  return _same_pads(x.shape[1], kernel, stride) + _same_pads(x.shape[2], kernel, stride)


def _correct_pad(x, kernel):
  """keras imagenet_utils.correct_pad on a static (H, W): one pixel less
  before an even side."""
  c = kernel // 2
  top, left = (c - (1 - x.shape[1] % 2), c - (1 - x.shape[2] % 2))
  return top, c, left, c


def _bn(train, name, epsilon, momentum):
  return nn.BatchNorm(use_running_average=not train, momentum=momentum,
                      epsilon=epsilon, name=name)


class PreactBottleneck(nn.Module):
  """keras resnet.residual_block_v2; the module's name is the Keras block
  prefix (e.g. conv2_block1) and its leaves carry the full Keras names."""
  filters: int
  stride: int = 1
  conv_shortcut: bool = False

  @nn.compact
  def __call__(self, x, *, train: bool):
    n, f, s = self.name, self.filters, self.stride
    bn = lambda suffix: _bn(train, f"{n}_{suffix}", 1.001e-5, 0.99)
    preact = nn.relu(bn("preact_bn")(x))
    if self.conv_shortcut:
      shortcut = _conv(4 * f, 1, s, bias=True, name=f"{n}_0_conv")(preact)
    else:  # Keras' MaxPooling2D(1, strides=s): every s-th pixel
      shortcut = x[:, ::s, ::s, :]
    y = _conv(f, 1, bias=False, name=f"{n}_1_conv")(preact)
    y = nn.relu(bn("1_bn")(y))
    y = _conv(f, 3, s, (1, 1, 1, 1), bias=False, name=f"{n}_2_conv")(y)
    y = nn.relu(bn("2_bn")(y))
    y = _conv(4 * f, 1, bias=True, name=f"{n}_3_conv")(y)
    return shortcut + y


# (stack name, bottleneck filters, blocks, stride of the last block)
_RESNET50_V2 = (("conv2", 64, 3, 2), ("conv3", 128, 4, 2),
                ("conv4", 256, 6, 2), ("conv5", 512, 3, 1))


class ResNet50V2(nn.Module):
  """keras.applications.ResNet50V2 with include_top (logits, no softmax)."""
  num_classes: int

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = _conv(64, 7, 2, (3, 3, 3, 3), bias=True, name="conv1_conv")(x)
    self.sow("features", "stem", x)
    # Keras pads with zeros (pool1_pad), not -inf, before the max-pool.
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    x = fast_ops.max_pool(x, (3, 3), strides=(2, 2))
    for stack, filters, blocks, stride in _RESNET50_V2:
      for i in range(1, blocks + 1):
        x = PreactBottleneck(filters, stride if i == blocks else 1,
                             conv_shortcut=i == 1,
                             name=f"{stack}_block{i}")(x, train=train)
      self.sow("features", stack, x)
    x = nn.relu(_bn(train, "post_bn", 1.001e-5, 0.99)(x))
    self.sow("features", "post_relu", x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=_glorot,
                    name="predictions")(x)


class InvertedResidual(nn.Module):
  """keras mobilenet_v2._inverted_res_block; `prefix` is Keras' layer-name
  prefix (block_{id}_, or expanded_conv_ for block 0)."""
  filters: int
  expansion: int
  stride: int
  prefix: str

  @nn.compact
  def __call__(self, x, *, train: bool):
    p, inp = self.prefix, x.shape[-1]
    bn = lambda suffix: _bn(train, f"{p}{suffix}", 1e-3, 0.999)
    y = x
    if p != "expanded_conv_":  # Keras' block 0 has no expand conv
      width = self.expansion * inp
      y = _conv(width, 1, bias=False, name=f"{p}expand")(y)
      y = nn.relu6(bn("expand_BN")(y))
    pads = _correct_pad(y, 3) if self.stride == 2 else _same(y, 3, 1)
    c = y.shape[-1]
    y = _conv(c, 3, self.stride, pads, bias=False, groups=c,
              name=f"{p}depthwise")(y)
    y = nn.relu6(bn("depthwise_BN")(y))
    y = _conv(self.filters, 1, bias=False, name=f"{p}project")(y)
    y = bn("project_BN")(y)
    if inp == self.filters and self.stride == 1:
      y = x + y
    return y


# (filters, expansion, stride) of blocks 0..16 (keras mobilenet_v2)
_MOBILENET_V2 = ((16, 1, 1), (24, 6, 2), (24, 6, 1), (32, 6, 2), (32, 6, 1),
                 (32, 6, 1), (64, 6, 2), (64, 6, 1), (64, 6, 1), (64, 6, 1),
                 (96, 6, 1), (96, 6, 1), (96, 6, 1), (160, 6, 2), (160, 6, 1),
                 (160, 6, 1), (320, 6, 1))


class KerasMobileNetV2(nn.Module):
  """keras.applications.MobileNetV2(alpha) with include_top (logits)."""
  num_classes: int
  alpha: float = 1.0

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    bn = lambda name: _bn(train, name, 1e-3, 0.999)
    first = make_divisible(32 * self.alpha, 8)
    x = _conv(first, 3, 2, _same(x, 3, 2), bias=False, name="Conv1")(x)
    x = nn.relu6(bn("bn_Conv1")(x))
    stage = 0
    for i, (filters, t, stride) in enumerate(_MOBILENET_V2):
      if stride == 2:  # the previous map closes a resolution stage
        stage += 1
        self.sow("features", f"stage{stage}", x)
      prefix = f"block_{i}_" if i else "expanded_conv_"
      x = InvertedResidual(make_divisible(int(filters * self.alpha), 8), t,
                           stride, prefix, name=prefix[:-1])(x, train=train)
    # Keras widens the last conv only for alpha > 1.
    last = make_divisible(1280 * self.alpha, 8) if self.alpha > 1.0 else 1280
    x = _conv(last, 1, bias=False, name="Conv_1")(x)
    x = nn.relu6(bn("Conv_1_bn")(x))
    self.sow("features", "stage5", x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=_glorot,
                    name="predictions")(x)


MODELS = {
    "resnet50_v2": ResNet50V2,
    "mobilenet_v2_keras": KerasMobileNetV2,
}
