"""Classify images and videos with a model written by `python -m kd_jax.export`.

  python -m kd_jax.predict --model=student.bin IMAGE|VIDEO [...] [--batch=32]
  python -m kd_jax.predict --model=student.tflite IMAGE|VIDEO [...] [--threads=1]
  python -m kd_jax.predict --model=student.bin echo.avi --every=2 --per_frame

Prints one line per image: path, class name, probability (tab-separated).
A video (by extension, any case: .avi, .mp4, .mov, .mkv, .webm) is cut into
frames as `python -m kd_jax.prepare frames --every=K --size=S` cuts it
(every K-th frame from the first, S the model's input size, grey videos
as grey) and every kept frame is classified, in batches. Its line starts
like an image's (path, class, probability: the class with the highest mean
frame probability) and adds `frames=N`, `vote=CLASS` when the majority
vote of the frames' classes differs (ties go to the higher mean), and
`probabilities=NAME:P,...` (the means). `--per_frame` adds one line per
kept frame after it: `path#FRAME` (the frame's index in the video, as in
prepare's manifest), class, probability, probabilities. The exported model
does not record the run's frame step, so `--every` says it (default 1, as
prepare's). A video FFmpeg cannot open, or in which no frame decodes, is an
error; one cut short is classified on the frames that decode, with a
warning.

A StableHLO file (.bin) needs only JAX, numpy and PIL (and PyAV for
videos): no training code, Flax, Orbax or TensorFlow is imported, so the
file and this module are all an edge device needs. A TFLite file
(recognised by its flatbuffer identifier, whatever its name) runs in the
TFLite interpreter (`kd_jax.tflite`: LiteRT's `ai_edge_litert` when
installed, else TensorFlow's) on `--threads` CPU threads (default: all),
one image per invoke; its class names and input size come from the
metadata inside the file. Images are converted to RGB and resized
(bilinear) to the model's input size on the host; the model does the rest
(normalisation, network, softmax). Bad input is one line `kd_jax: error:
...` on stderr and exit status 2.
"""
from __future__ import annotations

import dataclasses
import json
import os
import struct
import sys

from jax import export
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from kd_jax.data import prepare
from kd_jax.deploy import tflite_runtime

MAGIC = b"KDJAXEXP1\n"  # the file format's first bytes (kd_jax/export.py writes it)
# The videos `prepare frames` reads; any other file is read as an image.
VIDEO_EXTENSIONS = prepare.VIDEO_EXTENSIONS
# `prepare frames --every`'s default: the step of a run whose command is not
# known (the exported model does not record it).
DEFAULT_EVERY = 1


class PredictError(Exception):
  """A bad model file, image or video: reported as one line."""


@dataclasses.dataclass
class Result:
  """One input's classification; `frames` is None for an image."""
  path: str
  class_name: str
  probability: float
  probabilities: np.ndarray  # [C]; a video's: the mean over its frames
  frames: list[int] | None = None  # a video's kept frame indices
  frame_probabilities: np.ndarray | None = None  # [F, C]
  vote: str | None = None  # the majority class of a video's frames
  warning: str | None = None  # a video cut short


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
                         "allowed: files PIL can open (PNG, JPEG, BMP, GIF, ...) "
                         f"and videos ({', '.join(VIDEO_EXTENSIONS)})") from None
  return out


def is_video(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def probe_video(path: str):
  """Refuses a missing video, one FFmpeg cannot open or one without a video
  stream (reads the header only, so every input is checked before the first
  line is printed)."""
  if not os.path.isfile(path):
    raise PredictError(f"video {path!r} does not exist")
  problem = prepare.video_problem(path, repr(path))
  if problem:
    raise PredictError(problem)


def read_video(path: str, size: int, every: int = DEFAULT_EVERY):
  """(kept frame indices, uint8 [F, size, size, 3], warning or None): the
  frames `prepare frames --every=every --size=size` writes for the video,
  decoded by prepare's own function so a model sees what it trained on."""
  import av
  try:
    kept, _, (decoded, declared) = prepare.decode(path, every, None, size)
  except (av.FFmpegError, OSError, ValueError) as e:
    raise PredictError(f"cannot decode video {path!r} ({type(e).__name__}: "
                       f"{str(e).strip()})") from None
  if not kept:
    raise PredictError(f"cannot decode video {path!r}: no frames")
  # A grey video's frames come as H x W (prepare writes them as grey PNGs).
  frames = to_model_input(np.stack([
      pixels if pixels.ndim == 3 else pixels[..., None]
      for _, pixels in kept]), size)
  warning = (f"warning: video {path!r} decoded to {decoded} of the "
             f"{declared} frames its header declares (truncated?); "
             f"classified {len(kept)}" if declared and decoded < declared
             else None)
  return [i for i, _ in kept], frames, warning


def probabilities(model, images_NxSxSx3, batch: int, num_classes: int):
  """float [N, C]: the model on the images, `batch` at a time."""
  return np.concatenate(
      [np.asarray(model.call(images_NxSxSx3[i:i + batch]))
       for i in range(0, len(images_NxSxSx3), batch)] or
      [np.zeros((0, num_classes), np.float32)])


def predict_video(meta, model, path: str, batch: int = 32,
                  every: int = DEFAULT_EVERY) -> Result:
  """The video's Result: its class by the mean of its frames'
  probabilities, the majority vote of their classes, the frames'."""
  names = meta["class_names"]
  frames, images, warning = read_video(path, meta["image_size"], every)
  frame_probs = probabilities(model, images, batch, len(names))
  mean = frame_probs.mean(axis=0)
  counts = np.bincount(frame_probs.argmax(axis=-1), minlength=len(names))
  # A tie goes to the tied class with the higher mean probability, so a
  # vote differs from the mean's class only when the frames say so.
  vote = int(np.argmax(np.where(counts == counts.max(), mean, -1.0)))
  k = int(np.argmax(mean))
  return Result(path, names[k], float(mean[k]), mean, frames, frame_probs,
                names[vote], warning)


def classify(meta, model, paths, batch: int = 32, every: int = DEFAULT_EVERY):
  """Yields a Result per path, in order. Every image is read and every
  video's header checked before the first result, so a missing or
  unreadable file stops the run before any output; videos are decoded one
  at a time, as they come (all their frames at once could fill the
  memory), so one whose frames do not decode stops it at its turn."""
  names = meta["class_names"]
  for p in paths:
    if is_video(p):
      probe_video(p)
  image_probs = iter(probabilities(
      model, load_images([p for p in paths if not is_video(p)],
                         meta["image_size"]), batch, len(names)))
  for p in paths:
    if is_video(p):
      yield predict_video(meta, model, p, batch, every)
    else:
      probs = next(image_probs)
      k = int(np.argmax(probs))
      yield Result(p, names[k], float(probs[k]), probs)


def predict(model_path: str, paths, batch: int = 32,
            num_threads: int | None = None, every: int = DEFAULT_EVERY):
  """[(path, class_name, probability, probabilities[C])] in input order; a
  video's are its mean over frames (`classify` has the frames)."""
  meta, model = load_model(model_path, num_threads)
  return [(r.path, r.class_name, r.probability, r.probabilities)
          for r in classify(meta, model, paths, batch, every)]


def _probabilities_field(names, probs) -> str:
  return "probabilities=" + ",".join(f"{n}:{p:.4f}"
                                      for n, p in zip(names, probs))


def result_lines(result: Result, names, per_frame: bool = False):
  """The printed lines: tab-separated, path, class and probability first
  for an image, a video and a frame alike."""
  r = result
  if r.frames is None:
    return [f"{r.path}\t{r.class_name}\t{r.probability:.4f}"]
  fields = [r.path, r.class_name, f"{r.probability:.4f}",
            f"frames={len(r.frames)}"]
  if r.vote != r.class_name:
    fields.append(f"vote={r.vote}")
  lines = ["\t".join(fields + [_probabilities_field(names, r.probabilities)])]
  if per_frame:
    for i, probs in zip(r.frames, r.frame_probabilities):
      k = int(np.argmax(probs))
      lines.append(f"{r.path}#{i}\t{names[k]}\t{probs[k]:.4f}\t"
                   + _probabilities_field(names, probs))
  return lines


def build_parser():
  p = prepare.Parser(prog="python -m kd_jax.predict",
                     description="Classify images and videos with an "
                     "exported kd_jax model.")
  p.add_argument("--model", required=True, help="file written by kd_jax.export")
  p.add_argument("images", nargs="+", metavar="IMAGE_OR_VIDEO",
                 help="image files (PNG, JPEG, ...) and videos (by extension, "
                 f"any case: {', '.join(VIDEO_EXTENSIONS)})")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--threads", type=int, default=0,
                 help="TFLite models: interpreter threads (0: all CPUs)")
  p.add_argument("--every", type=int, default=DEFAULT_EVERY, metavar="K",
                 help="videos: classify every K-th frame, from the first, as "
                 "`python -m kd_jax.prepare frames --every=K` keeps them; the "
                 "exported model does not record the run's step, so give the "
                 f"one its frames were cut with (default {DEFAULT_EVERY}, as "
                 "prepare's)")
  p.add_argument("--per_frame", action="store_true",
                 help="videos: also print one line per kept frame "
                 "(path#FRAME, class, probability, probabilities)")
  return p


def check_args(args):
  if args.batch < 1:
    raise PredictError(f"--batch must be >= 1, got {args.batch}")
  if args.threads < 0:
    raise PredictError(f"--threads must be >= 0 (0: all CPUs), got {args.threads}")
  if args.every < 1:
    raise PredictError(f"--every must be >= 1, got {args.every}")


def main(argv=None):
  args = build_parser().parse_args(argv)
  try:
    check_args(args)
    meta, model = load_model(args.model, args.threads or None)
    for result in classify(meta, model, args.images, args.batch, args.every):
      if result.warning:
        print(f"kd_jax: {result.warning}", file=sys.stderr)
      for line in result_lines(result, meta["class_names"], args.per_frame):
        print(line, flush=True)
  except PredictError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    return 2
  return 0
