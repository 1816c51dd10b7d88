"""CIFAR ResNets of the distillation benchmarks (CRD, Tian et al. 2020).

The layout of RepDistiller's `models/resnet.py` (He et al. 2016's CIFAR
ResNet, with option-B projection shortcuts), which the CIFAR-100 KD tables
use:

  stem:   conv3x3 (w0, no bias) -> BN -> ReLU                      (32x32)
  stage1..stage3: n = (depth - 2) / 6 BasicBlocks each with widths
          w1, w2, w3; the first block of stage2 and stage3 has stride 2
          (32x32, 16x16, 8x8 at a 32 px input)
  head:   global average pool -> Dense(C) (`fc`).
  BasicBlock: conv3x3/s-BN-ReLU-conv3x3-BN (+ shortcut) -> ReLU, with the
          shortcut conv1x1/s (no bias) -> BN when the stride or the width
          changes (resnet.BasicBlock, shared with the torchvision ResNets).

  names                     depth         widths (w0, w1, w2, w3)
  resnet8 .. resnet110      8,14,20,32,   (16, 16, 32, 64)
                            44,56,110
  resnet8x4, resnet32x4     8, 32         (32, 64, 128, 256)
Trainable params at C=100 (= RepDistiller): resnet8 83,892; resnet14
181,108; resnet20 278,324; resnet32 472,756; resnet44 667,188; resnet56
861,620; resnet110 1,736,564; resnet8x4 1,233,540; resnet32x4 7,433,860.

RepDistiller pools with AvgPool2d(8), the global pool at its 32 px input;
the global mean here is the same there and lets any input size run.
Init as RepDistiller: convs kaiming-normal (fan_out, ReLU gain), BN scale 1
/ bias 0, the classifier at PyTorch's Linear default.

Features sown into 'features' (RepDistiller's `is_feat` list [f0, f1, f2,
f3, f4] under these names; submodules are conv1, bn1, layer{i}_{j}, fc):
  "stem":            f0, after conv1-BN-ReLU (stride 1, w0 ch)
  "stage1".."stage3": f1..f3, each stage's output after its last ReLU
                     (strides 1, 2, 4; w1, w2, w3 ch)
  "stage1_preact".."stage3_preact": the same before that ReLU (RepDistiller's
                     `preact=True` features; `preact_bn` names the
                     BatchNorm of each, for OFD's margin)
  "pre_logits":      f4, the pooled (B, w3) vector fed to `fc`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import (batch_norm, torch_bias_init, torch_conv,
                                  torch_kernel_init)
from kd_jax.models.resnet import BasicBlock, conv_init


class CifarResNet(nn.Module):
  """RepDistiller's CIFAR ResNet (see the module docstring)."""
  num_classes: int
  depth: int = 20
  widths: Sequence[int] = (16, 16, 32, 64)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if (self.depth - 2) % 6:
      raise ValueError(f"depth must be 6n + 2, got {self.depth}")
    n = (self.depth - 2) // 6
    x = torch_conv(self.widths[0], 3, kernel_init=conv_init, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    self.sow("features", "stem", x)
    for i, planes in enumerate(self.widths[1:]):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = BasicBlock(planes, stride, preact=j == n - 1,
                       name=f"layer{i + 1}_{j}")(x, train=train)
        if j == n - 1:
          x, pre = x
          self.sow("features", f"stage{i + 1}_preact", pre)
      self.sow("features", f"stage{i + 1}", x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)

  def preact_bn(self) -> dict:
    """{pre-ReLU feature: params path of the BatchNorm on its residual
    branch}: each stage's last block's bn2 (mdistiller's
    `get_bn_before_relu`)."""
    n = (self.depth - 2) // 6
    return {f"stage{i}_preact": (f"layer{i}_{n - 1}", "bn2")
            for i in range(1, len(self.widths))}


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)  # the "x4" models

MODELS = {
    **{f"resnet{d}": functools.partial(CifarResNet, depth=d, widths=_THIN)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": functools.partial(CifarResNet, depth=8, widths=_WIDE),
    "resnet32x4": functools.partial(CifarResNet, depth=32, widths=_WIDE),
}
