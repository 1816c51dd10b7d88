"""Study throughput: the T x alpha grid (configs/cifar_grid.py, 28 KD cells +
1 scratch cell) as plain separate runs vs cached + vmapped, in one run.

  python benchmarks/study_grid_speed.py [--train_limit=1024] [--epochs=2]

Plain: what a user does without these features: one `python -m kd_jax.main`
process per cell, every cell running the teacher forward itself
(`kd_jax.study run --no_teacher_cache`). Fast: `kd_jax.study run --vmap`:
the teacher's logits computed once (teacher cache) and the 28 KD cells
trained as one vmapped program in one process. Both distil from the same
teacher, trained once before the clock starts. Data: the embedded default
(Fashion-MNIST) upsampled to 32 px, as CIFAR cannot be read offline here; no
augmentation (with augmentation the cache is off). Prints both wall times,
their ratio, and the largest test-accuracy difference between the two ways
of running the same cells (they train the same models up to float
rounding).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_jax import study  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--train_limit", type=int, default=1024)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--cells", type=int, default=0, help="first N cells only (0: all)")
  p.add_argument("--out", default="")
  args = p.parse_args()
  arg = ("dataset.name=default,dataset.random_crop=false,dataset.random_flip=false,"
         "teacher.learning_rate=0.0002,teacher.num_epochs=4,"
         f"dataset.train_limit={args.train_limit},dataset.eval_limit=500,"
         f"num_epochs={args.epochs},early_stopping_patience=0,"
         "eval_batch_size=500,log_every_steps=100")
  grid = os.path.join(REPO, "configs", "cifar_grid.py")
  root = args.out or tempfile.mkdtemp(prefix="kd_grid_bench_")
  plain_dir, fast_dir = os.path.join(root, "plain"), os.path.join(root, "fast")
  plain = study.Study(grid, arg, plain_dir, teacher_cache=False)
  fast = study.Study(grid, arg, fast_dir)
  if args.cells:
    for s in (plain, fast):
      s.cell_args, s.configs = s.cell_args[:args.cells], s.configs[:args.cells]

  # The shared teacher, trained once, outside the timings.
  t = plain.teacher_cell()
  subprocess.run(t.argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  shutil.copytree(plain.teacher_workdir, fast.teacher_workdir)

  t0 = time.time()
  failed = study.run(plain, parallel=1)
  plain_s = time.time() - t0
  t0 = time.time()
  failed += study.run(fast, vmap=True)
  fast_s = time.time() - t0
  assert not failed, "some cells failed"

  diffs = []
  for a, b in zip(plain.cells(), fast.cells()):
    ra = json.load(open(os.path.join(a.workdir, "results.json")))["rows"][-1]
    rb = json.load(open(os.path.join(b.workdir, "results.json")))["rows"][-1]
    diffs.append(abs(ra["test_accuracy"] - rb["test_accuracy"]))
  n = len(plain.cells())
  cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo")
              if l.startswith("model name")), platform.processor())
  print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.platform()}")
  print(f"grid: {n} cells (T x alpha vanilla KD + scratch), student simple_cnn, "
        f"teacher vgg_cifar, 32 px, {args.train_limit} training images, "
        f"{args.epochs} epochs")
  print(f"plain separate runs:      {plain_s:8.1f} s")
  print(f"teacher cache + vmap:     {fast_s:8.1f} s")
  print(f"speed-up:                 {plain_s / fast_s:8.2f} x")
  print(f"max |test acc difference| between the two: {max(diffs):.4f}")


if __name__ == "__main__":
  main()
