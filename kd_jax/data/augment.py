"""Crops of a training batch on the device, inside the jitted step.

  pad_crop             reflect-pad by `padding`, then a random crop of the
                       original size (the CIFAR recipe);
  random_resized_crop  torchvision's `RandomResizedCrop`: a box drawn by the
                       rule of its `get_params`, resized to the output size
                       with the antialiased bilinear weights its
                       `F.resized_crop(..., antialias=True)` uses on tensors.

The box rule, per example: up to ATTEMPTS candidates of area H * W * U(scale)
and aspect ratio exp(U(log ratio)), width round(sqrt(area * ratio)), height
round(sqrt(area / ratio)); the first that fits in the image is kept, at a
uniform integer position; if none fits, the central crop with the image's
aspect ratio clamped to `ratio`. All attempts of all examples are drawn at
once (no loop), and every draw comes from the step's key, so a view is a
function of (data seed, step) only.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ATTEMPTS = 10  # torchvision's tries before its fallback
DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3 / 4, 4 / 3)


def pad_crop(rng, x_BxHxWxC, padding: int):
  """Reflect-pad by `padding` pixels, then a random crop back to H x W."""
  b, h, w, c = x_BxHxWxC.shape
  p = padding
  padded = jnp.pad(x_BxHxWxC, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
  offsets = jax.random.randint(rng, (b, 2), 0, 2 * p + 1)
  return jax.vmap(lambda im, o: jax.lax.dynamic_slice(
      im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)


def fallback_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
  """(top, left, h, w) of torchvision's fallback: the central crop with the
  image's aspect ratio clamped to [min(ratio), max(ratio)]. The image's
  shape is static, so the fallback is a constant of the traced step."""
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def sample_boxes(rng, batch: int, height: int, width: int,
                 scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO):
  """int32 `[batch, 4]`: (top, left, h, w) of each example's crop in a
  height x width image, by torchvision's `RandomResizedCrop.get_params`."""
  area_key, ratio_key, top_key, left_key = jax.random.split(rng, 4)
  shape = (batch, ATTEMPTS)
  area = height * width * jax.random.uniform(
      area_key, shape, minval=scale[0], maxval=scale[1])
  aspect = jnp.exp(jax.random.uniform(
      ratio_key, shape, minval=math.log(ratio[0]), maxval=math.log(ratio[1])))
  # jnp.round rounds half to even, as Python's round in torchvision does.
  w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(fits, axis=1)[:, None]  # the first attempt that fits
  found = jnp.any(fits, axis=1)
  top0, left0, h0, w0 = fallback_box(height, width, ratio)
  h = jnp.where(found, jnp.take_along_axis(h, first, 1)[:, 0], h0)
  w = jnp.where(found, jnp.take_along_axis(w, first, 1)[:, 0], w0)
  top = jnp.where(found, jax.random.randint(
      top_key, (batch,), 0, height - h + 1), top0)
  left = jnp.where(found, jax.random.randint(
      left_key, (batch,), 0, width - w + 1), left0)
  return jnp.stack([top, left, h, w], axis=1).astype(jnp.int32)


def resize_weights(start, length, in_size: int, out_size: int):
  """float32 `[out_size, in_size]`: row i holds the weights of output pixel
  i over the input pixels start .. start + length - 1 (the crop), the
  triangle filter widened by the downscaling factor and normalised, as
  torch's antialiased bilinear interpolation (and Pillow's) computes them.
  Pixels outside the crop weigh nothing: the crop is resized, not the
  image."""
  factor = length.astype(jnp.float32) / out_size
  support = jnp.maximum(factor, 1.0)
  centre = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * factor
  j = jnp.arange(in_size) - start
  dist = (j[None, :].astype(jnp.float32) + 0.5 - centre[:, None]) / support
  inside = (j >= 0) & (j < length)
  weight = jnp.where(inside, jnp.maximum(0.0, 1.0 - jnp.abs(dist)), 0.0)
  return weight / jnp.sum(weight, axis=1, keepdims=True)


def crop_and_resize(x_BxHxWxC, boxes_Bx4, size: int):
  """float32 `[B, size, size, C]`: each example's box (top, left, h, w)
  resized to size x size; two batched matrix products, so every example
  may have a box of its own shape inside one compiled step. (A resize of
  the whole image, `jax.image.scale_and_translate`, would blend in the
  pixels just outside the box, which torchvision crops away first.)"""
  _, height, width, _ = x_BxHxWxC.shape
  weights = lambda start, length, n: jax.vmap(
      lambda s, l: resize_weights(s, l, n, size))(start, length)
  rows_BxSxH = weights(boxes_Bx4[:, 0], boxes_Bx4[:, 2], height)
  cols_BxSxW = weights(boxes_Bx4[:, 1], boxes_Bx4[:, 3], width)
  # HIGHEST: TensorFloat-32 products would blur the pixels by ~1e-3.
  hi = jax.lax.Precision.HIGHEST
  y = jnp.einsum("bih,bhwc->biwc", rows_BxSxH, x_BxHxWxC, precision=hi)
  return jnp.einsum("bjw,biwc->bijc", cols_BxSxW, y, precision=hi)


def random_resized_crop(rng, x_BxHxWxC, size: int, scale=DEFAULT_SCALE,
                        ratio=DEFAULT_RATIO):
  """torchvision's `RandomResizedCrop(size, scale, ratio)` of every example
  of the float batch, each with a box of its own."""
  b, h, w, _ = x_BxHxWxC.shape
  return crop_and_resize(x_BxHxWxC, sample_boxes(rng, b, h, w, scale, ratio),
                         size)
