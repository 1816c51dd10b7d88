"""MobileNet V2 / V3 (small, large), layer for layer as torchvision defines them.

Registered names:
  mobilenet_v2        3,504,872 params at 1000 classes (= torchvision)
  mobilenet_v3_small  2,542,856 params at 1000 classes (= torchvision)
  mobilenet_v3_large  5,483,032 params at 1000 classes (= torchvision)

Architecture notes (all as in torchvision):
  * every conv followed by BatchNorm has no bias; the squeeze-excitation 1x1
    convs and the classifier Linears do have biases;
  * a conv with kernel k is padded explicitly by (k-1)//2 on each side, so
    stride-2 convs give ceil(H/2) exactly like torch (28 -> 14 -> 7 -> 4 -> 2 -> 1);
  * BatchNorm epsilon: 1e-5 for V2, 1e-3 for V3;
  * V2: ReLU6 everywhere, classifier Dropout(0.2) -> Linear(1280, classes);
  * V3: ReLU / Hardswish per block config, SE squeeze width
    make_divisible(expanded // 4, 8) with a Hardsigmoid gate, last 1x1 conv
    6 x last block width (576 / 960), classifier
    Linear(->1024 / 1280) -> Hardswish -> Dropout(0.2) -> Linear(-> classes);
  * global average pooling before the classifier, so any input size from 28
    up works;
  * initialisation mirrors torchvision: convs kaiming-normal (fan_out), linears
    normal(0, 0.01), biases zero, BN scale one / bias zero.

Deviation from torchvision: BatchNorm momentum. torchvision uses torch
momentum 0.1 for V2 (= flax 0.9) but 0.01 for V3 (= flax 0.99); here every
model defaults to the project convention flax momentum 0.9 (field
`bn_momentum`; set 0.99 for exact V3 behaviour). Running stats are not
parameters, so counts are unaffected.

Dropout is active only when `train=True`; then the caller must pass
`rngs={'dropout': key}` to `apply`. With `train=False` no rng is needed.

Sown features (collection 'features'; output stride relative to the input):
  stage1  last map at stride 2   (V2: 16ch, V3-small: 16ch, V3-large: 16ch)
  stage2  last map at stride 4   (V2: 24ch, V3-small: 16ch, V3-large: 24ch)
  stage3  last map at stride 8   (V2: 32ch, V3-small: 24ch, V3-large: 40ch)
  stage4  last map at stride 16  (V2: 96ch, V3-small: 48ch, V3-large: 112ch)
  stage5  last map at stride 32, i.e. the output of the final 1x1 conv that
          torchvision's `features` returns (V2: 1280, V3-small: 576,
          V3-large: 960)
  pre_logits  the globally average-pooled stage5 vector (B, C)
  hidden  (V3 only) the classifier's Linear -> Hardswish output, before
          dropout (B, 1024 / 1280): the input of the final Linear
"""
from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from kd_jax.models.layers import make_divisible, torch_conv

# torchvision init: kaiming_normal_(mode='fan_out') (untruncated), normal(0, .01)
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # untruncated, like torch
_dense_init = nn.initializers.normal(stddev=0.01)
_zeros = nn.initializers.zeros


def _identity(x):
  return x


_ACTS: dict[str, Callable] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "hardswish": nn.hard_swish,     # x * relu6(x + 3) / 6 (torch Hardswish)
    "none": _identity,
}


class ConvBNAct(nn.Module):
  """Conv (no bias, explicit (k-1)//2 padding) -> BatchNorm -> activation."""
  features: int
  kernel: int = 3
  stride: int = 1
  groups: int = 1
  act: str = "relu"
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = torch_conv(self.features, self.kernel, self.stride, self.groups,
                   kernel_init=_conv_init, name="conv")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                     epsilon=self.bn_eps, name="bn")(x)
    return _ACTS[self.act](x)


class SqueezeExcitation(nn.Module):
  """Global pool -> 1x1 conv -> ReLU -> 1x1 conv -> Hardsigmoid -> rescale."""
  squeeze: int

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.Conv(self.squeeze, (1, 1), kernel_init=_conv_init, bias_init=_zeros,
                name="fc1")(s)
    s = nn.relu(s)
    s = nn.Conv(c, (1, 1), kernel_init=_conv_init, bias_init=_zeros,
                name="fc2")(s)
    return x * nn.hard_sigmoid(s)  # relu6(s + 3) / 6 (torch Hardsigmoid)


class InvertedResidual(nn.Module):
  """expand 1x1 (if widened) -> depthwise kxk -> [SE] -> linear project 1x1."""
  out_features: int
  expanded: int
  kernel: int = 3
  stride: int = 1
  use_se: bool = False
  act: str = "relu6"
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool):
    inp = x.shape[-1]
    bn = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)
    y = x
    if self.expanded != inp:
      y = ConvBNAct(self.expanded, 1, act=self.act, name="expand", **bn)(y, train=train)
    y = ConvBNAct(self.expanded, self.kernel, self.stride, groups=self.expanded,
                  act=self.act, name="dw", **bn)(y, train=train)
    if self.use_se:
      y = SqueezeExcitation(make_divisible(self.expanded // 4, 8), name="se")(y)
    y = ConvBNAct(self.out_features, 1, act="none", name="project", **bn)(y, train=train)
    if self.stride == 1 and inp == self.out_features:
      y = y + x
    return y


def _run_trunk(module: nn.Module, x, layers, train: bool):
  """Apply (stride, layer) pairs; sow 'stageN' at the end of each resolution."""
  stage = 0
  for i, (_, layer) in enumerate(layers):
    x = layer(x, train=train)
    nxt_stride = layers[i + 1][0] if i + 1 < len(layers) else 2
    if nxt_stride == 2:
      stage += 1
      module.sow("features", f"stage{stage}", x)
  return x


# t (expand ratio), c (out channels), n (repeats), s (first stride)
_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
               (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
  """torchvision mobilenet_v2. Needs rngs={'dropout': key} when train=True."""
  num_classes: int
  width_mult: float = 1.0
  dropout: float = 0.2
  bn_eps: float = 1e-5
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    bn = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)
    inp = make_divisible(32 * self.width_mult, 8)
    last = make_divisible(1280 * max(1.0, self.width_mult), 8)
    layers = [(2, ConvBNAct(inp, 3, 2, act="relu6", name="stem", **bn))]
    idx = 0
    for t, c, n, s in _V2_SETTING:
      out = make_divisible(c * self.width_mult, 8)
      for i in range(n):
        stride = s if i == 0 else 1
        idx += 1
        layers.append((stride, InvertedResidual(
            out, int(round(inp * t)), 3, stride, act="relu6",
            name=f"block{idx}", **bn)))
        inp = out
    layers.append((1, ConvBNAct(last, 1, act="relu6", name="last_conv", **bn)))
    x = _run_trunk(self, x, layers, train)

    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=_dense_init,
                    bias_init=_zeros, name="head")(x)


# in, kernel, expanded, out, use_se, activation, stride  (torchvision bneck_conf)
_V3_LARGE = (
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hardswish", 2),
    (80, 3, 200, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 184, 80, False, "hardswish", 1),
    (80, 3, 480, 112, True, "hardswish", 1),
    (112, 3, 672, 112, True, "hardswish", 1),
    (112, 5, 672, 160, True, "hardswish", 2),
    (160, 5, 960, 160, True, "hardswish", 1),
    (160, 5, 960, 160, True, "hardswish", 1),
)
_V3_SMALL = (
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hardswish", 2),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 240, 40, True, "hardswish", 1),
    (40, 5, 120, 48, True, "hardswish", 1),
    (48, 5, 144, 48, True, "hardswish", 1),
    (48, 5, 288, 96, True, "hardswish", 2),
    (96, 5, 576, 96, True, "hardswish", 1),
    (96, 5, 576, 96, True, "hardswish", 1),
)
_V3_CONFIGS = {"large": (_V3_LARGE, 1280), "small": (_V3_SMALL, 1024)}


class MobileNetV3(nn.Module):
  """torchvision mobilenet_v3_{large,small} (`variant`).

  Needs rngs={'dropout': key} when train=True.
  """
  num_classes: int
  variant: str = "large"
  width_mult: float = 1.0
  dropout: float = 0.2
  bn_eps: float = 1e-3
  bn_momentum: float = 0.9  # torchvision: torch 0.01 == flax 0.99 (see module doc)

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    setting, last_channel = _V3_CONFIGS[self.variant]
    adj = lambda c: make_divisible(c * self.width_mult, 8)
    bn = dict(bn_eps=self.bn_eps, bn_momentum=self.bn_momentum)

    layers = [(2, ConvBNAct(adj(setting[0][0]), 3, 2, act="hardswish",
                            name="stem", **bn))]
    for i, (_, k, e, o, se, act, s) in enumerate(setting):
      layers.append((s, InvertedResidual(adj(o), adj(e), k, s, use_se=se,
                                         act=act, name=f"block{i + 1}", **bn)))
    last_conv = 6 * adj(setting[-1][3])
    layers.append((1, ConvBNAct(last_conv, 1, act="hardswish",
                                name="last_conv", **bn)))
    x = _run_trunk(self, x, layers, train)

    x = jnp.mean(x, axis=(1, 2))
    self.sow("features", "pre_logits", x)
    x = nn.Dense(adj(last_channel), kernel_init=_dense_init, bias_init=_zeros,
                 name="fc_hidden")(x)
    x = nn.hard_swish(x)
    self.sow("features", "hidden", x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, kernel_init=_dense_init,
                    bias_init=_zeros, name="head")(x)


class MobileNetV3Small(MobileNetV3):
  variant: str = "small"


class MobileNetV3Large(MobileNetV3):
  variant: str = "large"


MODELS = {
    "mobilenet_v2": MobileNetV2,
    "mobilenet_v3_small": MobileNetV3Small,
    "mobilenet_v3_large": MobileNetV3Large,
}
