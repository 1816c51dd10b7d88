"""Does a bfloat16 teacher change the KD student? The same distillation with
`teacher.compute_dtype=float32` and `=bfloat16`, over seeds, in one run.

  python benchmarks/bf16_teacher_accuracy.py [--config=configs/quickstart.py]
      [--arg=teacher=simple_cnn] [--seeds=3] [--teacher=RUN_OR_CHECKPOINT]
      [--teacher_name=mlp_1200x2] [--workdir=DIR]

Without --teacher the first run (seed 0, float32) also trains the config's
teacher, as `kd_jax.main` does, and the others load that teacher. For each
seed and each dtype it distils the config's student from that frozen
teacher (no scratch baseline) and reads the student's test accuracy and its
top-1 agreement with the teacher from `student/results.json`. Prints one row per seed, each dtype's mean +- std,
and the paired t-test of bfloat16 - float32 over the seeds (kd_jax.stats).
The teacher's forward in bf16 rounds its inputs, weights and activations
to 8 mantissa bits; its logits go back to float32 (`step.frozen_forward`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_jax import console  # noqa: E402

console.quiet_native_logs()  # before JAX and TensorFlow are imported

from kd_jax import config_lib  # noqa: E402
from kd_jax import cpu_runtime
from kd_jax.study import stats
from kd_jax.train import pipeline as train

DTYPES = ("float32", "bfloat16")


def _config(path, arg, **overrides):
  c = config_lib.load_config_module(os.path.join(REPO, path)).get_config(
      arg or None)
  for key, value in overrides.items():
    config_lib.set_path(c, key, value)
  return c


def _student(workdir):
  with open(os.path.join(workdir, "student", "results.json")) as f:
    test = json.load(f)["test"]
  return test["accuracy"], test["agreement"]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--config", default="configs/quickstart.py")
  p.add_argument("--arg", default="", help="the config's arg string")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--teacher", default="",
                 help="a trained teacher (run dir or checkpoint); '' = train one")
  p.add_argument("--teacher_name", default="")
  p.add_argument("--workdir", default="")
  args = p.parse_args()
  cpu_runtime.configure()
  root = args.workdir or tempfile.mkdtemp(prefix="kd_bf16_teacher_")
  t0 = time.time()
  teacher = args.teacher
  name = args.teacher_name or _config(args.config, args.arg).teacher.name
  acc, agree = {d: {} for d in DTYPES}, {d: {} for d in DTYPES}
  for seed in range(args.seeds):
    for dtype in DTYPES:
      wd = os.path.join(root, f"{dtype}-seed{seed}")
      own = {"teacher.checkpoint": teacher, "teacher.name": name} if teacher else {}
      train.train_and_evaluate(_config(args.config, args.arg, **{
          "seed": seed, "scratch_baseline": False,
          "teacher.compute_dtype": dtype, **own}), wd)
      teacher = teacher or os.path.join(wd, "teacher")
      acc[dtype][seed], agree[dtype][seed] = _student(wd)
  cell = args.config + (":" + args.arg if args.arg else "")
  print(f"\n{cell}: teacher {name} ({teacher}), {args.seeds} seeds, "
        f"{time.time() - t0:.0f} s")
  print("seed | student acc f32 | student acc bf16 | agreement f32 | agreement bf16")
  for seed in range(args.seeds):
    print(f"{seed} | {acc['float32'][seed]:.4f} | {acc['bfloat16'][seed]:.4f} | "
          f"{agree['float32'][seed]:.4f} | {agree['bfloat16'][seed]:.4f}")
  for dtype in DTYPES:
    s = stats.summarize(list(acc[dtype].values()))
    print(f"{dtype}: student test accuracy {s.mean:.4f} +- {s.std:.4f}")
  d = stats.paired(acc["bfloat16"], acc["float32"])
  print(f"bfloat16 - float32: {d.diff:+.4f} (95% CI {d.ci_low:+.4f} .. "
        f"{d.ci_high:+.4f}), paired t {d.t:.2f}, p {d.p:.3f}")


if __name__ == "__main__":
  main()
