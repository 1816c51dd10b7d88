"""XLA:CPU flags against single convolutions of the echo teacher, one fresh
process per flag setting (XLA reads XLA_FLAGS once, at start-up).

  python benchmarks/xla_conv_flags.py [--runs=3]

Each setting times two of VGG16's 3x3 convolutions at 112 px, batch 64
(112x112 64->64, the slowest for XLA:CPU, and 28x28 256->256), in float32
and bfloat16, and a 2048^3 matrix product, after kd_jax's own flags
(kd_jax/cpu_runtime.py; a flag given here wins).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("", "--xla_cpu_use_onednn=true",
            "--xla_cpu_experimental_onednn_custom_call=true",
            "--xla_cpu_use_xnnpack=true",
            "--xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce",
            "--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",
            "--xla_cpu_experimental_xnn_graph_fusion_mode="
            "XNN_GRAPH_FUSION_MODE_GREEDY")
SHAPES = ((112, 64, 64), (28, 256, 256))


def worker(runs):
  sys.path.insert(0, REPO)
  sys.path.insert(0, os.path.join(REPO, "benchmarks"))
  from kd_jax import cpu_runtime
  cpu_runtime.configure()
  import jax
  import jax.numpy as jnp
  import numpy as np

  from conv_profile import timed as timed_runs
  timed = lambda fn: timed_runs(fn, runs)

  conv = jax.jit(lambda x, w, b: jax.nn.relu(jax.lax.conv_general_dilated(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")) + b))
  mm = jax.jit(lambda a: a @ a)
  rng = np.random.default_rng(0)
  cells = []
  for dt in (jnp.float32, jnp.bfloat16):
    for h, ci, co in SHAPES:
      x = jnp.asarray(rng.normal(size=(64, h, h, ci)), dt)
      w = jnp.asarray(rng.normal(size=(3, 3, ci, co)) * 0.05, dt)
      b = jnp.zeros((co,), dt)
      t = timed(lambda: conv(x, w, b).block_until_ready())
      cells.append(f"{1e3 * t:.0f} ms ({2 * 64 * h * h * ci * co * 9 / t / 1e9:.0f})")
    a = jnp.asarray(rng.normal(size=(2048, 2048)), dt)
    t = timed(lambda: mm(a).block_until_ready())
    cells.append(f"{2 * 2048**3 / t / 1e9:.0f}")
  print(" | ".join(cells))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--worker", action="store_true", help="internal")
  args = p.parse_args()
  if args.worker:
    return worker(args.runs)
  conv = [f"{h}x{h} {ci}->{co}" for h, ci, co in SHAPES]
  print("XLA_FLAGS | " + " | ".join(
      [f"f32 {c} ms (GFLOP/s)" for c in conv] + ["f32 matmul GFLOP/s"] +
      [f"bf16 {c} ms (GFLOP/s)" for c in conv] + ["bf16 matmul GFLOP/s"]))
  for flags in SETTINGS:
    env = dict(os.environ, XLA_FLAGS=flags, TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, __file__, "--worker",
                        f"--runs={args.runs}"], env=env, capture_output=True,
                       text=True)
    out = r.stdout.strip().splitlines()[-1] if r.returncode == 0 else (
        "failed: " + (r.stderr.strip().splitlines() or ["?"])[-1][:120])
    print(f"{flags or '(kd_jax defaults)'} | {out}", flush=True)


if __name__ == "__main__":
  main()
