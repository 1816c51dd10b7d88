"""Images/s of the KD train step over 1, 2, 4, ... devices of one process:
the data-parallel scaling proxy measured on forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N, one fresh process per
N), or on the GPUs a machine has (--gpus).

  python benchmarks/device_scaling.py [--devices=1,2,4] [--case=cifar]
      [--per_device_batch=32] [--steps=10] [--json=out.json]

Weak scaling: the global batch is `per_device_batch` x N, sharded over the
('data',) mesh as a run shards it (train/sharding.py). For each N: images/s
with the batch already on the devices, and fed from kd_jax's input pipeline
with the training loop's prefetching (train/prefetch.py, depth 2); per
device = total / N. The step is gpu_kd_step.py's (`jax_step`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))


def child(args):
  """One N: prints one JSON line of its rates."""
  import jax
  from gpu_kd_step import ALL_CASES, jax_step
  tname, sname, size, classes = ALL_CASES[args.case]
  n = jax.device_count()
  r = jax_step(tname, sname, size, classes, args.per_device_batch * n,
               args.steps, False, with_cost=False)
  print("RESULT " + json.dumps({
      "devices": n, "platform": jax.default_backend(),
      "global_batch": args.per_device_batch * n,
      "images_per_s": r["images_per_s"],
      "prefetch_images_per_s": r["prefetch_images_per_s"]}), flush=True)


def measure(args, n) -> dict:
  env = dict(os.environ)
  if not args.gpus:
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = " ".join(filter(None, [
        env.get("XLA_FLAGS", ""),
        f"--xla_force_host_platform_device_count={n}"]))
  else:
    env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(n)))
  r = subprocess.run(
      [sys.executable, __file__, "--child", f"--case={args.case}",
       f"--per_device_batch={args.per_device_batch}", f"--steps={args.steps}"],
      env=env, capture_output=True, text=True, check=True)
  line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--devices", default="1,2,4")
  p.add_argument("--case", default="cifar")
  p.add_argument("--per_device_batch", type=int, default=32)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--gpus", action="store_true",
                 help="use the machine's GPUs (CUDA_VISIBLE_DEVICES=0..N-1)")
  p.add_argument("--json", default="")
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.child:
    return child(args)
  print(f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; case {args.case}, "
        f"{args.per_device_batch} images per device per step")
  print("devices | global batch | img/s (on device) | img/s per device | "
        "img/s (prefetched pipeline) | per device | vs 1 device, per device")
  rows = []
  for n in map(int, args.devices.split(",")):
    r = measure(args, n)
    rows.append(r)
    base = rows[0]["prefetch_images_per_s"] / rows[0]["devices"]
    print(f"{n} | {r['global_batch']} | {r['images_per_s']:.0f} | "
          f"{r['images_per_s'] / n:.0f} | {r['prefetch_images_per_s']:.0f} | "
          f"{r['prefetch_images_per_s'] / n:.0f} | "
          f"{r['prefetch_images_per_s'] / n / base:.2f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
