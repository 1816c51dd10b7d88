"""CIFAR VGG-BN nets of the distillation benchmarks (CRD, Tian et al. 2020).

The layout of RepDistiller's `models/vgg.py` with batch norm (its `vgg8` ..
`vgg19` names point at the `_bn` variants). Registered as `vgg{N}_cifar`:
`vgg16` / `vgg16_bn` are torchvision's ImageNet models and `vgg_cifar` the
dense-head CIFAR teacher (vgg.py).

Five conv blocks of conv3x3 (pad 1, with bias) -> BN -> ReLU, widths
  vgg8_cifar:  [64], [128], [256], [512], [512]                       ("S")
  vgg11_cifar: [64], [128], [256]x2, [512]x2, [512]x2                 ("A")
  vgg13_cifar: [64]x2, [128]x2, [256]x2, [512]x2, [512]x2             ("B")
  vgg16_cifar: [64]x2, [128]x2, [256]x3, [512]x3, [512]x3             ("D")
  vgg19_cifar: [64]x2, [128]x2, [256]x4, [512]x4, [512]x4             ("E")
with a 2x2/2 max-pool after blocks 0, 1, 2 and after block 3 only when its
map is larger than 4x4, then a global average pool -> Dense(C) (`fc`, 512
inputs). At 32 px the blocks run at 32, 16, 8, 4, 4; at 64 px at 64, 32,
16, 8, 4. RepDistiller pools after block 3 exactly when the input is 64 px
high, so both agree at the 32 and 64 px inputs it supports; the 4x4 rule
keeps block 4's map small at any other size.
Trainable params at C=100 (= RepDistiller): vgg8_cifar 3,965,028;
vgg11_cifar 9,277,284; vgg13_cifar 9,462,180; vgg16_cifar 14,774,436;
vgg19_cifar 20,086,692.

Init as RepDistiller: convs normal(0, sqrt(2 / (k * k * out))) (He, fan_out),
zero biases; BN scale 1 / bias 0; the classifier N(0, 0.01), zero bias.

Features sown into 'features' (RepDistiller's `is_feat` list [f0, .., f5]
under these names; submodules are conv{b}_{i}, bn{b}_{i}, fc):
  "stem":            f0, block 0's output after its ReLU, before the pool
                     (64 ch, stride 1)
  "stage1".."stage4": f1..f4, blocks 1..4 after their last ReLU, before any
                     pool (128, 256, 512, 512 ch; 16, 8, 4, 4 px at 32 px)
  "pre_logits":      f5, the pooled (B, 512) vector fed to `fc`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import layers
from kd_jax.models.vgg import conv_init, dense_init, max_pool_2x2

CFGS = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256,) * 2, (512,) * 2, (512,) * 2),
    13: ((64,) * 2, (128,) * 2, (256,) * 2, (512,) * 2, (512,) * 2),
    16: ((64,) * 2, (128,) * 2, (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64,) * 2, (128,) * 2, (256,) * 4, (512,) * 4, (512,) * 4),
}


class CifarVGG(nn.Module):
  """RepDistiller's CIFAR VGG with BN (see the module docstring)."""
  num_classes: int
  cfg: Sequence[Sequence[int]] = CFGS[13]

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    for b, widths in enumerate(self.cfg):
      if b in (1, 2, 3) or (b == 4 and x.shape[1] > 4):
        x = max_pool_2x2(x)
      for i, w in enumerate(widths):
        x = nn.Conv(w, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                    name=f"conv{b}_{i}")(x)
        x = nn.relu(layers.batch_norm(train, f"bn{b}_{i}")(x))
      self.sow("features", "stem" if b == 0 else f"stage{b}", x)
    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=dense_init, name="fc")(x)


MODELS = {f"vgg{n}_cifar": functools.partial(CifarVGG, cfg=cfg)
          for n, cfg in CFGS.items()}
