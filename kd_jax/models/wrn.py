"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016) of the KD benchmarks.

The layout of RepDistiller's `models/wrn.py` (CRD, Tian et al. 2020), names
wrn_{depth}_{k}, n = (depth - 4) / 6 blocks per stage, widths
(16, 16k, 32k, 64k):

  stem:   conv3x3 (16, no bias)                                     (32x32)
  stage1..stage3: n pre-activation blocks each (16k, 32k, 64k ch); the first
          block of stage2 and stage3 has stride 2 (32x32, 16x16, 8x8)
  head:   BN -> ReLU -> global average pool -> Dense(C) (`fc`).
  block (pre-activation):
    same width in and out:  x + conv3x3(ReLU(BN(conv3x3/s(ReLU(BN(x))))))
    width changes:          a = ReLU(BN(x));
                            conv1x1/s(a) + conv3x3(ReLU(BN(conv3x3/s(a))))
  (RepDistiller's dropRate is 0 in every benchmark model: no dropout.)
Trainable params at C=100 (= RepDistiller): wrn_16_1 180,916; wrn_16_2
703,284; wrn_40_1 569,780; wrn_40_2 2,255,156.

RepDistiller pools with avg_pool2d(8), the global pool at its 32 px input;
the global mean here is the same there and lets any input size run.
Init as RepDistiller: convs normal(0, sqrt(2 / (k * k * out))) (He, fan_out),
BN scale 1 / bias 0, the classifier's kernel at PyTorch's Linear default and
its bias zero.

Features sown into 'features' (RepDistiller's `is_feat` list [f0, f1, f2,
f3, f4] under these names; submodules are conv1, block{i}_{j}, bn1, fc):
  "stem":            f0, the conv1 output (16 ch, stride 1)
  "stage1".."stage3": f1..f3, each stage's output (the sum of its last block,
                     before the next BN-ReLU; strides 1, 2, 4)
  "pre_logits":      f4, the pooled (B, 64k) vector fed to `fc`.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import batch_norm, torch_conv, torch_kernel_init

conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _conv(features, kernel, stride=1, name=None):
  return torch_conv(features, kernel, stride, kernel_init=conv_init, name=name)


class WideBlock(nn.Module):
  """Pre-activation basic block; a 1x1 shortcut when the width changes."""
  out_chs: int
  stride: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool):
    a = nn.relu(batch_norm(train, "bn1")(x))
    y = _conv(self.out_chs, 3, self.stride, name="conv1")(a)
    y = nn.relu(batch_norm(train, "bn2")(y))
    y = _conv(self.out_chs, 3, name="conv2")(y)
    if x.shape[-1] == self.out_chs:
      return x + y
    return _conv(self.out_chs, 1, self.stride, name="shortcut")(a) + y


class WideResNet(nn.Module):
  """WRN-depth-k for CIFAR (see the module docstring)."""
  num_classes: int
  depth: int = 16
  widen: int = 1

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"depth must be 6n + 4, got {self.depth}")
    n = (self.depth - 4) // 6
    x = _conv(16, 3, name="conv1")(x)
    self.sow("features", "stem", x)
    for i, base in enumerate((16, 32, 64)):
      for j in range(n):
        stride = 2 if (i > 0 and j == 0) else 1
        x = WideBlock(base * self.widen, stride,
                      name=f"block{i + 1}_{j}")(x, train=train)
      self.sow("features", f"stage{i + 1}", x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                    name="fc")(x)


MODELS = {
    f"wrn_{d}_{k}": functools.partial(WideResNet, depth=d, widen=k)
    for d in (16, 40) for k in (1, 2)
}
