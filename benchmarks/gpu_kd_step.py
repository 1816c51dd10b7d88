"""KD train-step throughput on a GPU, against the device's measured ceilings
and a PyTorch peer, in one run.

  python benchmarks/gpu_kd_step.py [--batch=64,256] [--steps=30]

Cases: VGG16 -> MobileNetV3-small at 112 px, 4 classes (the echo recipe) and
vgg_cifar -> simple_cnn at 32 px, 10 classes. For each batch size: kd_jax's
jitted KD step (float32, and bf16 with `mixed_precision=True`) with a batch
already on the device and with batches from kd_jax's input pipeline
(host arrays -> device every step); the same step in PyTorch (torchvision
models, float32, and bf16 autocast). The step's FLOPs and bytes come from
XLA's cost analysis of the compiled step; they are divided by the measured
ceilings of this device: a large bf16 and float32 matrix product (FLOP/s)
and a large device-to-device copy (bytes read + written per second).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax import config_lib, cpu_runtime, data, models, sharding, stage  # noqa: E402
from kd_jax import step as step_lib  # noqa: E402
from kd_step_vs_torch import CASES, median_step_time  # noqa: E402


def ceilings():
  """Measured matmul FLOP/s (bf16, f32) and copy bandwidth of this device."""
  out = {}
  n = 8192
  for dtype in (jnp.bfloat16, jnp.float32):
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    mm = jax.jit(lambda a, b: a @ b)
    mm(a, b).block_until_ready()
    t = median_step_time(lambda: mm(a, b).block_until_ready(), 10, warmup=0)
    out[f"matmul_{jnp.dtype(dtype).name}_tflops"] = 2 * n**3 / t / 1e12
  x = jax.random.normal(jax.random.PRNGKey(2), (256 * 1024 * 1024,), jnp.float32)
  cp = jax.jit(lambda x: x + 1.0)  # one read + one write of 1 GiB
  cp(x).block_until_ready()
  t = median_step_time(lambda: cp(x).block_until_ready(), 10, warmup=0)
  out["copy_tb_per_s"] = 2 * x.size * 4 / t / 1e12
  return out


def jax_step(teacher_name, student_name, size, classes, batch, steps, bf16):
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
  tx = step_lib.make_optimizer(c, learning_rate=1e-3, num_epochs=1,
                               steps_per_epoch=1000, ctkd=False)
  p, bs = stage.init_variables(student, c, mesh, jax.random.PRNGKey(0))
  params = {"student": p}
  # Built as the trainer does (committed, replicated like the step's output),
  # so the step does not compile a second time on its second call.
  state = jax.jit(lambda p, b: step_lib.new_train_state(tx, p, b),
                  out_shardings=repl)(params, {"student": bs})
  hp = jax.device_put(step_lib.hyperparams(c), repl)
  spec = step_lib.make_spec(c, student, "vanilla", steps_per_epoch=1000,
                            teacher=teacher_model)
  step = jax.jit(step_lib.make_train_step(spec, tx), donate_argnums=0)
  rng = np.random.default_rng(0)
  n = batch * 8
  split = data.Split(rng.integers(0, classes, n).astype(np.int32),
                     rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
  host = next(data.train_batches(split, global_batch=batch, seed=0, epoch=0,
                                 num_steps=1, image_size=size))
  dev_batch = sharding.global_batch(host, mesh)
  cost = step.lower(state, dev_batch, hp, t_vars).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  for _ in range(3):
    state, m = step(state, dev_batch, hp, t_vars)
  jax.block_until_ready(state)

  def on_device():
    nonlocal state
    for _ in range(steps):
      state, _ = step(state, dev_batch, hp, t_vars)
    jax.block_until_ready(state)

  def pipeline():
    nonlocal state
    for e in range(10**6):
      for hb in data.train_batches(split, global_batch=batch, seed=0, epoch=e,
                                   num_steps=8, image_size=size):
        state, _ = step(state, sharding.global_batch(hb, mesh), hp, t_vars)
        pipeline.count += 1
        if pipeline.count >= steps:
          jax.block_until_ready(state)
          return
  t_dev = median_step_time(on_device, 3, warmup=0) / steps
  pipeline.count = 0
  t0 = time.perf_counter()
  pipeline()
  t_pipe = (time.perf_counter() - t0) / steps
  return {"step_s": t_dev, "images_per_s": batch / t_dev,
          "pipeline_images_per_s": batch / t_pipe,
          "flops": float(cost.get("flops", float("nan"))),
          "bytes": float(cost.get("bytes accessed", float("nan")))}


def torch_step(teacher_name, student_name, size, classes, batch, steps, bf16):
  try:
    import torch
    import torchvision
  except ImportError:
    return None
  if teacher_name != "vgg16":
    return None  # the torch peer covers the echo case (torchvision models)
  dev = torch.device("cuda")
  teacher = torchvision.models.vgg16(num_classes=classes).to(dev).eval()
  student = torchvision.models.mobilenet_v3_small(num_classes=classes).to(dev).train()
  opt = torch.optim.Adam(student.parameters(), lr=1e-3)
  x8 = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=dev)
  y = torch.randint(0, classes, (batch,), device=dev)
  t_, a_ = 4.0, 0.5

  def one():
    x = (x8.float() / 255.0 - 0.5) / 0.5
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
      with torch.no_grad():
        zt = teacher(x)
      zs = student(x)
    zs, zt = zs.float(), zt.float()
    kl = torch.nn.functional.kl_div(torch.log_softmax(zs / t_, -1),
                                    torch.log_softmax(zt / t_, -1),
                                    reduction="batchmean", log_target=True)
    loss = a_ * t_**2 * kl + (1 - a_) * torch.nn.functional.cross_entropy(zs, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  for _ in range(5):
    one()
  torch.cuda.synchronize()

  def run():
    for _ in range(steps):
      one()
    torch.cuda.synchronize()
  t = median_step_time(run, 3, warmup=0) / steps
  return {"images_per_s": batch / t}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--batch", default="64,256")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--cases", default="echo,cifar")
  p.add_argument("--json", default="")
  args = p.parse_args()
  cpu_runtime.configure()  # as kd_jax's commands run; before the backend starts
  dev = jax.devices()[0]
  ceil = ceilings()
  print(f"device: {dev.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
  print("measured ceilings: " + ", ".join(f"{k} {v:.1f}" for k, v in ceil.items()))
  rows = []
  for case in args.cases.split(","):
    tname, sname, size, classes = CASES[case]
    for batch in map(int, args.batch.split(",")):
      for bf16 in (False, True):
        r = jax_step(tname, sname, size, classes, batch, args.steps, bf16)
        tr = torch_step(tname, sname, size, classes, batch, args.steps, bf16)
        peak = ceil["matmul_bfloat16_tflops" if bf16 else "matmul_float32_tflops"]
        tflops = r["flops"] / r["step_s"] / 1e12
        tbps = r["bytes"] / r["step_s"] / 1e12
        rows.append({
            "case": case, "batch": batch, "precision": "bf16" if bf16 else "f32",
            **r, "tflops": tflops, "flop_fraction": tflops / peak,
            "tb_per_s": tbps, "bandwidth_fraction": tbps / ceil["copy_tb_per_s"],
            "torch_images_per_s": tr["images_per_s"] if tr else None})
  head = ("case", "batch", "prec", "kd_jax img/s", "pipeline img/s",
          "torch img/s", "jax/torch", "TFLOP/s", "% of matmul", "TB/s", "% of copy")
  print(" | ".join(head))
  for r in rows:
    t = r["torch_images_per_s"]
    print(" | ".join([
        r["case"], str(r["batch"]), r["precision"], f"{r['images_per_s']:.0f}",
        f"{r['pipeline_images_per_s']:.0f}", f"{t:.0f}" if t else "-",
        f"{r['images_per_s'] / t:.2f}" if t else "-", f"{r['tflops']:.1f}",
        f"{100 * r['flop_fraction']:.1f}", f"{r['tb_per_s']:.2f}",
        f"{100 * r['bandwidth_fraction']:.1f}"]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": dev.device_kind, "ceilings": ceil, "rows": rows}, f,
                indent=1)


if __name__ == "__main__":
  main()
