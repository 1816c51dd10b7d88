"""Study throughput: the T x alpha grid (configs/cifar_grid.py, 28 KD cells +
1 scratch cell) as plain separate runs vs cached + vmapped, in one run.

  python benchmarks/study_grid_speed.py [--pair=cifar|echo] [--train_limit=1024]
      [--eval_limit=500] [--epochs=2]

--pair picks the teacher -> student pair of the grid (the two cases of
benchmarks/kd_step_vs_torch.py): cifar (the config's own, vgg_cifar ->
simple_cnn at 32 px, batch 128) or echo (VGG16 -> MobileNetV3-small at
112 px, batch 64, as in the echo study).

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
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from kd_step_vs_torch import CASES  # noqa: E402

from kd_jax import cpu_runtime  # noqa: E402
from kd_jax.study import runner as study
from kd_jax.study.deployment import cpu_name  # noqa: E402

# pair (a case of kd_step_vs_torch.py: teacher, student, px) -> (batch size,
# teacher epochs); cifar is the grid config's own pair and batch size.
PAIRS = {"cifar": (128, 4), "echo": (64, 1)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--pair", choices=sorted(PAIRS), default="cifar")
  p.add_argument("--train_limit", type=int, default=1024)
  p.add_argument("--eval_limit", type=int, default=500)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--cells", type=int, default=0, help="first N cells only (0: all)")
  p.add_argument("--out", default="")
  args = p.parse_args()
  cpu_runtime.configure()  # the vmapped cells run here, as in kd_jax.study
  teacher, student, px, _ = CASES[args.pair]
  batch, teacher_epochs = PAIRS[args.pair]
  arg = (f"teacher.name={teacher},student.name={student},"
         f"dataset.image_size={px},batch_size={batch},dataset.name=default,"
         "dataset.random_crop=false,dataset.random_flip=false,"
         "teacher.learning_rate=0.0002,"
         f"teacher.num_epochs={teacher_epochs},"
         f"dataset.train_limit={args.train_limit},"
         f"dataset.eval_limit={args.eval_limit},"
         f"num_epochs={args.epochs},early_stopping_patience=0,"
         f"eval_batch_size={min(500, args.eval_limit)},log_every_steps=100")
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
  print(f"machine: {cpu_name()}, {platform.platform()}")
  print(f"grid: {n} cells (T x alpha vanilla KD + scratch), student {student}, "
        f"teacher {teacher}, {px} px, {args.train_limit} training images, "
        f"{args.eval_limit} val/test images, {args.epochs} epochs")
  print(f"plain separate runs:      {plain_s:8.1f} s "
        f"({plain_s / n:.1f} s per cell)")
  print(f"teacher cache + vmap:     {fast_s:8.1f} s "
        f"({fast_s / n:.1f} s per cell)")
  print(f"speed-up:                 {plain_s / fast_s:8.2f} x")
  print(f"max |test acc difference| between the two: {max(diffs):.4f}")


if __name__ == "__main__":
  main()
