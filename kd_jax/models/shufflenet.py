"""ShuffleNet V2 (Ma et al., 2018, arXiv:1807.11164) in Flax linen.

Same layer layout as torchvision's `shufflenet_v2_x0_5` / `shufflenet_v2_x1_0`
(hence identical trainable parameter counts at num_classes=1000:
1,366,792 and 2,278,604):

  conv1 3x3/2 (c0) -> BN -> ReLU -> maxpool 3x3/2 (pad 1)
  torchvision's stage2, stage3, stage4 (here units stage3_*, stage4_*,
      stage5_*): one stride-2 unit then (repeats - 1) stride-1 units,
      repeats = (4, 8, 4)
  conv5 1x1 (c4) -> BN -> ReLU -> global average pool -> fc (with bias)

  stage_out_channels c0..c4: x0_5 = (24, 48, 96, 192, 1024),
                             x1_0 = (24, 116, 232, 464, 1024)

Units (torchvision's InvertedResidual), with b = out // 2:
  stride 1: split channels in half (x1, x2); out = concat(x1, branch2(x2))
  stride 2: out = concat(branch1(x), branch2(x))
  then channel_shuffle(out, groups=2).
  branch1 = dw3x3/s -> BN -> 1x1 (b) -> BN -> ReLU
  branch2 = 1x1 (b) -> BN -> ReLU -> dw3x3/s -> BN -> 1x1 (b) -> BN -> ReLU
All convs are bias-free (as in torchvision); only fc has a bias.

Feature maps sown into the 'features' collection: the last map at each
output stride, numbered by stride like the other families (mobilenet.py), so
they are shifted by one against torchvision's stage names. Shapes for a
224x224 input and x1_0; output stride in brackets:
  stage1      conv1 + BN + ReLU (24 ch, 112x112)                      [/2]
  stage2      after the max pool (24 ch, 56x56)                       [/4]
  stage3      after torchvision's `stage2` (116 ch, 28x28)            [/8]
  stage4      after torchvision's `stage3` (232 ch, 14x14)            [/16]
  stage5      after torchvision's `stage4` + conv5 + BN + ReLU
              (1024 ch, 7x7)                                          [/32]
  pre_logits  (B, 1024) the globally average-pooled stage5: fc's input
Submodules follow the same numbering: units stage3_0..3 (torchvision
stage2.0..3), stage4_0..7 (stage3.*), stage5_0..3 (stage4.*); a sow name
never equals a submodule name.

Any input size >= 28 works: strided convs and the max pool use explicit
torch-style padding ((1, 1), (1, 1)) (max pool pads with -inf like PyTorch),
so spatial sizes equal PyTorch's, and the head uses global average pooling.

Initialisation mirrors torchvision, which leaves ShuffleNetV2 at PyTorch's
defaults: conv / fc kernels U(+-1/sqrt(fan_in)) (kaiming_uniform, a=sqrt(5)),
fc bias U(+-1/sqrt(fan_in)), BN scale one / bias zero.

Deviations from torchvision: NHWC layout only (the channel shuffle permutes
the last axis exactly like torchvision permutes axis 1).
There is no dropout, so `train=True` needs only `mutable=['batch_stats']`.
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models import fast_ops
from kd_jax.models.layers import (batch_norm, torch_bias_init, torch_conv,
                                  torch_kernel_init)


def channel_shuffle(x, groups: int):
  """NHWC channel shuffle: channel g * (C/groups) + j  ->  j * groups + g."""
  *lead, c = x.shape
  x = x.reshape((*lead, groups, c // groups))
  x = jnp.swapaxes(x, -1, -2)
  return x.reshape((*lead, c))


class InvertedResidual(nn.Module):
  out_chs: int
  stride: int

  @nn.compact
  def __call__(self, x, *, train: bool):
    b = self.out_chs // 2
    in_chs = x.shape[-1]
    if self.stride == 1:
      if in_chs != 2 * b:
        raise ValueError(f"stride 1 needs in == out, got {in_chs} -> {self.out_chs}")
      x1, x2 = jnp.split(x, 2, axis=-1)
    else:
      x1 = torch_conv(in_chs, 3, self.stride, groups=in_chs, name="branch1_dw")(x)
      x1 = batch_norm(train, "branch1_dw_bn")(x1)
      x1 = torch_conv(b, 1, name="branch1_pw")(x1)
      x1 = nn.relu(batch_norm(train, "branch1_pw_bn")(x1))
      x2 = x
    y = torch_conv(b, 1, name="branch2_pw1")(x2)
    y = nn.relu(batch_norm(train, "branch2_pw1_bn")(y))
    y = torch_conv(b, 3, self.stride, groups=b, name="branch2_dw")(y)
    y = batch_norm(train, "branch2_dw_bn")(y)
    y = torch_conv(b, 1, name="branch2_pw2")(y)
    y = nn.relu(batch_norm(train, "branch2_pw2_bn")(y))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNet V2; see the module docstring for layout and sown features."""
  num_classes: int
  stages_repeats: tuple = (4, 8, 4)
  stages_out_channels: tuple = (24, 116, 232, 464, 1024)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    chs = self.stages_out_channels
    x = torch_conv(chs[0], 3, 2, name="conv1")(x)
    x = nn.relu(batch_norm(train, "conv1_bn")(x))
    self.sow("features", "stage1", x)
    x = fast_ops.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    self.sow("features", "stage2", x)
    # torchvision stage2/3/4 = our stride stages 3/4/5.
    for si, (repeats, out) in enumerate(zip(self.stages_repeats, chs[1:4])):
      stage = f"stage{si + 3}"
      for bi in range(repeats):
        x = InvertedResidual(out, 2 if bi == 0 else 1,
                             name=f"{stage}_{bi}")(x, train=train)
      if stage != "stage5":  # stage5 ends after conv5 (same resolution)
        self.sow("features", stage, x)
    x = torch_conv(chs[4], 1, name="conv5")(x)
    x = nn.relu(batch_norm(train, "conv5_bn")(x))
    self.sow("features", "stage5", x)
    x = jnp.mean(x, axis=(1, 2))  # global average pool
    self.sow("features", "pre_logits", x)
    return nn.Dense(self.num_classes, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(x.shape[-1]), name="fc")(x)


def shufflenet_v2_x0_5(num_classes: int, **kw) -> ShuffleNetV2:
  return ShuffleNetV2(num_classes=num_classes,
                      stages_out_channels=(24, 48, 96, 192, 1024), **kw)


def shufflenet_v2_x1_0(num_classes: int, **kw) -> ShuffleNetV2:
  return ShuffleNetV2(num_classes=num_classes,
                      stages_out_channels=(24, 116, 232, 464, 1024), **kw)


MODELS = {
    "shufflenet_v2_x0_5": shufflenet_v2_x0_5,
    "shufflenet_v2_x1_0": shufflenet_v2_x1_0,
}
