"""Image geometry on the host: one decoded image (any size) to the fixed
size a split is stored at, as torchvision's reference transforms do it.

  'resize'              squash to size x size (bilinear), the aspect ratio
                        is not kept (kd_jax's folder default);
  'resize_center_crop'  torchvision's evaluation transform: the shorter side
                        resized to `resize_size` (`Resize(256)`), then the
                        centre `size` x `size` crop (`CenterCrop(224)`);
  'center_square'       the shorter side resized to `size`, then the centre
                        square: a training split stored for an on-device
                        random-resized crop.

Resizing is Pillow's bilinear filter, the one torchvision's `Resize` uses on
PIL images, so the evaluation crop equals torchvision's on the same image.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

HOST_MODES = ("resize", "resize_center_crop", "center_square")
# torchvision's ImageNet evaluation: Resize(256) then CenterCrop(224).
CROP_FRACTION = 224 / 256


def default_resize_size(size: int) -> int:
  """The shorter side before the centre crop: 256 for 224, in proportion."""
  return int(round(size / CROP_FRACTION))


def _to_pil(image_HxWxC: np.ndarray) -> Image.Image:
  if image_HxWxC.ndim == 3 and image_HxWxC.shape[-1] == 1:
    return Image.fromarray(image_HxWxC[..., 0])
  return Image.fromarray(image_HxWxC)


def _from_pil(im: Image.Image, channels: int) -> np.ndarray:
  a = np.asarray(im, np.uint8)
  return a[..., None] if channels == 1 and a.ndim == 2 else a


def shorter_side_size(h: int, w: int, shorter: int) -> tuple[int, int]:
  """(h, w) with the shorter side `shorter`, the longer in proportion,
  truncated as torchvision's `Resize(int)` does."""
  if h <= w:
    return shorter, int(shorter * w / h)
  return int(shorter * h / w), shorter


def center_box(h: int, w: int, size: int) -> tuple[int, int]:
  """(top, left) of torchvision's `CenterCrop(size)` in an h x w image."""
  return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def fit(image_HxWxC: np.ndarray, size: int, mode: str = "resize",
        resize_size: int = 0) -> np.ndarray:
  """`image_HxWxC` (uint8, C = 1 or 3) as uint8 [size, size, C] by `mode`
  (HOST_MODES); `resize_size` (resize_center_crop): the shorter side before
  the crop, 0 = `default_resize_size(size)`."""
  if mode not in HOST_MODES:
    raise ValueError(f"host transform {mode!r}; allowed: {', '.join(HOST_MODES)}")
  channels = image_HxWxC.shape[-1]
  h, w = image_HxWxC.shape[:2]
  im = _to_pil(image_HxWxC)
  if mode == "resize":
    if (h, w) != (size, size):
      im = im.resize((size, size), Image.BILINEAR)
    return _from_pil(im, channels)
  shorter = size if mode == "center_square" else (
      resize_size or default_resize_size(size))
  nh, nw = shorter_side_size(h, w, shorter)
  if (nh, nw) != (h, w):
    im = im.resize((nw, nh), Image.BILINEAR)
  top, left = center_box(nh, nw, size)
  im = im.crop((left, top, left + size, top + size))
  return _from_pil(im, channels)


def storage(role: str, d) -> tuple[str, int, int]:
  """(mode, size, resize_size) of `fit` for a split of `role` ('train' or
  'eval') under config.dataset `d`: the geometry a decoded image file is
  stored at before the on-device preprocessing."""
  if role == "train":
    rrc = d.train_transform == "random_resized_crop"
    if rrc:
      return ("center_square",
              int(d.train_source_size) or default_resize_size(d.image_size), 0)
    return "resize", int(d.image_size), 0
  if d.eval_transform == "resize_center_crop":
    return "resize_center_crop", int(d.image_size), int(d.eval_resize_size)
  return "resize", int(d.image_size), 0


def fit_split(split, d):
  """`split` (a datasets.Split) with its in-memory images in the evaluation
  geometry of config.dataset `d` (`storage('eval', d)`), each image through
  `fit` once, when that geometry is torchvision's centre crop; the plain
  resize stays on the device as before.

  On the host rather than in the eval step: Pillow's bilinear resize is
  what torchvision's `Resize` runs on PIL images, so the evaluation images
  equal the reference's exactly; it runs once per run instead of at every
  evaluation; and the evaluation step and the teacher cache (which hashes
  these pixels) then read the same fixed-size arrays."""
  mode, size, resize_size = storage("eval", d)
  if split.images is None or mode == "resize":
    return split
  images = split.images
  fitted = np.empty((len(images), size, size, images.shape[-1]), np.uint8)
  for i, image in enumerate(images):
    fitted[i] = fit(image, size, mode, resize_size)
  return dataclasses.replace(split, images=fitted)
