"""Classify images with a model written by `python -m kd_jax.export`.

  python -m kd_jax.predict --model=student.bin IMAGE [IMAGE ...] [--batch=32]
  python -m kd_jax.predict --model=student.tflite IMAGE [IMAGE ...] [--threads=1]

Prints one line per image: path, class name, probability (tab-separated).
A StableHLO file (.bin) needs only JAX, numpy and PIL: no training code,
Flax, Orbax or TensorFlow is imported, so the file and this module are all an
edge device needs. A TFLite file (recognised by its flatbuffer identifier,
whatever its name) runs in the TFLite interpreter (`kd_jax.tflite`:
LiteRT's `ai_edge_litert` when installed, else TensorFlow's) on `--threads`
CPU threads (default: all), one image per invoke; its class names and input
size come from the metadata inside the file. Images are converted to RGB and
resized (bilinear) to the model's input size on the host; the model does the
rest (normalisation, network, softmax).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys

from jax import export
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from kd_jax.deploy import tflite_runtime

MAGIC = b"KDJAXEXP1\n"  # the file format's first bytes (kd_jax/export.py writes it)


class PredictError(Exception):
  """A bad model file or image: reported as one line."""


def load_model(path: str, num_threads: int | None = None):
  """(meta, model) from a kd_jax export file; `model.call(uint8 images)`
  gives probabilities. `num_threads`: the TFLite interpreter's (default:
  all CPUs); a StableHLO file runs as JAX's CPU backend does."""
  if not os.path.isfile(path):
    raise PredictError(f"model file {path!r} does not exist")
  with open(path, "rb") as f:
    blob = f.read()
  if tflite_runtime.is_tflite(blob[:8]):
    return load_tflite(path, blob, num_threads)
  if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 8:
    raise PredictError(f"{path!r} is not a kd_jax exported model "
                       "(write one with python -m kd_jax.export)")
  n = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 8], "little")
  start = len(MAGIC) + 8
  try:
    meta = json.loads(blob[start:start + n])
    exported = export.deserialize(bytearray(blob[start + n:]))
  except Exception as e:  # truncated or corrupted file
    raise PredictError(f"{path!r} is damaged ({type(e).__name__}: {e})") from None
  return meta, exported


def load_tflite(path: str, blob: bytes, num_threads: int | None):
  """(meta, tflite_runtime.Model) of a TFLite file written by kd_jax.export."""
  try:
    meta = tflite_runtime.read_metadata(blob)
  except (struct.error, ValueError, UnicodeDecodeError) as e:  # cut short
    raise PredictError(f"{path!r} is damaged ({type(e).__name__}: {e})") from None
  if meta is None or "class_names" not in meta:
    raise PredictError(f"{path!r} is a TFLite model without kd_jax metadata "
                       "(write one with python -m kd_jax.export --format=tflite)")
  try:
    return meta, tflite_runtime.Model(blob, num_threads)
  except (RuntimeError, ValueError) as e:
    raise PredictError(f"{path!r} is damaged ({type(e).__name__}: "
                       f"{str(e).strip().splitlines()[-1]})") from None


def to_model_input(images_NxHxWxC, size: int) -> np.ndarray:
  """uint8 [N, size, size, 3] from uint8 [N, H, W, 1 or 3] images: greyscale
  repeated to RGB, other sizes resized (bilinear), as image files are."""
  images = np.asarray(images_NxHxWxC, np.uint8)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.shape[1:3] == (size, size):
    return images
  return np.stack([np.asarray(Image.fromarray(im).resize(
      (size, size), Image.BILINEAR)) for im in images])


def load_images(paths, size: int) -> np.ndarray:
  """uint8 [N, size, size, 3]."""
  out = np.zeros((len(paths), size, size, 3), np.uint8)
  for i, p in enumerate(paths):
    try:
      with Image.open(p) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
          im = im.resize((size, size), Image.BILINEAR)
        out[i] = np.asarray(im)
    except FileNotFoundError:
      raise PredictError(f"image {p!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
      raise PredictError(f"cannot read image {p!r} ({type(e).__name__}); "
                         "allowed: files PIL can open (PNG, JPEG, BMP, GIF, ...)") from None
  return out


def predict(model_path: str, image_paths, batch: int = 32,
            num_threads: int | None = None):
  """[(path, class_name, probability, probabilities[C])] in input order."""
  meta, exported = load_model(model_path, num_threads)
  images = load_images(image_paths, meta["image_size"])
  probs = np.concatenate([np.asarray(exported.call(images[i:i + batch]))
                          for i in range(0, len(images), batch)] or
                         [np.zeros((0, len(meta["class_names"])), np.float32)])
  names = meta["class_names"]
  return [(p, names[int(np.argmax(pr))], float(np.max(pr)), pr)
          for p, pr in zip(image_paths, probs)]


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m kd_jax.predict",
                              description="Classify images with an exported kd_jax model.")
  p.add_argument("--model", required=True, help="file written by kd_jax.export")
  p.add_argument("images", nargs="+")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--threads", type=int, default=0,
                 help="TFLite models: interpreter threads (0: all CPUs)")
  args = p.parse_args(argv)
  try:
    if args.batch < 1:
      raise PredictError(f"--batch must be >= 1, got {args.batch}")
    if args.threads < 0:
      raise PredictError(f"--threads must be >= 0 (0: all CPUs), got {args.threads}")
    for path, name, prob, _ in predict(args.model, args.images, args.batch,
                                       args.threads or None):
      print(f"{path}\t{name}\t{prob:.4f}")
  except PredictError as e:
    print(f"kd_jax.predict: error: {e}", file=sys.stderr)
    return 2
  return 0

