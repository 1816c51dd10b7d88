"""KD train-step throughput on a GPU, against the device's measured ceilings
and a PyTorch peer, in one run.

  python benchmarks/gpu_kd_step.py [--batch=64,256] [--steps=30]

Cases: VGG16 -> MobileNetV3-small at 112 px, 4 classes (the echo recipe) and
vgg_cifar -> simple_cnn at 32 px, 10 classes. For each batch size: kd_jax's
jitted KD step (float32, and bf16 with `mixed_precision=True`) with a batch
already on the device and with batches from kd_jax's input pipeline
(host arrays -> device, each batch placed when its step runs: "sync
pipeline"; and as the training loop feeds it, with the next batches placed
by train/prefetch.py's background thread: "prefetch pipeline", depth
`--prefetch_depth`); the same step in PyTorch (the models of
kd_step_vs_torch.py, float32 and bf16 autocast, its best variant). The step's FLOPs and bytes come from
XLA:CPU's cost analysis of the same step (XLA:GPU's leaves out the
convolutions cuDNN runs; the bf16 row reuses the f32 step's counts); they are
divided by the measured
ceilings of this device: a large bf16 and float32 matrix product (FLOP/s)
and a large device-to-device copy (bytes read + written per second).

The grid row is the T x alpha study (configs/cifar_grid.py: 28 vanilla-KD
cells) as `kd_jax.study run --vmap` trains it on a GPU: one jitted
`sweep.make_sweep_step` over all 28 cells, fed the teacher's cached logits
(no augmentation), each cell its own batch-size rows; images/s counts every
cell's images.

  --ceiling_n=1024 --batch=8 --steps=2 --grid_cells=2  is a CPU dry run
  (--torch_cpu also runs the PyTorch peer on the CPU; --cases=smoke is a
  tiny simple_cnn -> simple_cnn case at 16 px).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

from conv_profile import timed  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from kd_step_vs_torch import CASES  # noqa: E402
from kd_step_vs_torch import torch_models  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax import config_lib  # noqa: E402
from kd_jax import cpu_runtime
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.train import model_init
from kd_jax.train import prefetch
from kd_jax.train import sharding
from kd_jax.train import step as step_lib  # noqa: E402
from kd_jax.train import sweep

# The two cases of kd_step_vs_torch.py, and a tiny one that runs the same
# code in seconds on a CPU (gpu_check.py --cpu_smoke).
ALL_CASES = {**CASES, "smoke": ("simple_cnn", "simple_cnn", 16, 10)}
GRID_T = (2, 4, 6, 8, 10, 12, 14)  # configs/cifar_grid.py
GRID_ALPHA = (0.3, 0.5, 0.7, 0.9)
GRID_BATCH = {"cifar": 128, "echo": 64}  # the grid config's, the echo study's


def ceilings(n=8192):
  """Measured matmul FLOP/s (bf16, f32) and copy bandwidth of this device."""
  out = {}
  for dtype in (jnp.bfloat16, jnp.float32):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    t = timed(lambda: mm(a, b).block_until_ready(), 10, warmup=0)
    out[f"matmul_{jnp.dtype(dtype).name}_tflops"] = 2 * n**3 / t / 1e12
  x = jax.random.normal(jax.random.PRNGKey(2), (4 * n * n,), jnp.float32)
  cp = jax.jit(lambda x: x + 1.0)  # one read + one write (1 GiB at n=8192)
  cp(x).block_until_ready()
  t = timed(lambda: cp(x).block_until_ready(), 10, warmup=0)
  out["copy_tb_per_s"] = 2 * x.size * 4 / t / 1e12
  return out


def cpu_cost(fn, *args) -> dict:
  """XLA:CPU's cost analysis of `fn(*args)`: XLA:GPU's does not count the
  convolutions it hands to cuDNN, so FLOPs (and bytes, an estimate that
  depends on fusion) come from the CPU compile of the same function."""
  cpu = jax.devices("cpu")[0]
  cost = jax.jit(fn).lower(*jax.device_put(args, cpu)).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return {"flops": float(cost.get("flops", float("nan"))),
          "bytes": float(cost.get("bytes accessed", float("nan")))}


def pipeline_rate(step, state, hp, t_vars, split, batch, size, mesh, steps,
                  depth):
  """(images/s, state) of `steps` steps fed from kd_jax's input pipeline
  (host uint8 batches of `split`, epoch after epoch), `depth` batches placed
  ahead by the training loop's prefetcher (0: each when its step runs)."""
  host = itertools.islice(itertools.chain.from_iterable(
      data.train_batches(split, global_batch=batch, seed=0, epoch=e,
                         num_steps=len(split) // batch, image_size=size)
      for e in itertools.count()), steps)
  t0 = time.perf_counter()
  with prefetch.Prefetcher(host, lambda b: sharding.global_batch(b, mesh),
                           depth) as placed:
    for b in placed:
      state, _ = step(state, b, hp, t_vars)
  jax.block_until_ready(state)
  return batch * steps / (time.perf_counter() - t0), state


def jax_step(teacher_name, student_name, size, classes, batch, steps, bf16,
             cost=None, prefetch_depth=2, with_cost=True):
  c = config_lib.base_config()
  c.dataset.image_size, c.batch_size = size, batch
  c.kd.method, c.kd.temperature, c.kd.alpha = "vanilla", 4.0, 0.5
  c.mixed_precision = bf16
  mesh = sharding.make_mesh()
  student = models.get_model(student_name, num_classes=classes)
  teacher_model = models.get_model(teacher_name, num_classes=classes)
  t_vars = jax.device_put(models.init(teacher_model, jax.random.PRNGKey(1), size),
                          sharding.replicated(mesh))
  repl = sharding.replicated(mesh)
  tx = step_lib.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=1e-3, num_epochs=1,
                               steps_per_epoch=1000, ctkd=False)
  p, bs = model_init.init_variables(student, c.dataset.image_size, mesh, jax.random.PRNGKey(0))
  params = {"student": p}
  # Built as the trainer does (committed, replicated like the step's output),
  # so the step does not compile a second time on its second call.
  state = jax.jit(lambda p, b: step_lib.new_train_state(tx, p, b),
                  out_shardings=repl)(params, {"student": bs})
  hp = jax.device_put(step_lib.hyperparams(config_lib.read_specs(c)), repl)
  spec = step_lib.make_spec(config_lib.read_specs(c), student, "vanilla", steps_per_epoch=1000,
                            teacher=teacher_model)
  raw_step = step_lib.make_train_step(spec, tx)
  step = jax.jit(raw_step, donate_argnums=0)
  rng = np.random.default_rng(0)
  n = batch * 8
  split = data.Split(rng.integers(0, classes, n).astype(np.int32),
                     rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
  host = next(data.train_batches(split, global_batch=batch, seed=0, epoch=0,
                                 num_steps=1, image_size=size))
  dev_batch = sharding.global_batch(host, mesh)
  cost = cost or (cpu_cost(raw_step, state, dev_batch, hp, t_vars) if with_cost
                  else {"flops": float("nan"), "bytes": float("nan")})
  for _ in range(3):
    state, m = step(state, dev_batch, hp, t_vars)
  jax.block_until_ready(state)

  def on_device():
    nonlocal state
    for _ in range(steps):
      state, _ = step(state, dev_batch, hp, t_vars)
    jax.block_until_ready(state)

  t_dev = timed(on_device, 3, warmup=0) / steps
  sync, state = pipeline_rate(step, state, hp, t_vars, split, batch, size,
                              mesh, steps, 0)
  ahead, state = pipeline_rate(step, state, hp, t_vars, split, batch, size,
                               mesh, steps, prefetch_depth)
  return {"step_s": t_dev, "images_per_s": batch / t_dev,
          "pipeline_images_per_s": sync, "prefetch_images_per_s": ahead,
          "prefetch_depth": prefetch_depth, **cost}


def grid_step(student_name, size, classes, batch, steps, cells):
  """The vmapped T x alpha grid: `cells` vanilla-KD cells in one step, fed
  cached teacher logits."""
  configs = []
  for t in GRID_T:
    for a in GRID_ALPHA:
      c = config_lib.base_config()
      c.dataset.image_size, c.batch_size = size, batch
      c.kd.method, c.kd.temperature, c.kd.alpha = "vanilla", float(t), a
      configs.append(c)
  configs = configs[:cells]
  mesh = sharding.make_mesh()
  repl = sharding.replicated(mesh)
  student = models.get_model(student_name, num_classes=classes)
  tx = step_lib.make_optimizer(*config_lib.optimizer_and_kd(configs[0]), learning_rate=1e-3, num_epochs=1,
                               steps_per_epoch=1000, ctkd=False)
  p, bs = model_init.init_variables(student, configs[0], mesh, jax.random.PRNGKey(0))
  one = step_lib.new_train_state(tx, {"student": p}, {"student": bs})
  states = jax.device_put(
      jax.tree.map(lambda x: jnp.stack([x] * len(configs)), one), repl)
  hp = jax.device_put(step_lib.stack_hyperparams([config_lib.read_specs(k) for k in configs]), repl)
  active = jax.device_put(jnp.ones(len(configs), bool), repl)
  spec = step_lib.make_spec(config_lib.read_specs(configs[0]), student, "vanilla",
                            steps_per_epoch=1000)
  raw = sweep.make_sweep_step(spec, tx)
  step = jax.jit(raw, donate_argnums=0)
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(0, classes, batch).astype(np.int32),
                     rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  host = next(data.train_batches(split, global_batch=batch, seed=0, epoch=0,
                                 num_steps=1, image_size=size))
  host["teacher_logits"] = rng.normal(size=(batch, classes)).astype(np.float32)
  dev_batch = sharding.global_batch(host, mesh)
  # One cell's step times the cells: XLA's cost analysis counts a vmapped
  # depthwise convolution (grouped, cells x channels groups) as if it were
  # dense, over 100x too many FLOPs for MobileNetV3.
  single = cpu_cost(step_lib.make_train_step(spec, tx), one, dev_batch,
                    step_lib.hyperparams(config_lib.read_specs(configs[0])), None)
  cost = {k: v * len(configs) for k, v in single.items()}
  for _ in range(3):
    states, _ = step(states, hp, active, dev_batch, None)
  jax.block_until_ready(states)

  def run():
    nonlocal states
    for _ in range(steps):
      states, _ = step(states, hp, active, dev_batch, None)
    jax.block_until_ready(states)
  t = timed(run, 3, warmup=0) / steps
  return {"step_s": t, "images_per_s": len(configs) * batch / t,
          "cells": len(configs), **cost}


def torch_step(teacher_name, student_name, size, classes, batch, steps, bf16,
               options=frozenset(), allow_cpu=False):
  """The PyTorch peer's images/s as a performance-minded user runs it: TF32
  (as JAX's default float32 precision on this GPU), cuDNN autotuning, fused
  Adam; `options`: 'cl' (channels_last), 'compile' (torch.compile). The
  models are kd_step_vs_torch.py's (torchvision's for the echo case);
  None without torch, or without a GPU unless `allow_cpu`."""
  try:
    import torch
  except ImportError:
    return None
  cuda = torch.cuda.is_available()
  if not (cuda or allow_cpu):
    return None
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
  torch.backends.cudnn.benchmark = True
  dev = torch.device("cuda" if cuda else "cpu")
  fmt = torch.channels_last if "cl" in options else torch.contiguous_format
  build = torch_models()
  teacher = build[teacher_name](classes, size).to(dev, memory_format=fmt).eval()
  student = build[student_name](classes, size).to(
      dev, memory_format=fmt).train()
  opt = torch.optim.Adam(student.parameters(), lr=1e-3, fused=cuda)
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  autocast = "cuda" if cuda else "cpu"
  x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                     device=dev).contiguous(memory_format=fmt)
  y = torch.randint(0, classes, (batch,), device=dev)
  t_, a_ = 4.0, 0.5

  def loss_fn(x8, y):
    x = (x8.float() / 255.0 - 0.5) / 0.5
    with torch.autocast(autocast, dtype=torch.bfloat16, enabled=bf16):
      with torch.no_grad():
        zt = teacher(x)
      zs = student(x)
    zs, zt = zs.float(), zt.float()
    kl = torch.nn.functional.kl_div(torch.log_softmax(zs / t_, -1),
                                    torch.log_softmax(zt / t_, -1),
                                    reduction="batchmean", log_target=True)
    return a_ * t_**2 * kl + (1 - a_) * torch.nn.functional.cross_entropy(zs, y)

  fwd = torch.compile(loss_fn) if "compile" in options else loss_fn

  def one():
    loss = fwd(x8, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  for _ in range(5):
    one()
  sync()

  def run():
    for _ in range(steps):
      one()
    sync()
  t = timed(run, 3, warmup=0) / steps
  return {"images_per_s": batch / t}


def best_torch(args, tname, sname, size, classes, batch, bf16):
  """{variant: images/s} of the torch variants and the best one's name."""
  rates = {}
  for v in args.torch_variants.split(","):
    opts = frozenset() if v == "eager" else frozenset(v.split("+"))
    try:
      r = torch_step(tname, sname, size, classes, batch, args.steps, bf16, opts,
                     allow_cpu=args.torch_cpu)
    except Exception as e:  # a variant that fails (e.g. compile) is reported
      print(f"torch {v}: {type(e).__name__}: {str(e)[:200]}", flush=True)
      continue
    if r is None:
      return {}, None
    rates[v] = r["images_per_s"]
  if not rates:
    return {}, None
  return rates, max(rates, key=rates.get)


HEAD = ("case", "batch", "prec", "kd_jax img/s", "sync pipeline img/s",
        "prefetch pipeline img/s", "torch img/s", "jax/torch", "TFLOP/s",
        "% of matmul", "TB/s", "% of copy")


def with_fractions(r, ceil, bf16):
  """Row `r` with its TFLOP/s and TB/s as fractions of the ceilings."""
  peak = ceil["matmul_bfloat16_tflops" if bf16 else "matmul_float32_tflops"]
  tflops = r["flops"] / r["step_s"] / 1e12
  tbps = r["bytes"] / r["step_s"] / 1e12
  return {**r, "precision": "bf16" if bf16 else "f32", "tflops": tflops,
          "flop_fraction": tflops / peak, "tb_per_s": tbps,
          "bandwidth_fraction": tbps / ceil["copy_tb_per_s"]}


def format_row(r) -> str:
  t = r.get("torch_images_per_s")
  pipe = r.get("pipeline_images_per_s")
  ahead = r.get("prefetch_images_per_s")
  return " | ".join([
      r["case"], str(r["batch"]), r["precision"], f"{r['images_per_s']:.0f}",
      f"{pipe:.0f}" if pipe else "-", f"{ahead:.0f}" if ahead else "-",
      f"{t:.0f} ({r['torch_best']})" if t else "-",
      f"{r['images_per_s'] / t:.2f}" if t else "-", f"{r['tflops']:.1f}",
      f"{100 * r['flop_fraction']:.1f}", f"{r['tb_per_s']:.2f}",
      f"{100 * r['bandwidth_fraction']:.1f}"])


def measure(args, ceil):
  """Yields the table's rows, one measurement at a time."""
  for case in args.cases.split(","):
    tname, sname, size, classes = ALL_CASES[case]
    for batch in map(int, args.batch.split(",") if not args.no_single else ()):
      cost = None  # the bf16 row takes the f32 step's FLOPs and bytes
      for bf16 in (False, True):
        r = jax_step(tname, sname, size, classes, batch, args.steps, bf16, cost,
                     args.prefetch_depth, not args.no_cost)
        cost = {"flops": r["flops"], "bytes": r["bytes"]}
        rates, best = best_torch(args, tname, sname, size, classes, batch, bf16)
        yield with_fractions(
            {"case": case, "batch": batch, **r, "torch_variants": rates,
             "torch_best": best,
             "torch_images_per_s": rates[best] if best else None},
            ceil, bf16)
    if args.grid_cells:
      batch = GRID_BATCH[case]
      r = grid_step(sname, size, classes, batch, args.steps, args.grid_cells)
      yield with_fractions({"case": f"{case} grid x{r['cells']}",
                            "batch": batch, **r}, ceil, False)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", default="64,256")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--cases", default="echo,cifar")
  p.add_argument("--no_single", action="store_true",
                 help="the grid rows only")
  p.add_argument("--grid_cells", type=int, default=len(GRID_T) * len(GRID_ALPHA))
  p.add_argument("--ceiling_n", type=int, default=8192)
  p.add_argument("--torch_variants", default="eager,cl,cl+compile")
  p.add_argument("--torch_cpu", action="store_true",
                 help="run the PyTorch peer on the CPU when there is no GPU")
  p.add_argument("--prefetch_depth", type=int, default=2)
  p.add_argument("--no_cost", action="store_true",
                 help="skip XLA:CPU's cost analysis (the FLOP/s columns)")
  p.add_argument("--json", default="")
  args = p.parse_args()
  cpu_runtime.configure()  # as kd_jax's commands run; before the backend starts
  dev = jax.devices()[0]
  ceil = ceilings(args.ceiling_n)
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print("measured ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in ceil.items()))
  print(" | ".join(HEAD), flush=True)
  rows = []
  for r in measure(args, ceil):
    rows.append(r)
    print(format_row(r), flush=True)
    if args.json:
      with open(args.json, "w") as f:
        json.dump({"device": dev.device_kind, "ceilings": ceil, "rows": rows},
                  f, indent=1)


if __name__ == "__main__":
  main()
