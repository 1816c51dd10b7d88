"""Layer helpers shared by the model families (PyTorch conventions in Flax)."""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.models import fast_ops

# PyTorch's default Conv2d / Linear init: kaiming_uniform(a=sqrt(5)) is
# U(+-1/sqrt(fan_in)), i.e. variance 1/(3 fan_in); flax's fan_in for a conv
# kernel (kh, kw, in/groups, out) is kh*kw*in/groups, the same as torch's.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


def batch_norm(train: bool, name: str):
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      epsilon=1e-5, name=name)


def torch_conv(features: int, k: int, stride: int = 1, groups: int = 1, *,
               kernel_init=torch_kernel_init, name: str):
  """Bias-free conv with PyTorch's symmetric padding (k - 1) // 2."""
  p = (k - 1) // 2
  return nn.Conv(features, (k, k), strides=(stride, stride),
                 padding=((p, p), (p, p)), feature_group_count=groups,
                 use_bias=False, kernel_init=kernel_init, name=name,
                 conv_general_dilated=fast_ops.conv_general_dilated)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
  """Round `v` to the nearest multiple of `divisor` (at least `min_value`,
  default `divisor`), never dropping more than 10% (timm / torchvision)."""
  if min_value is None:
    min_value = divisor
  out = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if out < 0.9 * v:
    out += divisor
  return out
