"""GhostNet v1 (Han et al., 2020, arXiv:1911.11907) in Flax linen.

`ghostnet_100` follows the layer layout of timm's `ghostnet_100` (width 1.0,
version 'v1'), so the trainable parameter count is identical:

  conv_stem 3x3/2 (16) -> BN -> ReLU
  16 GhostBottlenecks in 9 timm "stages" (see `_CFGS`)
  ConvBnAct 1x1 (160 -> 960)
  global average pool -> conv_head 1x1 (960 -> 1280, with bias) -> ReLU
  -> dropout(0.2) -> classifier Dense(1280 -> num_classes)

Building blocks (as in timm):
  * GhostModule(out, ratio=2, dw 3x3): a 1x1 "primary" conv to
    init = ceil(out / 2) channels (+BN, optional ReLU), then a cheap depthwise
    3x3 conv on those (+BN, optional ReLU); both are concatenated and
    truncated to `out` channels.
  * GhostBottleneck: ghost1 (ReLU) -> [depthwise kxk/stride conv + BN if
    stride > 1] -> [SqueezeExcite] -> ghost2 (no act) + shortcut. The shortcut
    is the identity when in == out and stride == 1, otherwise
    depthwise kxk/stride + BN + 1x1 conv + BN.
  * SqueezeExcite: mean pool -> 1x1 conv (bias) to
    make_divisible(0.25 * chs, 4) -> ReLU -> 1x1 conv (bias) -> hard_sigmoid
    gate (relu6(x + 3) / 6) multiplied onto the input.

Parameter count (num_classes=1000, `params` collection only) = 5,182,508.
Derived by hand from timm's definition (conv weights k*k*in/groups*out, BN
weight+bias 2*C, biases only on SE convs, conv_head and classifier):
  stem 464, stages 0..8: 464 + 2,564 + 2,352 + 9,636 + 13,672 + 22,920
  + 533,476 + 362,840 + 1,567,520, ConvBnAct 155,520, conv_head 1,230,080,
  classifier 1,281,000; total 5,182,508 (timm's benchmark csv lists 5.18M).
`count_params('ghostnet_100')` reproduces that number exactly (tested).

Feature maps sown into the 'features' collection: the last map at each
output stride, named like the other families (mobilenet.py). Shapes for a
224x224 input; output stride in brackets:
  stage1      after timm stage 0 (16 ch, 112x112)           [/2]
  stage2      after timm stage 2 (24 ch, 56x56)             [/4]
  stage3      after timm stage 4 (40 ch, 28x28)             [/8]
  stage4      after timm stage 6 (112 ch, 14x14)            [/16]
  stage5      after the final 960-ch ConvBnAct (7x7), i.e.
              timm's forward_features output                [/32]
  pre_logits  (B, 960) the globally average-pooled stage5
  hidden      (B, 1280) conv_head + ReLU, before dropout: the classifier input

Any input size >= 28 (and up to 224 or beyond) works: strided convs use
explicit torch-style padding ((p, p), (p, p)) so every spatial size equals
PyTorch's floor((H + 2p - k) / s) + 1, and the head uses global average
pooling.

Dropout: `nn.Dropout(0.2, deterministic=not train)`, so `apply(..., train=True)`
needs `rngs={'dropout': key}` (and `mutable=['batch_stats']` for BatchNorm).

Initialisation mirrors timm, which leaves every layer at PyTorch's default
(`GhostNet` has no init of its own): conv / linear kernels
U(+-1/sqrt(fan_in)) (kaiming_uniform with a=sqrt(5)), biases
U(+-1/sqrt(fan_in)), BN scale one / bias zero.

Deviations from timm: NHWC layout; none in architecture or parameter count.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models.layers import (batch_norm, make_divisible, torch_bias_init,
                                  torch_conv, torch_kernel_init)

# One entry per timm stage; each block: (kernel, expansion chs, out chs,
# SE ratio, stride).
_CFGS = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2),),
    ((3, 72, 24, 0.0, 1),),
    ((5, 72, 40, 0.25, 2),),
    ((5, 120, 40, 0.25, 1),),
    ((3, 240, 80, 0.0, 2),),
    ((3, 200, 80, 0.0, 1),
     (3, 184, 80, 0.0, 1),
     (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1),
     (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2),),
    ((5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1),
     (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)),
)
# timm stage index -> sown feature name (last stage at each resolution).
# (stage5 is sown after the final ConvBnAct, which keeps the /32 resolution.)
_STAGE_FEATURES = {0: "stage1", 2: "stage2", 4: "stage3", 6: "stage4"}


class GhostModule(nn.Module):
  out_chs: int
  relu: bool = True
  ratio: int = 2
  dw_size: int = 3

  @nn.compact
  def __call__(self, x, *, train: bool):
    init_chs = math.ceil(self.out_chs / self.ratio)
    new_chs = init_chs * (self.ratio - 1)
    x1 = torch_conv(init_chs, 1, name="primary_conv")(x)
    x1 = batch_norm(train, "primary_bn")(x1)
    if self.relu:
      x1 = nn.relu(x1)
    x2 = torch_conv(new_chs, self.dw_size, groups=init_chs, name="cheap_conv")(x1)
    x2 = batch_norm(train, "cheap_bn")(x2)
    if self.relu:
      x2 = nn.relu(x2)
    return jnp.concatenate([x1, x2], axis=-1)[..., :self.out_chs]


class SqueezeExcite(nn.Module):
  rd_ratio: float = 0.25

  @nn.compact
  def __call__(self, x):
    chs = x.shape[-1]
    rd = make_divisible(chs * self.rd_ratio, 4)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.Conv(rd, (1, 1), kernel_init=torch_kernel_init,
                bias_init=torch_bias_init(chs), name="conv_reduce")(s)
    s = nn.relu(s)
    s = nn.Conv(chs, (1, 1), kernel_init=torch_kernel_init,
                bias_init=torch_bias_init(rd), name="conv_expand")(s)
    return x * jax.nn.hard_sigmoid(s)


class GhostBottleneck(nn.Module):
  mid_chs: int
  out_chs: int
  kernel: int = 3
  stride: int = 1
  se_ratio: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    in_chs = x.shape[-1]
    shortcut = x
    x = GhostModule(self.mid_chs, relu=True, name="ghost1")(x, train=train)
    if self.stride > 1:
      x = torch_conv(self.mid_chs, self.kernel, self.stride,
                     groups=self.mid_chs, name="conv_dw")(x)
      x = batch_norm(train, "bn_dw")(x)
    if self.se_ratio > 0:
      x = SqueezeExcite(self.se_ratio, name="se")(x)
    x = GhostModule(self.out_chs, relu=False, name="ghost2")(x, train=train)
    if in_chs == self.out_chs and self.stride == 1:
      return x + shortcut
    s = torch_conv(in_chs, self.kernel, self.stride, groups=in_chs,
                   name="shortcut_dw")(shortcut)
    s = batch_norm(train, "shortcut_dw_bn")(s)
    s = torch_conv(self.out_chs, 1, name="shortcut_pw")(s)
    s = batch_norm(train, "shortcut_pw_bn")(s)
    return x + s


class GhostNet(nn.Module):
  """GhostNet v1; see the module docstring for layout and sown features."""
  num_classes: int
  width: float = 1.0
  drop_rate: float = 0.2
  cfgs: tuple = _CFGS

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    stem = make_divisible(16 * self.width, 4)
    x = torch_conv(stem, 3, 2, name="conv_stem")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    exp = stem
    for si, stage in enumerate(self.cfgs):
      for bi, (k, exp, c, se, s) in enumerate(stage):
        x = GhostBottleneck(
            mid_chs=make_divisible(exp * self.width, 4),
            out_chs=make_divisible(c * self.width, 4),
            kernel=k, stride=s, se_ratio=se,
            name=f"blocks_{si}_{bi}")(x, train=train)
      if si in _STAGE_FEATURES:
        self.sow("features", _STAGE_FEATURES[si], x)
    # timm: ConvBnAct with out = make_divisible(last expansion * width, 4).
    x = torch_conv(make_divisible(exp * self.width, 4), 1, name="last_conv")(x)
    x = nn.relu(batch_norm(train, "last_bn")(x))
    self.sow("features", "stage5", x)
    x = jnp.mean(x, axis=(1, 2), keepdims=True)  # global average pool
    self.sow("features", "pre_logits", x.reshape((x.shape[0], -1)))
    x = nn.Conv(1280, (1, 1), use_bias=True, kernel_init=torch_kernel_init,
                bias_init=torch_bias_init(x.shape[-1]), name="conv_head")(x)
    x = nn.relu(x).reshape((x.shape[0], -1))
    self.sow("features", "hidden", x)
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(x.shape[-1]), name="classifier")(x)


def ghostnet_100(num_classes: int, **kw) -> GhostNet:
  return GhostNet(num_classes=num_classes, width=1.0, **kw)


MODELS = {"ghostnet_100": ghostnet_100}
