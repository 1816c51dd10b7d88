"""Mobile CIFAR students of the distillation benchmarks (CRD, Tian et al. 2020).

The layouts of RepDistiller's `models/mobilenetv2.py` (`mobile_half`),
`ShuffleNetv1.py` (`ShuffleV1`) and `ShuffleNetv2.py` (`ShuffleV2`). Every
conv is bias-free and followed by BN; strided convs pad (k - 1) // 2 as
torch does. All end in a global average pool -> Dense(C) (`fc`):
RepDistiller's fixed-size average pools are that global pool at 32 px.

mobilenet_v2_cifar (width 0.5, expansion T = 6): 812,836 params at C=100.
  stem:   conv3x3/2 (16) -> BN -> ReLU                              (16x16)
  blocks: (t, c, n, s) = (1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2),
          (6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1)
          (c = int(0.5 x torchvision's widths)); a block is
          conv1x1 (t x in) -> BN -> ReLU -> dw3x3/s -> BN -> ReLU ->
          conv1x1 (c) -> BN, plus the input when s = 1 and in = c.
          Unlike torchvision the t = 1 block keeps its expansion conv.
  head:   conv1x1 (1280) -> BN -> ReLU -> pool -> fc (N(0, 0.01), bias 0);
          convs He-normal (fan_out).
shufflenet_v1_cifar (groups 3): 949,258 params at C=100.
  stem:   conv1x1 (24) -> BN -> ReLU                                (32x32)
  stages: widths (240, 480, 960), (4, 8, 4) units, the first of each with
          stride 2. A unit with m = out / 4:
          gconv1x1 (m, 3 groups; 1 group on the 24-ch stem) -> BN -> ReLU ->
          channel shuffle -> dw3x3/s -> BN -> ReLU -> gconv1x1 (out, 3
          groups) -> BN, then ReLU(y + x); a stride-2 unit instead makes
          out = width - in channels and concatenates [y, avgpool3x3/2(x)]
          (padding 1, zeros counted) before the ReLU.
shufflenet_v2_cifar (x1.0): 1,355,528 params at C=100.
  stem:   conv1x1 (24) -> BN -> ReLU                                (32x32)
  stages: widths (116, 232, 464), one stride-2 unit then (3, 7, 3) stride-1
          units (shufflenet.InvertedResidual: torchvision's unit, the same
          as RepDistiller's DownBlock / BasicBlock)
  head:   conv1x1 (1024) -> BN -> ReLU -> pool -> fc.
The ShuffleNets keep PyTorch's default init (RepDistiller sets none).

Features sown into 'features' (RepDistiller's `is_feat` lists under these
names, at a 32 px input):
  "stem":       f0, the stem's output (16x16x16 | 32x32x24 | 32x32x24)
  "stage1".."stage4": mobilenet_v2_cifar's f1..f4: the outputs of block
                groups 2, 3, 5 and 7 (16x16x12, 8x8x16, 4x4x48, 2x2x160)
  "stage1".."stage3": the ShuffleNets' f1..f3, each stage's output
                (16, 8, 4 px; v1 240/480/960 ch, v2 116/232/464 ch)
  "pre_logits": the pooled vector fed to `fc` (1280 | 960 | 1024).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import (batch_norm, torch_bias_init, torch_conv,
                                  torch_kernel_init)
from kd_jax.models.shufflenet import InvertedResidual, channel_shuffle

he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(stddev=0.01)


def _torch_fc(num_classes, x):
  return nn.Dense(num_classes, kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)


class ExpandBlock(nn.Module):
  """RepDistiller's MobileNetV2 block (its expansion conv even at t = 1)."""
  out_chs: int
  stride: int
  expand: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    mid = x.shape[-1] * self.expand
    y = torch_conv(mid, 1, kernel_init=he_init, name="pw")(x)
    y = nn.relu(batch_norm(train, "pw_bn")(y))
    y = torch_conv(mid, 3, self.stride, groups=mid, kernel_init=he_init,
                   name="dw")(y)
    y = nn.relu(batch_norm(train, "dw_bn")(y))
    y = torch_conv(self.out_chs, 1, kernel_init=he_init, name="pwl")(y)
    y = batch_norm(train, "pwl_bn")(y)
    if self.stride == 1 and x.shape[-1] == self.out_chs:
      return x + y
    return y


class MobileNetV2Cifar(nn.Module):
  """RepDistiller's `mobile_half` (see the module docstring)."""
  num_classes: int
  width: float = 0.5
  # (expansion t, torchvision width c, blocks n, first stride s); T = 6
  setting: tuple = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2),
                    (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1))
  sown_after: tuple = (1, 2, 4, 6)  # group indices ending stage1..stage4

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = torch_conv(int(32 * self.width), 3, 2, kernel_init=he_init,
                   name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    self.sow("features", "stem", x)
    for g, (t, c, n, s) in enumerate(self.setting):
      for j in range(n):
        x = ExpandBlock(int(c * self.width), s if j == 0 else 1, t,
                        name=f"group{g}_{j}")(x, train=train)
      if g in self.sown_after:
        self.sow("features", f"stage{self.sown_after.index(g) + 1}", x)
    last = int(1280 * self.width) if self.width > 1.0 else 1280
    x = torch_conv(last, 1, kernel_init=he_init, name="conv2")(x)
    x = nn.relu(batch_norm(train, "bn2")(x))
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=dense_init, name="fc")(x)


class ShuffleV1Unit(nn.Module):
  """ShuffleNet V1 unit (stride 2: concatenates an average-pooled input)."""
  out_chs: int  # the unit's output width (stride 2: including the input's)
  stride: int
  groups: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    in_chs = x.shape[-1]
    branch = self.out_chs - (in_chs if self.stride == 2 else 0)
    mid = branch // 4
    g = 1 if in_chs == 24 else self.groups  # the stem's 24 ch: one group
    y = torch_conv(mid, 1, groups=g, name="conv1")(x)
    y = channel_shuffle(nn.relu(batch_norm(train, "bn1")(y)), g)
    y = torch_conv(mid, 3, self.stride, groups=mid, name="conv2")(y)
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = torch_conv(branch, 1, groups=self.groups, name="conv3")(y)
    y = batch_norm(train, "bn3")(y)
    if self.stride == 2:
      pooled = nn.avg_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                           count_include_pad=True)
      return nn.relu(jnp.concatenate([y, pooled], axis=-1))
    return nn.relu(y + x)


class ShuffleNetCifar(nn.Module):
  """RepDistiller's ShuffleV1 (`version` 1) or ShuffleV2 (`version` 2)."""
  num_classes: int
  version: int = 1
  widths: tuple = (240, 480, 960)
  units: tuple = (4, 8, 4)  # per stage, the stride-2 unit included
  head_chs: int = 0  # v2: the conv1x1 before the pool

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = torch_conv(24, 1, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    self.sow("features", "stem", x)
    for i, (width, n) in enumerate(zip(self.widths, self.units)):
      for j in range(n):
        stride, name = (2 if j == 0 else 1), f"stage{i + 1}_{j}"
        if self.version == 1:
          x = ShuffleV1Unit(width, stride, 3, name=name)(x, train=train)
        else:
          x = InvertedResidual(width, stride, name=name)(x, train=train)
      self.sow("features", f"stage{i + 1}", x)
    if self.head_chs:
      x = torch_conv(self.head_chs, 1, name="conv2")(x)
      x = nn.relu(batch_norm(train, "bn2")(x))
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return _torch_fc(self.num_classes, x)


def shufflenet_v2_cifar(num_classes: int, **kw) -> ShuffleNetCifar:
  return ShuffleNetCifar(num_classes=num_classes, version=2,
                         widths=(116, 232, 464), units=(4, 8, 4),
                         head_chs=1024, **kw)


MODELS = {
    "mobilenet_v2_cifar": MobileNetV2Cifar,
    "shufflenet_v1_cifar": ShuffleNetCifar,
    "shufflenet_v2_cifar": shufflenet_v2_cifar,
}
