"""Fast start for image folders: the data part of the time from the command
to the first training step, before and after lazy validation.

  python benchmarks/folder_start.py [--n=100000] [--size=32] [--classes=10]
      [--root=DIR (reuse or keep a generated folder)]

Generates (process pool) a folder of --n small JPEGs, --size px, in
--classes classes: 90% in train/, 10% in test/. Then times, each on the
same (page-cached) files:

  before  the parent commit's data path, its datasets.py as committed
          (`git show HEAD:kd_jax/data/datasets.py`, imported as a module):
          `load` (listing plus the full validation, Pillow verify() + load()
          of every file on one thread) and its first training batch
          (tf.data decode; TensorFlow's import is timed apart);
  after   this tree's `datasets.load` (listing only) and its first training
          batch (Pillow in a thread pool).

Both runs then do the same rest (JAX start, the dataset digest's stat of
every file, compiling the step), timed apart here as `common`: the digest,
and magic bytes of every file, as what a cheap up-front check would cost.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import quickstart  # noqa: E402
from kd_jax.data import datasets as data  # noqa: E402


def _write_chunk(args):
  root, start, stop, size, classes = args
  from PIL import Image
  rng = np.random.default_rng(start)
  for i in range(start, stop):
    split = "test" if i % 10 == 9 else "train"
    cls = i % classes
    base = np.zeros((size, size, 3), np.float32)
    base[..., cls % 3] = 40.0 + 20 * cls
    img = np.clip(base + rng.normal(100, 30, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(os.path.join(root, split, f"c{cls}", f"{i:06d}.jpg"),
                              quality=90)


def generate(root, n, size, classes, workers=None):
  """`n` JPEGs under root/{train,test}/c<k>/, written by a process pool."""
  for split in ("train", "test"):
    for k in range(classes):
      os.makedirs(os.path.join(root, split, f"c{k}"), exist_ok=True)
  step = 2000
  jobs = [(root, s, min(s + step, n), size, classes) for s in range(0, n, step)]
  with futures.ProcessPoolExecutor(workers) as pool:
    list(pool.map(_write_chunk, jobs))


def folder_config(root, size):
  c = quickstart.get_config()
  c.dataset.name, c.dataset.data_dir = "folder", root
  c.dataset.image_size = size
  c.dataset.train_limit = c.dataset.eval_limit = 0
  return c


def old_datasets():
  """The parent commit's kd_jax/data/datasets.py as a module."""
  src = subprocess.run(["git", "show", "HEAD:kd_jax/data/datasets.py"],
                       cwd=REPO, capture_output=True, text=True, check=True).stdout
  path = os.path.join(tempfile.mkdtemp(), "old_datasets.py")
  with open(path, "w") as f:
    f.write(src)
  spec = importlib.util.spec_from_file_location("old_datasets", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules["old_datasets"] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def to_first_batch(module, config):
  """(seconds to load, seconds to the first training batch after it)."""
  t0 = time.perf_counter()
  ds = module.load(config)
  t1 = time.perf_counter()
  next(module.train_batches(ds.train, global_batch=config.batch_size, seed=0,
                            epoch=0, num_steps=1, image_size=config.dataset.image_size))
  return t1 - t0, time.perf_counter() - t1, ds


def common_costs(ds):
  t0 = time.perf_counter()
  data.digest(ds)
  t1 = time.perf_counter()
  for split in (ds.train, ds.val, ds.test):
    for p in split.paths:
      with open(p, "rb") as f:
        f.read(8)
  return t1 - t0, time.perf_counter() - t1


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--n", type=int, default=100_000)
  ap.add_argument("--size", type=int, default=32)
  ap.add_argument("--classes", type=int, default=10)
  ap.add_argument("--root", default="")
  args = ap.parse_args()
  root = args.root or tempfile.mkdtemp(prefix="kd_jax_folder_start_")
  print(f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
  if not os.path.isdir(os.path.join(root, "train")):
    t = time.perf_counter()
    generate(root, args.n, args.size, args.classes)
    print(f"generated {args.n} {args.size}x{args.size} JPEGs in {root} "
          f"in {time.perf_counter() - t:.1f} s")
  config = folder_config(root, args.size)
  try:
    load_new, batch_new, ds = to_first_batch(data, config)
    old = old_datasets()
    t = time.perf_counter()
    importlib.import_module("tensorflow")  # the old first batch's, apart
    tf_import = time.perf_counter() - t
    load_old, batch_old, _ = to_first_batch(old, config)
    digest_s, magic_s = common_costs(ds)
  finally:
    if not args.root:
      shutil.rmtree(root, ignore_errors=True)
  before, after = load_old + batch_old, load_new + batch_new
  print(f"files: {len(ds.train) + len(ds.val) + len(ds.test)} "
        f"(train/val/test {len(ds.train)}/{len(ds.val)}/{len(ds.test)}), "
        f"batch {config.batch_size}")
  print(f"before: load (list + validate every file) {load_old:.2f} s + first "
        f"batch (tf.data) {batch_old:.2f} s = {before:.2f} s "
        f"(+ {tf_import:.2f} s TensorFlow import)")
  print(f"after:  load (list) {load_new:.2f} s + first batch (thread pool) "
        f"{batch_new:.2f} s = {after:.2f} s")
  print(f"ratio before/after: {before / after:.1f}x")
  print(f"common to both: dataset digest (stat of every file) {digest_s:.2f} s; "
        f"for reference, magic bytes of every file {magic_s:.2f} s")


if __name__ == "__main__":
  main()
