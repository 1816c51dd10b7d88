"""Activation-boundary distillation losses on pre-ReLU feature maps: pure,
jit-able functions of arrays, and the connectors that map the student's
maps to the teacher's.

Both methods read the maps before each stage's last ReLU (the models sow
them as '<stage>_preact') and care mostly about where a neuron is active,
i.e. on which side of zero the teacher's response lies:
  * AB transfers the activation boundaries with a margin-based hinge; in
    RepDistiller it trains the student's body alone in a stage of its own
    (methods.py: 'ab_init').
  * OFD pulls the student's response towards the teacher's wherever it
    matters after the ReLU: everywhere the teacher is positive, and only
    from above (down to a per-channel negative margin) where it is not.
Maps are NHWC; every loss returns a scalar; beta is applied by the caller.

References:
  * Heo, Lee, Yun & Choi 2019, "Knowledge transfer via distillation of
    activation boundaries formed by hidden neurons" (AAAI; AB).
  * Heo, Kim, Yun, Park, Kwak & Choi 2019, "A comprehensive overhaul of
    feature distillation" (ICCV; OFD).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from kd_jax.distill.feature_losses import adaptive_avg_pool
from kd_jax.errors import UserError
from kd_jax.models.layers import batch_norm
from kd_jax.models.layers import torch_bias_init
from kd_jax.models.layers import torch_kernel_init

# ---------------------------------------------------------------- AB ------


def ab_pair_loss(source_BxHxWxC, target_BxHxWxC, *, margin=1.0):
  """The alternative (differentiable) AB loss of one layer pair, summed
  over batch and elements (Heo et al. AAAI 2019, eq. 5):

    sum rho(t) relu(m - s)^2 + (1 - rho(t)) relu(m + s)^2

  with rho(t) = [t > 0] the teacher neuron's activation, s the student's
  pre-ReLU response through the connector and m the margin (RepDistiller's
  and the authors' 1). Shapes of source and target agree.
  """
  s, t = source_BxHxWxC, target_BxHxWxC
  active = t > 0
  return jnp.sum(jnp.where(active, jnp.square(nn.relu(margin - s)),
                           jnp.square(nn.relu(margin + s))))


def ab_loss(student_feats, teacher_feats, *, margin=1.0):
  """AB over the layer pairs (shallow to deep), in RepDistiller's scale:

    L = sum_i 2^(i - n + 1) ab_pair_loss_i / B * 3 / 1000

  so that the deepest pair weighs 1 and each shallower one half the next;
  the division by the batch size B and the factor 3 / 1000 are constants
  of the authors' and RepDistiller's code (the paper states neither).
  Inputs: the connected student maps and the teacher's, equal shapes.
  """
  n = len(student_feats)
  total = 0.0
  for i, (s, t) in enumerate(zip(student_feats, teacher_feats, strict=True)):
    weight = 2.0 ** (i - n + 1)
    total = total + weight * ab_pair_loss(s, t, margin=margin) / s.shape[0]
  return total * 3.0 / 1000.0


class ConvRegressor(nn.Module):
  """RepDistiller's `ConvReg` without its ReLU (AB's connector where the
  shapes differ): conv -> BN to the teacher's `[H, W, C]`. The conv is
  3x3/2 when the student's map is twice the teacher's size, a 4x4/2
  transposed conv when it is half, a valid conv of kernel 1 + H_s - H_t
  when it is larger (1x1 at equal sizes); PyTorch's default
  initialisation. A smaller map than half the teacher's is a UserError."""
  out_hwc: tuple

  @nn.compact
  def __call__(self, x_BxHxWxC, *, train: bool):
    (h_t, w_t, c_t), (h_s, w_s) = self.out_hwc, x_BxHxWxC.shape[1:3]
    fan_in = x_BxHxWxC.shape[-1]
    kw = dict(kernel_init=torch_kernel_init, name="conv")
    if h_s == 2 * h_t:
      conv = nn.Conv(c_t, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                     bias_init=torch_bias_init(9 * fan_in), **kw)
    elif 2 * h_s == h_t:
      # torch's padding 1 of a 4x4 transposed conv: 4 - 1 - 1 on each side
      # of the dilated input, so that the output is twice the input.
      conv = nn.ConvTranspose(c_t, (4, 4), strides=(2, 2),
                              padding=((2, 2), (2, 2)),
                              bias_init=torch_bias_init(16 * fan_in), **kw)
    elif h_s >= h_t:
      k = (1 + h_s - h_t, 1 + w_s - w_t)
      conv = nn.Conv(c_t, k, padding="VALID",
                     bias_init=torch_bias_init(k[0] * k[1] * fan_in), **kw)
    else:
      raise UserError(
          f"AB's connector maps a student map to the teacher's size: the "
          f"student's {h_s}x{w_s} map is smaller than the teacher's "
          f"{h_t}x{w_t} and not half of it (set config.kd.feature_layers)")
    return batch_norm(train, "bn")(conv(x_BxHxWxC))


def ab_connector_needed(student_hwc, teacher_hwc) -> bool:
  """RepDistiller's rule: the identity where channels and height agree."""
  return (student_hwc[-1] != teacher_hwc[-1]
          or student_hwc[0] != teacher_hwc[0])


# ---------------------------------------------------------------- OFD -----

def ofd_margin(gamma_C, beta_C):
  """OFD's per-channel margin (Heo et al. ICCV 2019, eq. 3): the expected
  value of the teacher's negative responses, E[x | x < 0] for x ~
  N(beta, gamma^2) the output of the BatchNorm before the ReLU,

    m = beta - |gamma| phi(beta / |gamma|) / Phi(-beta / |gamma|),

  and -3 |gamma| where Phi(-beta / |gamma|) <= 0.001 (almost never
  negative), as the authors' code. Host-side, float64 -> float32 `[C]`.
  """
  out = []
  for g, b in zip(np.asarray(gamma_C, np.float64).ravel(),
                  np.asarray(beta_C, np.float64).ravel()):
    s = abs(g)
    p_neg = 0.5 * math.erfc(b / s / math.sqrt(2.0)) if s else float(b < 0)
    if p_neg > 0.001 and s:
      pdf = math.exp(-0.5 * (b / s) ** 2) / math.sqrt(2.0 * math.pi)
      out.append(b - s * pdf / p_neg)
    elif p_neg > 0.001:  # gamma = 0: the response is the constant beta
      out.append(b)
    else:
      out.append(-3.0 * s)
  return np.asarray(out, np.float32)


def ofd_pair_loss(source_BxHxWxC, target_BxHxWxC, margin_C):
  """OFD's partial L2 distance of one pair (Heo et al. ICCV 2019, eq. 5),
  summed over positions and channels and averaged over the batch:

    d = sum_{h,w,c} [s > t' or t' > 0] (t' - s)^2,   t' = max(t, m_c)

  i.e. no loss where both the teacher's target t' (clipped from below at
  the margin) and the student's response s are negative and s <= t': the
  ReLU hides the difference there. mdistiller writes the same as three
  cases (its `feat_loss`).
  """
  t = jnp.maximum(target_BxHxWxC, margin_C)
  s = source_BxHxWxC
  mask = (s > t) | (t > 0)
  return jnp.sum(jnp.where(mask, jnp.square(s - t), 0.0)) / s.shape[0]


def ofd_loss(student_feats, teacher_feats, margins):
  """OFD over the layer pairs (shallow to deep): each teacher map
  average-pooled to its connected student map's size, the pair's
  `ofd_pair_loss` divided by 2^(n - 1 - i) (the deepest weighs 1), summed;
  mdistiller's form (its beta 1e-3 is the authors' division of the sum by
  1000)."""
  n = len(student_feats)
  total = 0.0
  for i, (s, t, m) in enumerate(zip(student_feats, teacher_feats, margins,
                                    strict=True)):
    t = adaptive_avg_pool(t, s.shape[1:3])
    total = total + ofd_pair_loss(s, t, jnp.asarray(m)) / 2.0 ** (n - 1 - i)
  return total


# He et al.'s normal(0, sqrt(2 / (k k out))) of the authors' connector.
_he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class OFDConnector(nn.Module):
  """OFD's connector: 1x1 conv (no bias) -> BN to the teacher's channels,
  applied to the student's pre-ReLU map."""
  out_channels: int

  @nn.compact
  def __call__(self, x_BxHxWxC, *, train: bool):
    x = nn.Conv(self.out_channels, (1, 1), use_bias=False,
                kernel_init=_he_fan_out, name="conv")(x_BxHxWxC)
    return batch_norm(train, "bn")(x)
