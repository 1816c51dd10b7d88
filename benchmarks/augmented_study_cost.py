"""What a study with augmentation costs, with the teacher live in every cell
and with the teacher's logits of the augmented batches cached once
(teacher_cache.AugmentedViews), in one run.

  python benchmarks/augmented_study_cost.py [--pair=resnet32x4-resnet8x4]
      [--methods=vanilla,dkd,dist,ctkd] [--train_limit=2048] [--epochs=2]

The study is configs/cifar100_benchmark.py (random crop + flip, batch 64,
32 px, SGD) for one pair and seed, its logit-method cells only (different
methods never share a vmapped program, so each is its own run: the case
the cache is for), on the embedded default data (CIFAR-100 cannot be read
offline here) cut to --train_limit images. Live: `study run
--no_teacher_cache`, every cell runs the teacher's forward on every
batch. Cached: `study run`, the first cell computes each epoch's augmented
batches' logits and the others read them. Both distil from the same teacher,
trained once before the clock starts. Prints both wall times, their ratio
and the largest test-accuracy difference between the two ways of running
the same cells (the same models up to float rounding).
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

from kd_jax import cpu_runtime  # noqa: E402
from kd_jax.study import runner as study
from kd_jax.study.deployment import cpu_name  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--pair", default="resnet32x4-resnet8x4")
  p.add_argument("--methods", default="vanilla,dkd,dist,ctkd")
  p.add_argument("--train_limit", type=int, default=2048)
  p.add_argument("--eval_limit", type=int, default=500)
  p.add_argument("--epochs", type=int, default=2)
  p.add_argument("--out", default="")
  args = p.parse_args()
  cpu_runtime.configure()
  arg = (f"pair={args.pair},dataset.name=default,"
         f"dataset.train_limit={args.train_limit},"
         f"dataset.eval_limit={args.eval_limit},num_epochs={args.epochs},"
         "teacher.num_epochs=1,lr_decay_epochs=1,early_stopping_patience=0,"
         f"eval_batch_size={min(500, args.eval_limit)},log_every_steps=100")
  config = os.path.join(REPO, "configs", "cifar100_benchmark.py")
  root = args.out or tempfile.mkdtemp(prefix="kd_aug_study_")
  live = study.Study(config, arg, os.path.join(root, "live"), teacher_cache=False)
  cached = study.Study(config, arg, os.path.join(root, "cached"))
  methods = args.methods.split(",")
  for s in (live, cached):
    keep = [i for i, c in enumerate(s.configs) if c.kd.method in methods]
    s.cell_args = [s.cell_args[i] for i in keep]
    s.configs = [s.configs[i] for i in keep]

  t = live.teacher_cell()  # the shared teacher, outside the timings
  subprocess.run(t.argv, check=True, cwd=REPO, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  shutil.copytree(live.teacher_workdir, cached.teacher_workdir)

  times = {}
  for name, s in (("live", live), ("cached", cached)):
    t0 = time.time()
    assert not study.run(s, parallel=1), f"{name}: some cells failed"
    times[name] = time.time() - t0
  diffs = []
  for a, b in zip(live.cells(), cached.cells()):
    ra = json.load(open(os.path.join(a.workdir, "results.json")))["rows"][-1]
    rb = json.load(open(os.path.join(b.workdir, "results.json")))["rows"][-1]
    diffs.append(abs(ra["test_accuracy"] - rb["test_accuracy"]))
  c = live.configs[0]
  print(f"machine: {cpu_name()}, {platform.platform()}")
  print(f"study: {len(methods)} cells ({', '.join(methods)}), teacher "
        f"{c.teacher.name} -> student {c.student.name}, {c.dataset.image_size} "
        f"px, batch {c.batch_size}, random crop + flip, {args.train_limit} "
        f"training images, {args.epochs} epochs")
  print(f"teacher live in every cell: {times['live']:8.1f} s")
  print(f"augmented views cached:     {times['cached']:8.1f} s")
  print(f"speed-up:                   {times['live'] / times['cached']:8.2f} x")
  print(f"max |test acc difference| between the two: {max(diffs):.4f}")


if __name__ == "__main__":
  main()
