"""Mixing augmentations of a training batch, drawn on the device from a key:
mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization") and
CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong
Classifiers with Localizable Features").

One draw per batch (`draw`): a ratio lam, a partner for every example and a
weight map w `[H, W]` of the example's own image: lam everywhere for mixup;
for CutMix 0 inside one box of area about (1 - lam) H W and 1 elsewhere, lam
then set to the kept area (the box is clipped at the border). The mixed
image of example i is w * x_i + (1 - w) * x_partner(i) (`mix_images`), its
soft target lam * onehot(y_i) + (1 - lam) * onehot(y_partner(i))
(`soft_labels`). With both alphas set, each batch is mixup or CutMix with
probability 1/2.

Ratios (`MixSpec.ratio`):
  'beta'    lam ~ Beta(alpha, alpha), as both papers;
  'folded'  lam = max(u, 1 - u), u ~ Beta(alpha, alpha): big_vision's mixup
            (big_vision/utils.py `get_mixup`), which the function-matching
            configs use with alpha = 1 (`config.mixup = dict(p=1.0)` in
            configs/proj/distill/bigsweep_flowers_pet.py, bit_i1k.py): lam
            uniform on [0.5, 1], so each image stays the larger part of its
            own view.
Partners (`MixSpec.partner`):
  'permutation'  a random permutation of the batch (Zhang et al.'s code);
  'roll'         example i - 1, cyclically (big_vision: `jnp.roll(x, 1,
                 axis=0)`; the batch order is already random).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

@dataclasses.dataclass(frozen=True)
class MixSpec:
  """The static mixing choices (config.dataset.mixup_alpha, cutmix_alpha,
  mix_ratio, mix_partner); alpha 0 turns a kind off."""
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  ratio: str = "beta"
  partner: str = "permutation"

  @property
  def active(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


class Mix(NamedTuple):
  """One batch's draw."""
  weight_HxW: jax.Array  # each pixel's weight of the example's own image
  lam: jax.Array  # the own label's weight (the mean of weight_HxW)
  partner_B: jax.Array  # int32: the example each one is mixed with


def ratio(key, alpha: float, kind: str):
  """lam of one batch: Beta(alpha, alpha), or its 'folded' max(u, 1 - u)."""
  lam = jax.random.beta(key, alpha, alpha)
  return jnp.maximum(lam, 1.0 - lam) if kind == "folded" else lam


def partners(key, batch: int, kind: str):
  """`[batch]` int32: the example each one is mixed with."""
  if kind == "roll":
    return (jnp.arange(batch, dtype=jnp.int32) - 1) % batch
  return jax.random.permutation(key, batch).astype(jnp.int32)


def cutmix_box(key, lam, height: int, width: int):
  """(weight map `[H, W]`: 0 in the box, 1 elsewhere; the kept area).
  The box has sides floor(H sqrt(1 - lam)) x floor(W sqrt(1 - lam)), a
  uniform centre, and is clipped at the border (Yun et al.'s code)."""
  ky, kx = jax.random.split(key)
  cut = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * cut).astype(jnp.int32) // 2
  half_w = jnp.floor(width * cut).astype(jnp.int32) // 2
  cy = jax.random.randint(ky, (), 0, height)
  cx = jax.random.randint(kx, (), 0, width)
  y0, y1 = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
  x0, x1 = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  kept = 1.0 - ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (height * width)
  return jnp.where(inside, 0.0, 1.0).astype(jnp.float32), kept


def draw(key, spec: MixSpec, batch: int, height: int, width: int) -> Mix:
  """The mixing of one batch of `batch` images of `height` x `width`."""
  k_ratio, k_partner, k_box, k_switch = jax.random.split(key, 4)
  options = []  # (weight map, lam) of each kind that is on
  if spec.mixup_alpha > 0:
    lam = ratio(k_ratio, spec.mixup_alpha, spec.ratio)
    options.append((jnp.full((height, width), lam, jnp.float32), lam))
  if spec.cutmix_alpha > 0:
    lam = ratio(jax.random.fold_in(k_ratio, 1), spec.cutmix_alpha, spec.ratio)
    options.append(cutmix_box(k_box, lam, height, width))
  weight, lam = options[0]
  if len(options) == 2:
    use_cutmix = jax.random.bernoulli(k_switch)
    weight, lam = jax.tree.map(lambda a, b: jnp.where(use_cutmix, b, a),
                               options[0], options[1])
  return Mix(weight, jnp.asarray(lam, jnp.float32),
             partners(k_partner, batch, spec.partner))


def mix_images(x_BxHxWxC, mix: Mix):
  """w * x_i + (1 - w) * x_partner(i), per pixel."""
  w = mix.weight_HxW[None, :, :, None].astype(x_BxHxWxC.dtype)
  return w * x_BxHxWxC + (1.0 - w) * x_BxHxWxC[mix.partner_B]


def soft_labels(labels_B, num_classes: int, mix: Mix):
  """`[B, C]`: lam * onehot(y_i) + (1 - lam) * onehot(y_partner(i))."""
  own = jax.nn.one_hot(labels_B, num_classes)
  return mix.lam * own + (1.0 - mix.lam) * own[mix.partner_B]


def mixed_loss(loss_fn, labels_B, mix: Mix | None):
  """lam * loss_fn(y) + (1 - lam) * loss_fn(y_partner): a loss of integer
  labels under mixed targets (the mixup criterion; for a cross-entropy
  exactly the cross-entropy of `soft_labels`, since it is linear in the
  target). `mix` None: loss_fn(labels_B)."""
  own = loss_fn(labels_B)
  if mix is None:
    return own
  return mix.lam * own + (1.0 - mix.lam) * loss_fn(labels_B[mix.partner_B])
