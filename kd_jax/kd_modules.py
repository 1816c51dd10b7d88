"""Small trainable modules some distillation methods add next to the student.

They are trained with the student (their parameters sit beside it in
`TrainState.params`) and are never part of the saved inference model.
  * `HintAdapter` (FitNets + Chen et al.): 1x1 convolution mapping the
    student's guided-layer channels to the teacher's hint-layer channels (a
    Dense layer for flat `[B, D]` features).
  * `InstanceTemperature` (instance-wise CTKD): an MLP over the teacher's and
    student's logits predicting one temperature per example,
    T_i = t_start + t_end * sigmoid(mlp([z_t, z_s])_i).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class HintAdapter(nn.Module):
  out_channels: int

  @nn.compact
  def __call__(self, feature):
    if feature.ndim == 4:  # [B, H, W, C] -> [B, H, W, C_teacher]
      return nn.Conv(self.out_channels, (1, 1), name="conv")(feature)
    return nn.Dense(self.out_channels, name="dense")(feature)


class InstanceTemperature(nn.Module):
  hidden: int = 64
  t_start: float = 1.0
  t_end: float = 20.0

  @nn.compact
  def __call__(self, teacher_logits_BxC, student_logits_BxC):
    # The logits are inputs only: the temperature module learns from its own
    # (reversed) gradient, it does not steer the networks through its input.
    x = jax.lax.stop_gradient(
        jnp.concatenate([teacher_logits_BxC, student_logits_BxC], -1))
    h = nn.relu(nn.Dense(self.hidden, name="hidden")(x))
    raw_B = nn.Dense(1, name="out")(h)[:, 0]
    return self.t_start + self.t_end * jax.nn.sigmoid(raw_B)
