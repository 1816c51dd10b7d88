"""Model facts for the size/speed side of a KD study.

`profile(name, ...)` returns, for one registered model:
  params            trainable parameters (the `params` collection)
  size_mb_f32/bf16  bytes of the saved inference variables (params + BatchNorm
                    statistics) in float32 / bfloat16, in MB (10^6 bytes)
  gflops            FLOPs per image of the compiled inference forward pass,
                    from XLA:CPU's cost analysis at batch 1 (a multiply-add =
                    2; taps that fall in the zero padding are not counted)
  latency_ms        median wall time of a batch-1 forward on this machine's
                    default device, after warm-up
  images_per_s      throughput of batch-`throughput_batch` forwards
so a report can say "X x smaller, Y x faster than the teacher, Z frames/s".
Weights are random (timing does not depend on their values); no initialiser
is compiled, which keeps profiling VGG16 cheap.
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax import models, reporting


def random_variables(name, num_classes, image_size, seed=0):
  """Variables of the right shapes filled on the host (He-normal kernels,
  unit BN scales/variances, zero biases/means)."""
  shapes = models.init_shapes(name, num_classes, image_size)
  rng = np.random.default_rng(seed)

  def fill(path, s):
    leaf = getattr(path[-1], "key", "")
    if leaf == "kernel":
      fan_in = int(np.prod(s.shape[:-1])) or 1
      return (rng.standard_normal(s.shape) * np.sqrt(2.0 / fan_in)).astype(s.dtype)
    if leaf in ("scale", "var"):
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def _count(tree):
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def _time(fn, *args, runs):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def profile(name, *, num_classes=10, image_size=112, latency_runs=20,
            throughput_batch=64, throughput_runs=3, timing=True) -> dict:
  model = models.get_model(name, num_classes=num_classes)
  variables = jax.device_put(random_variables(name, num_classes, image_size))
  fwd = jax.jit(lambda v, x: model.apply(v, x, train=False))
  x1 = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  # FLOPs from the CPU compile on every machine: GPU cost analysis does not
  # see inside cuDNN convolution calls and undercounts them.
  cpu = jax.devices("cpu")[0]
  cost = fwd.lower(jax.device_put(variables, cpu),
                   jax.device_put(x1, cpu)).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0]
  n_vars = _count(variables)
  out = {
      "model": name, "num_classes": num_classes, "image_size": image_size,
      "params": _count(variables["params"]),
      "size_mb_f32": n_vars * 4 / 1e6, "size_mb_bf16": n_vars * 2 / 1e6,
      "gflops": float(cost.get("flops", float("nan"))) / 1e9,
      "device": jax.devices()[0].device_kind,
  }
  if timing:
    latency = _time(fwd, variables, x1, runs=latency_runs)
    xb = jnp.zeros((throughput_batch, image_size, image_size, 3), jnp.float32)
    batch_time = _time(fwd, variables, xb, runs=throughput_runs)
    out.update(latency_ms=latency * 1e3, frames_per_s=1.0 / latency,
               images_per_s=throughput_batch / batch_time,
               throughput_batch=throughput_batch)
  return out


def format_table(rows) -> str:
  head = ("model", "params", "MB f32", "MB bf16", "GFLOPs", "ms/img (b=1)",
          "img/s (b=64)")
  lines = [[r["model"], f"{r['params']:,}", f"{r['size_mb_f32']:.2f}",
            f"{r['size_mb_bf16']:.2f}", f"{r['gflops']:.3f}",
            f"{r['latency_ms']:.2f}" if "latency_ms" in r else "-",
            f"{r['images_per_s']:.0f}" if "images_per_s" in r else "-"]
           for r in rows]
  return reporting.text_table(head, lines, left=1)
