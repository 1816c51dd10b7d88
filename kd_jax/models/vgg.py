"""VGG family: torchvision-compatible `vgg16` / `vgg16_bn` and a VGG-style CIFAR teacher.

Layout (NHWC, float32 in, logits out):

  vgg16 (VGG16):     torchvision config "D": 13 conv3x3(pad 1)+ReLU in 5 stages of
             (2, 2, 3, 3, 3) convs with widths (64, 128, 256, 512, 512), a 2x2/2
             max-pool closing every stage, AdaptiveAvgPool2d((7, 7)), then the
             classifier Linear(25088, 4096)-ReLU-Dropout(0.5)-Linear(4096, 4096)-
             ReLU-Dropout(0.5)-Linear(4096, C).
             Trainable params at C=1000: 138,357,544 (= torchvision).
  vgg16_bn (VGG16BN): the same with conv -> BatchNorm -> ReLU (the conv keeps its bias,
             as torchvision does). Params at C=1000: 138,365,992 (= torchvision).
  vgg_cifar (VGGCifar): the VGG-style CIFAR teacher of the small students
             (small.py): 11 convolutional layers, 4 max-pooling layers and 3
             dense layers, around 12 million trainable parameters. That spec
             gives no widths; this module derives them VGG-style (3x3
             convs, widths doubling per stage, a 2x2 max-pool closing each
             stage):
               stage1: 64, 64        -> pool  (32 -> 16)
               stage2: 128, 128      -> pool  (16 -> 8)
               stage3: 256, 256, 256 -> pool  (8 -> 4)
               stage4: 512 x 4       -> pool  (4 -> 2)
             i.e. VGG-16's first four stages with one extra 512 conv (11 convs),
             then flatten 2x2x512 = 2048 -> Dense(1024)-ReLU-Dropout(0.5) ->
             Dense(512)-ReLU-Dropout(0.5) -> Dense(C)  (3 dense layers).
             No BatchNorm. Params at 32x32x3, C=10:
               convs 9,995,072 + dense 2,098,176 + 524,800 + 5,130 = 12,623,178.
             Before the dense head the 2x2x512 map goes through the same
             torch-exact adaptive average pool, to 2x2: the identity at 32x32
             input (so it is exactly "flatten after the 4th pool" there) and it
             keeps the parameter count independent of the input size.

Input sizes (28..224 and beyond): max-pools are torchvision's 2x2/2 floor-mode
pools, with one extension rule: **a max-pool is skipped along any spatial axis
whose size is already 1** (window and stride 1 there). Torch itself raises an
error in that case, so every input size torch accepts behaves exactly as in
torch (e.g. 224 -> 112 -> 56 -> 28 -> 14 -> 7), while e.g. a 28x28 input runs
28 -> 14 -> 7 -> 3 -> 1 -> 1 instead of shrinking to 0.
`adaptive_avg_pool` reproduces torch's AdaptiveAvgPool2d for any input size:
output cell i along an axis of length H averages rows
[floor(i*H/out), ceil((i+1)*H/out)); it is the identity when H == out, so a
224 input (7x7 map) is unchanged, and parameter counts never depend on size.

Flatten order: the pooled map is transposed to channels-first before
flattening so the first Dense kernel lines up with torchvision's
Linear(25088, 4096) weight (transposed) for weight porting.

Features sown into the 'features' collection (names never clash with
submodules, which are named conv{s}_{i}, bn{s}_{i}, fc1, fc2, head):
  "block1".."block5" (vgg_cifar: "block1".."block4"): each stage's output after
      its max-pool (strides 2, 4, 8, 16, 32 for a 224 input), NHWC.
  "pre_logits": the (B, hidden) activation after the last hidden Dense+ReLU
      (before its dropout), i.e. the input of the classifier `head`.

Dropout: `nn.Dropout(rate, deterministic=not train)`; with train=True `apply`
needs `rngs={'dropout': key}`. vgg16_bn additionally needs
`mutable=['batch_stats']` when train=True.

Initialisation follows torchvision: convs kaiming-normal (fan_out, ReLU gain),
zero biases; BN scale 1, bias 0; Dense N(0, 0.01), zero bias.
"""
from __future__ import annotations

from typing import Sequence, Union

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import fast_ops, layers

# torchvision kaiming_normal_(mode="fan_out", nonlinearity="relu")
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
dense_init = nn.initializers.normal(stddev=0.01)

M = "M"  # max-pool marker in configs
CFG_D = (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, M,
         512, 512, 512, M)
CFG_CIFAR = (64, 64, M, 128, 128, M, 256, 256, 256, M, 512, 512, 512, 512, M)


def adaptive_avg_pool(x, output_size: tuple[int, int]):
  """torch.nn.AdaptiveAvgPool2d on an NHWC array (static shapes).

  Along an axis of length n pooled to `out` cells, cell i averages indices
  [floor(i*n/out), ceil((i+1)*n/out)). Separable per axis (the mean of means
  over a rectangle equals the rectangle mean). Identity when n == out.
  """
  for axis, out in zip((1, 2), output_size):
    n = x.shape[axis]
    if n == out:
      continue
    if n % out == 0:  # evenly divisible: one reshape-mean (same windows)
      k = n // out
      shape = x.shape[:axis] + (out, k) + x.shape[axis + 1:]
      x = x.reshape(shape).mean(axis + 1)
      continue
    cells = []
    for i in range(out):
      start = (i * n) // out
      end = -((-(i + 1) * n) // out)  # ceil((i+1)*n/out)
      sl = [slice(None)] * x.ndim
      sl[axis] = slice(start, end)
      cells.append(x[tuple(sl)].mean(axis, keepdims=True))
    x = jnp.concatenate(cells, axis=axis)
  return x


def max_pool_2x2(x):
  """2x2/2 floor-mode max-pool; skipped along any spatial axis of size 1."""
  window = tuple(1 if n == 1 else 2 for n in x.shape[1:3])
  return fast_ops.max_pool(x, window, strides=window)


class VGG(nn.Module):
  """Generic VGG: `cfg` of conv widths and "M" (max-pool, ends a stage)."""
  num_classes: int
  cfg: Sequence[Union[int, str]] = CFG_D
  batch_norm: bool = False
  pool_size: tuple[int, int] = (7, 7)
  hidden: Sequence[int] = (4096, 4096)
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    stage, idx = 1, 1
    for v in self.cfg:
      if v == M:
        x = max_pool_2x2(x)
        self.sow("features", f"block{stage}", x)
        stage, idx = stage + 1, 1
        continue
      x = nn.Conv(v, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                  name=f"conv{stage}_{idx}")(x)
      if self.batch_norm:
        x = layers.batch_norm(train, f"bn{stage}_{idx}")(x)
      x = nn.relu(x)
      idx += 1
    x = adaptive_avg_pool(x, self.pool_size)
    # Channels-first flatten, as torch.flatten on NCHW.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape((x.shape[0], -1))
    for i, h in enumerate(self.hidden):
      x = nn.relu(nn.Dense(h, kernel_init=dense_init, name=f"fc{i + 1}")(x))
      if i == len(self.hidden) - 1:
        self.sow("features", "pre_logits", x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=dense_init, name="head")(x)


class VGG16(VGG):
  """torchvision vgg16 (config D, no BatchNorm)."""
  cfg: Sequence[Union[int, str]] = CFG_D
  batch_norm: bool = False


class VGG16BN(VGG):
  """torchvision vgg16_bn (config D, conv -> BN -> ReLU)."""
  cfg: Sequence[Union[int, str]] = CFG_D
  batch_norm: bool = True


class VGGCifar(VGG):
  """The VGG-style CIFAR teacher (11 conv, 4 max-pool, 3 dense; see module doc)."""
  cfg: Sequence[Union[int, str]] = CFG_CIFAR
  batch_norm: bool = False
  pool_size: tuple[int, int] = (2, 2)
  hidden: Sequence[int] = (1024, 512)


MODELS = {
    "vgg16": VGG16,
    "vgg16_bn": VGG16BN,
    "vgg_cifar": VGGCifar,
}
