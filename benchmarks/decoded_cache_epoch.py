"""Decode once: one epoch of an echo-sized image folder's training batches,
decoding every file vs reading `dataset.decoded_cache`.

  python benchmarks/decoded_cache_epoch.py [--n=20000] [--size=112]
      [--classes=4] [--batch=128] [--root=DIR (reuse or keep the folder)]

Generates (process pool) --n JPEG frames of --size px in --classes classes
(echo-like: a dark frame with a bright sector and noise), all in train/,
plus a small test/. Then iterates `datasets.train_batches` over one epoch
at --batch without training, three ways, on page-cached files:

  decode      the files decoded by the thread pool (`kd_jax/data/decode.py`);
  cache fill  the first run with decoded_cache: every file decoded into
              the cache (timed as part of `load`), then its epoch;
  cache       a later run: `load` finds the entry, the epoch reads the
              memory map.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent import futures

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.folder_start import folder_config  # noqa: E402
from kd_jax.data import datasets as data  # noqa: E402


def _write_chunk(args):
  root, start, stop, size, classes = args
  from PIL import Image
  rng = np.random.default_rng(start)
  yy, xx = np.mgrid[:size, :size]
  angle = np.arctan2(xx - size / 2, yy)
  for i in range(start, stop):
    split = "test" if i < 400 else "train"
    cls = i % classes
    width = 0.3 + 0.15 * cls + 0.05 * rng.standard_normal()
    sector = (np.abs(angle) < width) & (yy < size * 0.9)
    frame = 20 + 140 * sector + rng.normal(0, 25, (size, size))
    img = np.clip(frame, 0, 255).astype(np.uint8)
    Image.fromarray(img).convert("RGB").save(
        os.path.join(root, split, f"v{cls}", f"{i:06d}.jpg"), quality=90)


def generate(root, n, size, classes):
  for split in ("train", "test"):
    for k in range(classes):
      os.makedirs(os.path.join(root, split, f"v{k}"), exist_ok=True)
  jobs = [(root, s, min(s + 1000, n + 400), size, classes)
          for s in range(0, n + 400, 1000)]
  with futures.ProcessPoolExecutor() as pool:
    list(pool.map(_write_chunk, jobs))


def epoch(split, batch):
  """(seconds, steps) of one epoch's training batches, nothing trained."""
  steps = data.steps_per_epoch(len(split), batch)
  t = time.perf_counter()
  for _ in data.train_batches(split, global_batch=batch, seed=0, epoch=0,
                              num_steps=steps, image_size=0):
    pass
  return time.perf_counter() - t, steps


def timed_load(config):
  t = time.perf_counter()
  ds = data.load(config)
  return ds, time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=20_000)
  ap.add_argument("--size", type=int, default=112)
  ap.add_argument("--classes", type=int, default=4)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--root", default="")
  args = ap.parse_args()
  root = args.root or tempfile.mkdtemp(prefix="kd_jax_cache_epoch_")
  cache = tempfile.mkdtemp(prefix="kd_jax_decoded_cache_")
  print(f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
  try:
    if not os.path.isdir(os.path.join(root, "train")):
      t = time.perf_counter()
      generate(root, args.n, args.size, args.classes)
      print(f"generated {args.n} + 400 {args.size}x{args.size} JPEG frames in "
            f"{time.perf_counter() - t:.1f} s")
    config = folder_config(root, args.size)
    ds, load_s = timed_load(config)
    decode_s, steps = epoch(ds.train, args.batch)
    config.dataset.decoded_cache = cache
    ds, fill_load_s = timed_load(config)
    fill_epoch_s, _ = epoch(ds.train, args.batch)
    ds, hit_load_s = timed_load(config)
    hit_epoch_s, _ = epoch(ds.train, args.batch)
    mb = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache)
             for f in fs) / 1e6
  finally:
    shutil.rmtree(cache, ignore_errors=True)
    if not args.root:
      shutil.rmtree(root, ignore_errors=True)
  n = steps * args.batch
  print(f"train split {len(ds.train)} frames; one epoch = {steps} batches of "
        f"{args.batch} ({n} images); cache {mb:.0f} MB")
  print(f"decode:     load {load_s:.2f} s, epoch {decode_s:.2f} s "
        f"({n / decode_s:.0f} img/s)")
  print(f"cache fill: load (decodes every split into the cache) "
        f"{fill_load_s:.2f} s, epoch {fill_epoch_s:.2f} s")
  print(f"cache:      load {hit_load_s:.2f} s, epoch {hit_epoch_s:.2f} s "
        f"({n / hit_epoch_s:.0f} img/s)")
  print(f"epoch ratio decode/cache: {decode_s / hit_epoch_s:.1f}x")


if __name__ == "__main__":
  main()
