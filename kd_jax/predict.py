"""Classify images with a model written by `python -m kd_jax.export`.

  python -m kd_jax.predict --model=student.bin IMAGE [IMAGE ...] [--batch=32]

Prints one line per image: path, class name, probability (tab-separated).
Needs only JAX, numpy and PIL: no training code, Flax, Orbax or TensorFlow
is imported, so the file and this module are all an edge device needs.
Images are converted to RGB and resized (bilinear) to the model's input size
on the host; the model does the rest (normalisation, network, softmax).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from kd_jax import console

if __name__ == "__main__":  # the command: before JAX is imported
  console.quiet_native_logs()

import numpy as np  # noqa: E402

MAGIC = b"KDJAXEXP1\n"  # the file format's first bytes (kd_jax/export.py writes it)


class PredictError(Exception):
  """A bad model file or image: reported as one line."""


def load_model(path: str):
  """(meta, exported) from a kd_jax export file."""
  from jax import export
  if not os.path.isfile(path):
    raise PredictError(f"model file {path!r} does not exist")
  with open(path, "rb") as f:
    blob = f.read()
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


def load_images(paths, size: int) -> np.ndarray:
  """uint8 [N, size, size, 3]."""
  from PIL import Image, UnidentifiedImageError
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


def predict(model_path: str, image_paths, batch: int = 32):
  """[(path, class_name, probability, probabilities[C])] in input order."""
  meta, exported = load_model(model_path)
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
  args = p.parse_args(argv)
  try:
    if args.batch < 1:
      raise PredictError(f"--batch must be >= 1, got {args.batch}")
    for path, name, prob, _ in predict(args.model, args.images, args.batch):
      print(f"{path}\t{name}\t{prob:.4f}")
  except PredictError as e:
    print(f"kd_jax.predict: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  from kd_jax import cpu_runtime
  cpu_runtime.configure()  # before JAX starts a backend
  sys.exit(main())
