"""Distillation on compressed factors of a feature map: FT's paraphrased
factors and KDSVD's leading singular vectors. Pure, jit-able functions of
arrays and the small modules FT trains; maps are NHWC, losses scalars,
beta applied by the caller.

  * FT: a paraphraser (a convolutional auto-encoder) is first trained to
    reconstruct the teacher's last map (methods.py: 'ft_init'); the student
    stage then matches a translator's factor of the student's map to the
    frozen paraphraser's factor of the teacher's.
  * KDSVD: the leading right singular vectors of each map (its principal
    directions over channels), weighted by the teacher's singular values;
    the student matches the RBF kernel between the vectors of consecutive
    layers.

References:
  * Kim, Park & Kwak 2018, "Paraphrasing complex network: network
    compression via factor transfer" (NeurIPS; FT).
  * Lee, Kim & Song 2018, "Self-supervised knowledge distillation using
    singular value decomposition" (ECCV; KDSVD).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from kd_jax.distill.feature_losses import l2_normalize
from kd_jax.distill.feature_losses import pool_to_match
from kd_jax.models.layers import batch_norm
from kd_jax.models.layers import torch_bias_init
from kd_jax.models.layers import torch_kernel_init

# ---------------------------------------------------------------- FT ------

# The paraphraser's and translator's LeakyReLU slope (the authors' 0.1).
LEAKY_SLOPE = 0.1


def _conv3(features, fan_in, name, transpose=False):
  """A 3x3 convolution with bias, stride 1, padding 1 (PyTorch's default
  initialisation); `transpose`: the transposed one (same output size)."""
  cls = nn.ConvTranspose if transpose else nn.Conv
  return cls(features, (3, 3), padding=((1, 1), (1, 1)),
             kernel_init=torch_kernel_init,
             bias_init=torch_bias_init(9 * fan_in), name=name)


class Paraphraser(nn.Module):
  """FT's paraphraser of a `[B, H, W, C]` teacher map (RepDistiller's,
  without BN as there): encoder 3 x (3x3 conv -> LeakyReLU) to
  int(C * rate) channels, decoder 3 x (3x3 transposed conv -> LeakyReLU)
  back to C. Returns (factor, reconstruction); with decode=False the
  factor alone (the student stage's use: the decoder is not run)."""
  channels: int
  rate: float = 0.5

  @nn.compact
  def __call__(self, feat_BxHxWxC, *, decode: bool = True):
    c, k = self.channels, int(self.channels * self.rate)
    x = feat_BxHxWxC
    for i, (out, fan_in) in enumerate(((c, c), (k, c), (k, k))):
      x = nn.leaky_relu(_conv3(out, fan_in, f"enc{i}")(x), LEAKY_SLOPE)
    if not decode:
      return x
    factor = x
    for i, (out, fan_in) in enumerate(((k, k), (c, k), (c, c))):
      x = nn.leaky_relu(_conv3(out, fan_in, f"dec{i}", transpose=True)(x),
                        LEAKY_SLOPE)
    return factor, x


class Translator(nn.Module):
  """FT's translator of the student's map: 3 x (3x3 conv -> BN ->
  LeakyReLU), the first keeping the student's channels, then
  `out_channels` (the paraphraser's factor channels)."""
  out_channels: int

  @nn.compact
  def __call__(self, feat_BxHxWxC, *, train: bool):
    x, c = feat_BxHxWxC, feat_BxHxWxC.shape[-1]
    for i, (out, fan_in) in enumerate(((c, c), (self.out_channels, c),
                                       (self.out_channels,
                                        self.out_channels))):
      x = _conv3(out, fan_in, f"conv{i}")(x)
      x = nn.leaky_relu(batch_norm(train, f"bn{i}")(x), LEAKY_SLOPE)
    return x


def paraphraser_loss(reconstruction_BxHxWxC, feat_BxHxWxC):
  """The paraphraser's training loss: mean squared reconstruction error
  of the teacher's map (RepDistiller's nn.MSELoss)."""
  return jnp.mean(jnp.square(reconstruction_BxHxWxC - feat_BxHxWxC))


def ft_factor(factor_BxHxWxC):
  """A factor as RepDistiller compares it: Q = mean_c f_c^2 per position,
  flattened and L2-normalised per example -> `[B, H*W]`."""
  q = jnp.mean(jnp.square(factor_BxHxWxC), axis=-1)
  return l2_normalize(q.reshape(q.shape[0], -1))


def ft_loss(student_factor, teacher_factor):
  """Factor transfer's student loss in RepDistiller's form (p1 = 2, p2 =
  1), the code of the CRD benchmark's FT numbers:

    L = mean_{b, k} |Q_s - Q_t|_{b,k}

  with Q = `ft_factor` of the translator's (student) and the paraphraser's
  (teacher) factor, the larger map average-pooled to the smaller's size.
  The paper's L_FT = || F_t / ||F_t||_2 - F_s / ||F_s||_2 ||_1 compares
  the whole vectorised factors; RepDistiller first reduces each factor to
  its spatial map of channel-mean squares, as attention transfer does.
  RepDistiller's beta: 200.
  """
  s, t = pool_to_match(student_factor, teacher_factor)
  return jnp.mean(jnp.abs(ft_factor(s) - ft_factor(t)))


# ---------------------------------------------------------------- KDSVD ---

@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def top_eigh(gram_BxCxC, n):
  """(eigenvalues `[B, n]`, eigenvectors `[B, C, n]`) of the n largest
  eigenvalues of symmetric matrices, largest first. Its gradient sets the
  terms of (nearly) equal eigenvalues to 0 instead of inf, as the KDSVD
  authors' SVD gradient removes its non-finite entries; only the kept
  vectors enter it, so the repeated zero eigenvalues of dead channels do
  not make it NaN (JAX's own eigh and SVD gradients are NaN there)."""
  return _top_eigh_fwd(gram_BxCxC, n)[0]


def _top_eigh_fwd(gram_BxCxC, n):
  w, v = jnp.linalg.eigh(gram_BxCxC)
  w, v = w[..., ::-1], v[..., ::-1]
  return (w[..., :n], v[..., :n]), (w, v)


def _top_eigh_bwd(n, residuals, cotangents):
  """V (diag(dw) + F o (V^T dV)) V^T, symmetrised, with F_ij = 1 / (w_j -
  w_i) off the diagonal and 0 where the gap is below 1e-6 max |w|; only
  the n kept columns j of dV and dw are nonzero."""
  w, v = residuals
  dw, dv = cotangents
  gap = w[..., None, :n] - w[..., :, None]  # [B, C, n]: w_j - w_i
  tol = 1e-6 * jnp.max(jnp.abs(w), axis=-1, keepdims=True)[..., None]
  f = jnp.where(jnp.abs(gap) > tol, 1.0 / jnp.where(gap == 0, 1.0, gap), 0.0)
  inner = f * jnp.einsum("bci,bcj->bij", v, dv)  # [B, C, n]
  grad = jnp.einsum("bik,bkj,blj->bil", v, inner, v[..., :n])
  grad = grad + jnp.einsum("bij,bj,blj->bil", v[..., :n], dw, v[..., :n])
  return (0.5 * (grad + jnp.swapaxes(grad, -1, -2)),)


top_eigh.defvjp(_top_eigh_fwd, _top_eigh_bwd)


def right_singular(feats, n):
  """[(sigma `[B, n]`, V `[B, C, n]`)] of each `[B, H, W, C]` map: the n
  leading singular values and right singular vectors of each example's
  `[H*W, C]` map (the authors' layout), from the eigenvectors of its Gram
  matrix. All maps go through one `top_eigh` call, their Gram matrices
  zero-padded to the most channels (which adds zero eigenvalues only): on
  the CPU, concurrent LAPACK eigh calls in one XLA program can stall it.
  Each vector's sign makes the sum of its entries >= 0: an SVD's sign is
  arbitrary, and the loss depends on it."""
  grams = []
  for f in feats:
    x = f.reshape(f.shape[0], -1, f.shape[-1])
    grams.append(jnp.einsum("bpi,bpj->bij", x, x))
  c_max = max(g.shape[-1] for g in grams)
  lam, v = top_eigh(jnp.concatenate([jnp.pad(g, (
      (0, 0), (0, c_max - g.shape[-1]), (0, c_max - g.shape[-1])))
                                     for g in grams]), n)
  out, start = [], 0
  for g in grams:
    b, c = g.shape[0], g.shape[-1]
    vg = v[start:start + b, :c]
    vg = vg * jnp.where(jnp.sum(vg, axis=1, keepdims=True) < 0, -1.0, 1.0)
    out.append((jnp.sqrt(jnp.maximum(lam[start:start + b], 0.0)), vg))
    start += b
  return out


def align_singular(v_s_BxCxM, v_t_BxCxK):
  """Each teacher vector's student partner: the student vector of the
  largest |cosine| with it, times that cosine's sign -> `[B, C, K]`
  (the authors' `Align_rsv`); the choice is not differentiated."""
  cos = jnp.einsum("bcm,bck->bmk", v_s_BxCxM, v_t_BxCxK)
  best = jnp.max(jnp.abs(cos), axis=1, keepdims=True)
  pick = jax.lax.stop_gradient(jnp.where(jnp.abs(cos) == best,
                                         jnp.sign(cos), 0.0))
  return jnp.einsum("bcm,bmk->bck", v_s_BxCxM, pick)


def _rbf(v_BxCxK, prev_BxDxK):
  """exp(-(v_ck - p_dk)^2 / 8) between two layers' vectors -> `[B, C, D, K]`."""
  return jnp.exp(-jnp.square(v_BxCxK[:, :, None] - prev_BxDxK[:, None]) / 8.0)


def kdsvd_loss(student_feats, teacher_feats, *, k=1):
  """KDSVD (Lee et al. 2018), over layers shallow to deep: per layer, the
  teacher's k and the student's k + 3 leading right singular vectors
  (`right_singular`), the student's aligned to the teacher's
  (`align_singular`), both scaled by the teacher's normalised singular
  values; then, for each pair of consecutive layers l - 1, l,

    L += sum_{b,c,d,j} (rbf_s(l, l-1) - rbf_t(l, l-1))^2 / B

  (`_rbf`, non-finite terms dropped as the authors'). The authors' code
  (TensorFlow, NHWC) takes the vectors over channels of the [H*W, C] map,
  so each student layer needs the teacher layer's channels; mdistiller's
  port reshapes NCHW maps to [C*H, W] (vectors over the width), which this
  does not follow. mdistiller's beta: 1, k = 1, on the stage outputs.
  """
  n = len(student_feats)
  svd = right_singular(list(teacher_feats) + list(student_feats), k + 3)
  total, prev = 0.0, None
  for (sigma_t, v_t), (_, v_s) in zip(svd[:n], svd[n:], strict=True):
    sigma_t, v_t = l2_normalize(sigma_t[:, :k]), v_t[..., :k]
    v_s = align_singular(v_s, v_t)
    v_t, v_s = v_t * sigma_t[:, None], v_s * sigma_t[:, None]
    if prev is not None:
      diff = jnp.square(_rbf(v_s, prev[0]) - jax.lax.stop_gradient(
          _rbf(v_t, prev[1])))
      total = total + jnp.sum(jnp.where(jnp.isfinite(diff), diff, 0.0))
    prev = (v_s, v_t)
  return total / student_feats[0].shape[0]
