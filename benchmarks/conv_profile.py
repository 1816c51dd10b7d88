"""Where the echo KD step's time goes on this CPU: the teacher's convolutions,
one at a time, in kd_jax (XLA:CPU) and PyTorch (oneDNN), against the
machine's measured matmul rate, in one run.

  python benchmarks/conv_profile.py [--batch=64] [--image_size=112] [--runs=5]

The teacher is VGG16 at 112 px (the echo case of kd_step_vs_torch.py, ~90% of
its step). Each of its 13 3x3 convolutions (+ bias + ReLU, its real input
shape) is jitted alone and timed (median of --runs after a warm-up): kd_jax
in float32 and bfloat16 (NHWC, as kd_jax's models run); PyTorch in float32
NCHW, float32 channels_last and bfloat16 channels_last, inference mode. The
ceiling is each framework's best 4096^3 matrix product in that dtype (the
rate a convolution lowered to a GEMM could reach). Also printed: the whole
VGG16 forward in each framework (float32; kd_jax in bfloat16 too), so the
convolutions' share of it. Both frameworks use every core.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_jax import cpu_runtime  # noqa: E402
from kd_jax.study.deployment import cpu_name  # noqa: E402

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M")


def timed(fn, runs, warmup=1):
  """Median seconds of fn() over `runs` calls after `warmup` ones."""
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(runs):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


def conv_shapes(size):
  """(H, W, Cin, Cout) of each VGG16 convolution at `size` px."""
  out, c, h = [], 3, size
  for v in VGG16:
    if v == "M":
      h //= 2
    else:
      out.append((h, h, c, v))
      c = v
  return out


def jax_rates(shapes, batch, runs):
  """{dtype: [seconds per conv]}, the matmul ceiling and the forward."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from kd_jax import models
  from kd_jax.models import profile

  def conv(x, w, b):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jax.nn.relu(y + b)
  f = jax.jit(conv)
  rng = np.random.default_rng(0)
  out = {}
  for dt in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dt).name
    times = []
    for h, w_, ci, co in shapes:
      x = jnp.asarray(rng.normal(size=(batch, h, w_, ci)), dt)
      w = jnp.asarray(rng.normal(size=(3, 3, ci, co)) * 0.05, dt)
      b = jnp.zeros((co,), dt)
      times.append(timed(lambda: f(x, w, b).block_until_ready(), runs))
    a = jnp.asarray(rng.normal(size=(4096, 4096)), dt)
    mm = jax.jit(lambda a: a @ a)
    out[name] = {"convs": times,
                 "matmul_gflops": 2 * 4096**3 / timed(
                     lambda: mm(a).block_until_ready(), 3) / 1e9}
  model = models.get_model("vgg16", num_classes=4)
  v = profile.random_variables("vgg16", 4, shapes[0][0], seed=1)
  x = jnp.asarray(rng.normal(size=(batch, shapes[0][0], shapes[0][0], 3)),
                  jnp.float32)
  for name, cast in (("float32", lambda t: t),
                     ("bfloat16", lambda t: t.astype(jnp.bfloat16))):
    fwd = jax.jit(lambda v, x: model.apply(jax.tree.map(cast, v), cast(x),
                                           train=False))
    out[name]["forward"] = timed(lambda: fwd(v, x).block_until_ready(), runs)
  return out


def torch_rates(shapes, batch, runs):
  """{variant: [seconds per conv]}, matmul ceilings and the forward."""
  import torch
  import torchvision

  torch.set_num_threads(os.cpu_count())
  cl = torch.channels_last
  variants = {"float32 NCHW": (torch.float32, torch.contiguous_format),
              "float32 channels_last": (torch.float32, cl),
              "bfloat16 channels_last": (torch.bfloat16, cl)}
  out = {}
  with torch.inference_mode():
    for name, (dt, fmt) in variants.items():
      times = []
      for h, w_, ci, co in shapes:
        x = torch.randn(batch, ci, h, w_, dtype=dt).contiguous(memory_format=fmt)
        w = (torch.randn(co, ci, 3, 3, dtype=dt) * 0.05).contiguous(memory_format=fmt)
        b = torch.zeros(co, dtype=dt)
        f = lambda: torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1))
        times.append(timed(f, runs))
      out[name] = {"convs": times}
    for dt in (torch.float32, torch.bfloat16):
      a = torch.randn(4096, 4096, dtype=dt)
      out[f"matmul {dt}"] = 2 * 4096**3 / timed(lambda: a @ a, 3) / 1e9
    m = torchvision.models.vgg16(num_classes=4).eval()
    x = torch.randn(batch, 3, shapes[0][0], shapes[0][0])
    out["float32 NCHW"]["forward"] = timed(lambda: m(x), runs)
    m, x = m.to(memory_format=cl), x.contiguous(memory_format=cl)
    out["float32 channels_last"]["forward"] = timed(lambda: m(x), runs)
  return out


def report(shapes, batch, jx, th):
  flops = [2 * batch * h * w * ci * co * 9 for h, w, ci, co in shapes]
  peak32 = max(jx["float32"]["matmul_gflops"], th["matmul torch.float32"])
  peak16 = max(jx["bfloat16"]["matmul_gflops"], th["matmul torch.bfloat16"])
  print(f"matmul 4096^3 GFLOP/s: kd_jax f32 {jx['float32']['matmul_gflops']:.0f}, "
        f"bf16 {jx['bfloat16']['matmul_gflops']:.0f}; torch f32 "
        f"{th['matmul torch.float32']:.0f}, bf16 {th['matmul torch.bfloat16']:.0f}")
  cols = [("kd_jax f32", jx["float32"]), ("kd_jax bf16", jx["bfloat16"])] + [
      (f"torch {k}", v) for k, v in th.items() if isinstance(v, dict)]
  print("conv (HxW Cin->Cout) | GFLOP | " + " | ".join(
      f"{n} ms (GFLOP/s)" for n, _ in cols))
  for i, (h, w, ci, co) in enumerate(shapes):
    cells = [f"{1e3 * c['convs'][i]:.1f} ({flops[i] / c['convs'][i] / 1e9:.0f})"
             for _, c in cols]
    print(f"{h}x{w} {ci}->{co} | {flops[i] / 1e9:.2f} | " + " | ".join(cells))
  total = sum(flops)
  cells = []
  for n, c in cols:
    t = sum(c["convs"])
    peak = peak16 if "bf16" in n or "bfloat16" in n else peak32
    cells.append(f"{1e3 * t:.0f} ({total / t / 1e9:.0f}, "
                 f"{100 * total / t / 1e9 / peak:.0f}% of best matmul)")
  print(f"all 13 | {total / 1e9:.1f} | " + " | ".join(cells))
  fw = [f"{n} {1e3 * c['forward']:.0f} ms (convs {100 * sum(c['convs']) / c['forward']:.0f}%)"
        for n, c in cols if "forward" in c]
  print("whole VGG16 forward: " + "; ".join(fw))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--runs", type=int, default=5)
  args = p.parse_args()
  cpu_runtime.configure()
  shapes = conv_shapes(args.image_size)
  print(f"machine: {cpu_name()}; VGG16 at {args.image_size} px, batch "
        f"{args.batch}, median of {args.runs}")
  jx = jax_rates(shapes, args.batch, args.runs)
  th = torch_rates(shapes, args.batch, args.runs)
  report(shapes, args.batch, jx, th)


if __name__ == "__main__":
  main()
