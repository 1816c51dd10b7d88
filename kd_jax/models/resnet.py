"""ResNets as torchvision has them: resnet18, resnet34 (BasicBlock), resnet50.

Structure (NHWC; torch-style explicit symmetric padding everywhere, so every
output shape equals torch's for any input size):
  stem:    conv7x7/2 (pad 3, no bias) -> BN -> ReLU -> max-pool 3x3/2 (pad 1,
           padded with -inf as torch does)
  layer1..layer4: [2, 2, 2, 2] BasicBlocks (resnet18), [3, 4, 6, 3]
           BasicBlocks (resnet34) or [3, 4, 6, 3] Bottlenecks (resnet50)
           with planes (64, 128, 256, 512); the first block of layer2..4
           has stride 2.
  head:    global average pool -> Dense(C).
  BasicBlock:  conv3x3/s-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU
  Bottleneck:  conv1x1-BN-ReLU-conv3x3/s-BN-ReLU-conv1x1(4*planes)-BN (+ shortcut)
               -> ReLU; the stride sits on the 3x3 conv (torchvision "v1.5").
  shortcut:    identity, or conv1x1/s (no bias) -> BN when the stride or the
               channel count changes.
Trainable params at 224x224x3, C=1000: resnet18 11,689,512, resnet34
21,797,672, resnet50 25,557,032 (= torchvision; the global pool makes them
size-independent).

BatchNorm: `nn.BatchNorm(use_running_average=not train, momentum=0.9,
epsilon=1e-5)` (torch momentum 0.1); with train=True call `apply(...,
mutable=['batch_stats'])`. Convs use torchvision's kaiming-normal (fan_out,
ReLU gain) init; BN scale 1 / bias 0; zero_init_residual=False as torchvision's
default.

Features sown into the 'features' collection (top-level names; submodules are
named conv1, bn1, layer{i}_{j}, fc, so there is no clash):
  "stem":       after conv1-BN-ReLU, before the max-pool (stride 2, 64 ch)
  "layer1".."layer4": each stage's output (strides 4, 8, 16, 32;
                channels 64/128/256/512 for resnet18/34, x4 for resnet50)
  "pre_logits": the globally pooled (B, 512 | 2048) vector fed to `fc`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import fast_ops
from kd_jax.models.layers import batch_norm, torch_conv

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride=1, name=None):
  return torch_conv(features, kernel, stride, kernel_init=conv_init, name=name)


class BasicBlock(nn.Module):
  """With `preact`, returns (output, its input to the last ReLU): the
  pre-ReLU feature of activation-boundary methods (AB, OFD)."""
  planes: int
  stride: int = 1
  preact: bool = False
  expansion = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    out_ch = self.planes * self.expansion
    y = _conv(self.planes, 3, self.stride, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = _conv(self.planes, 3, name="conv2")(y)
    y = batch_norm(train, "bn2")(y)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = _conv(out_ch, 1, self.stride, name="downsample_conv")(x)
      x = batch_norm(train, "downsample_bn")(x)
    pre = y + x
    return (nn.relu(pre), pre) if self.preact else nn.relu(pre)


class Bottleneck(nn.Module):
  planes: int
  stride: int = 1
  expansion = 4

  @nn.compact
  def __call__(self, x, *, train: bool):
    out_ch = self.planes * self.expansion
    y = _conv(self.planes, 1, name="conv1")(x)
    y = nn.relu(batch_norm(train, "bn1")(y))
    y = _conv(self.planes, 3, self.stride, name="conv2")(y)  # v1.5 stride
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = _conv(out_ch, 1, name="conv3")(y)
    y = batch_norm(train, "bn3")(y)
    if self.stride != 1 or x.shape[-1] != out_ch:
      x = _conv(out_ch, 1, self.stride, name="downsample_conv")(x)
      x = batch_norm(train, "downsample_bn")(x)
    return nn.relu(y + x)


class ResNet(nn.Module):
  num_classes: int
  block: type = BasicBlock
  layers: Sequence[int] = (2, 2, 2, 2)
  planes: Sequence[int] = (64, 128, 256, 512)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = _conv(64, 7, 2, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    self.sow("features", "stem", x)
    x = fast_ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (n, p) in enumerate(zip(self.layers, self.planes)):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = self.block(p, stride, name=f"layer{i + 1}_{j}")(x, train=train)
      self.sow("features", f"layer{i + 1}", x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, name="fc")(x)


class ResNet18(ResNet):
  block: type = BasicBlock
  layers: Sequence[int] = (2, 2, 2, 2)


class ResNet34(ResNet):
  block: type = BasicBlock
  layers: Sequence[int] = (3, 4, 6, 3)


class ResNet50(ResNet):
  block: type = Bottleneck
  layers: Sequence[int] = (3, 4, 6, 3)


MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
}
