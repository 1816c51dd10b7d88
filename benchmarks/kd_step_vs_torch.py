"""KD train-step throughput on the CPU: kd_jax against a plain PyTorch step,
measured one after the other in one run.

  .venv/bin/python benchmarks/kd_step_vs_torch.py [--cases=echo,cifar]
      [--steps=20] [--warmup=10] [--rounds=2] [--batch=64]
      [--torch_python=.venv-torch/bin/python] [--torch_malloc_reuse]

The torch side runs in a subprocess with `--torch_python` (a venv with torch
and torchvision; the kd_jax venv has no torch), which calls this file with
`--torch_worker` and prints one JSON line. JAX runs first, then torch; never
both at once.

Cases (float32, CPU): echo, VGG16 -> MobileNetV3-small at 112 px, 4 classes
(torch: torchvision's vgg16 / mobilenet_v3_small); cifar, vgg_cifar ->
simple_cnn at 32 px, 10 classes (torch: equivalents written here, with the
layer shapes of kd_jax/models/vgg.py and small.py; the parameter counts of
both sides are compared). One step on both sides: uint8 batch normalised
inside the step, teacher forward in inference mode without gradients,
student forward in training mode, loss = alpha T^2 KL(p_t || p_s) +
(1 - alpha) CE with T=4, alpha=0.5, backward, Adam (lr 1e-3) update.

Throughput is batch / the median time of one step (`--steps` timed steps
after `--warmup` untimed ones), for kd_jax's jitted step (a) with a batch
already on the device and (b) with batches from kd_jax's input pipeline
(host arrays -> device every step), and for torch (a) with a ready uint8
tensor and (b) with a host numpy batch gathered and turned into a tensor
every step (no DataLoader). A last kd_jax column feeds the same step the
teacher's cached logits instead of running the teacher (kd_jax's teacher
cache runs the teacher once per split, before training): different work from the
peer's step, so it is kept out of the like-for-like ratios. Prints a
markdown table for benchmarks/RESULTS.md.

Both sides are measured `--rounds` times, alternating (kd_jax, torch,
kd_jax, torch, ...), and every rate printed is the best of its rounds: on a
shared 2-core machine one pass of either side can come out 10-25% slower
than the next, and taking each side's best keeps such noise from deciding
the ratios. A second table gives each round's own kd_jax/torch ratio and
their median, min and max (the two sides of a round run back to back). A
third gives the minor page faults per step of both sides;
`--torch_malloc_reuse` starts the torch worker with the glibc malloc
settings kd_jax makes for itself (kd_jax/cpu_runtime.py), to see how much of
a difference comes from page faults.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# name -> (teacher, student, image size, classes)
CASES = {"echo": ("vgg16", "mobilenet_v3_small", 112, 4),
         "cifar": ("vgg_cifar", "simple_cnn", 32, 10)}
TEMPERATURE, ALPHA, LR = 4.0, 0.5, 1e-3
HOST_BATCHES = 8  # the host data set holds this many batches
# kd_jax/models/vgg.py CFG_CIFAR and small.py SimpleCNN widths.
VGG_CIFAR_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                 512, 512, 512, 512, "M")
SIMPLE_CNN_WIDTHS = (88, 176)


def median_step_time(fn, steps, warmup):
  """Median seconds per call of fn over `steps` calls after `warmup`."""
  return step_time_and_faults(fn, steps, warmup)[0]


def step_time_and_faults(fn, steps, warmup):
  """(median seconds per step, minor page faults per step) over `steps`."""
  for _ in range(warmup):
    fn()
  times = []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
  return statistics.median(times), faults / steps


def host_data(batch, size, classes):
  """uint8 NHWC images and int32 labels of HOST_BATCHES batches (seed 0)."""
  rng = np.random.default_rng(0)
  n = batch * HOST_BATCHES
  return (rng.integers(0, classes, n).astype(np.int32),
          rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


# ------------------------------------------------------------------ kd_jax


def jax_case(case, batch, steps, warmup):
  import jax

  from kd_jax import config_lib, data, models, sharding, stage
  from kd_jax import step as step_lib
  from kd_jax.models import profile

  tname, sname, size, classes = CASES[case]
  c = config_lib.base_config()
  c.dataset.image_size, c.batch_size = size, batch
  c.kd.method, c.kd.temperature, c.kd.alpha = "vanilla", TEMPERATURE, ALPHA
  mesh = sharding.make_mesh()
  student = models.get_model(sname, num_classes=classes)
  teacher_model = models.get_model(tname, num_classes=classes)
  t_vars = jax.device_put(profile.random_variables(tname, classes, size, seed=1),
                          sharding.replicated(mesh))
  repl = sharding.replicated(mesh)
  tx = step_lib.make_optimizer(c, learning_rate=LR, num_epochs=1,
                               steps_per_epoch=1000, ctkd=False)
  p, bs = stage.init_variables(student, c, mesh, jax.random.PRNGKey(0))
  # Built as the trainer does (Stage.init_state): committed and replicated
  # like the step's output, so the second call does not compile again.
  state = jax.jit(lambda p, b: step_lib.new_train_state(tx, p, b),
                  out_shardings=repl)({"student": p}, {"student": bs})
  hp = jax.device_put(step_lib.hyperparams(c), repl)
  spec = step_lib.make_spec(c, student, "vanilla", steps_per_epoch=1000,
                            teacher=teacher_model)
  step = jax.jit(step_lib.make_train_step(spec, tx), donate_argnums=0)
  split = data.Split(*host_data(batch, size, classes))

  def host_batches():
    for epoch in itertools.count():
      yield from data.train_batches(split, global_batch=batch, seed=0,
                                    epoch=epoch, num_steps=HOST_BATCHES,
                                    image_size=size)

  batches = host_batches()
  dev_batch = sharding.global_batch(next(batches), mesh)

  def one(get_batch):
    nonlocal state
    state, _ = step(state, get_batch(), hp, t_vars)
    jax.block_until_ready(state)

  t_dev, faults = step_time_and_faults(lambda: one(lambda: dev_batch),
                                       steps, warmup)
  t_pipe, _ = step_time_and_faults(
      lambda: one(lambda: sharding.global_batch(next(batches), mesh)),
      steps, warmup)
  # The same step fed the teacher's cached logits (kd_jax/teacher_cache.py
  # computes them once per split, before training).
  # Not the same work as the peer's step: reported in its own column.
  t_logits = jax.jit(lambda v, x: teacher_model.apply(
      v, step_lib.Preprocess.from_config(c)(x), train=False))(
          t_vars, dev_batch["image"])
  cached_batch = {**dev_batch, "teacher_logits": t_logits}
  t_cached, _ = step_time_and_faults(lambda: one(lambda: cached_batch),
                                     steps, warmup)
  return {"cached_images_per_s": batch / t_cached, "faults_per_step": faults,
          "teacher_params": stage.param_count(t_vars["params"]),
          "student_params": stage.param_count(p),
          "images_per_s": batch / t_dev, "pipeline_images_per_s": batch / t_pipe}


# ------------------------------------------------------------------- torch


def torch_models():
  """name -> builder(num_classes, image_size) of a torch.nn.Module."""
  import torch.nn as nn
  import torchvision

  def vgg_cifar(num_classes, size):
    layers, c_in = [], 3
    for v in VGG_CIFAR_CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.ReLU(inplace=True)]
        c_in = v
    return nn.Sequential(
        *layers, nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
        nn.Linear(2 * 2 * c_in, 1024), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(1024, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(512, num_classes))

  def simple_cnn(num_classes, size):
    layers, c_in = [], 3
    for w in SIMPLE_CNN_WIDTHS:
      layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.ReLU(inplace=True),
                 nn.MaxPool2d(2, 2)]
      c_in, size = w, size // 2
    return nn.Sequential(*layers, nn.Flatten(),
                         nn.Linear(size * size * c_in, num_classes))

  return {"vgg16": lambda k, _: torchvision.models.vgg16(num_classes=k),
          "mobilenet_v3_small":
              lambda k, _: torchvision.models.mobilenet_v3_small(num_classes=k),
          "vgg_cifar": vgg_cifar, "simple_cnn": simple_cnn}


def torch_case(case, batch, steps, warmup):
  import torch
  import torch.nn.functional as F

  tname, sname, size, classes = CASES[case]
  builders = torch_models()
  torch.manual_seed(0)
  teacher = builders[tname](classes, size).eval()
  student = builders[sname](classes, size).train()
  opt = torch.optim.Adam(student.parameters(), lr=LR)
  labels, images = host_data(batch, size, classes)

  def host_batches():
    for epoch in itertools.count():
      perm = np.random.default_rng([0, epoch]).permutation(len(labels))
      for s in range(HOST_BATCHES):
        idx = perm[s * batch:(s + 1) * batch]
        yield images[idx], labels[idx]

  def to_tensors(host):
    x8, y = host
    return (torch.from_numpy(x8).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(y).long())

  def one(x8, y):
    x = (x8.float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
      zt = teacher(x)
    zs = student(x)
    kl = F.kl_div(F.log_softmax(zs / TEMPERATURE, -1),
                  F.log_softmax(zt / TEMPERATURE, -1),
                  reduction="batchmean", log_target=True)
    loss = ALPHA * TEMPERATURE**2 * kl + (1 - ALPHA) * F.cross_entropy(zs, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  batches = host_batches()
  ready = to_tensors(next(batches))
  t_ready, faults = step_time_and_faults(lambda: one(*ready), steps, warmup)
  t_host, _ = step_time_and_faults(lambda: one(*to_tensors(next(batches))),
                                   steps, warmup)

  def count(m):
    return sum(q.numel() for q in m.parameters() if q.requires_grad)

  return {"teacher_params": count(teacher), "student_params": count(student),
          "images_per_s": batch / t_ready, "host_images_per_s": batch / t_host,
          "faults_per_step": faults}


def torch_worker(args):
  import torch
  import torchvision

  torch.set_num_threads(os.cpu_count())
  out = {"torch": torch.__version__, "torchvision": torchvision.__version__,
         "threads": torch.get_num_threads(), "cases": {}}
  for case in args.cases.split(","):
    out["cases"][case] = torch_case(case, args.batch, args.steps, args.warmup)
  print(json.dumps(out), flush=True)


def run_torch(args):
  """The worker's JSON, or None (with a warning) if it could not run."""
  python = args.torch_python
  if not os.path.isabs(python):
    python = os.path.join(REPO, python)
  if not os.path.exists(python):
    print(f"WARNING: no torch python at {python}: torch columns left empty",
          file=sys.stderr)
    return None
  cmd = [python, os.path.abspath(__file__), "--torch_worker",
         f"--cases={args.cases}", f"--steps={args.steps}",
         f"--warmup={args.warmup}", f"--batch={args.batch}"]
  env = dict(os.environ)
  if args.torch_malloc_reuse:
    # glibc settings of kd_jax/cpu_runtime.py, given to torch at start-up
    # (its ops allocate on the main thread, so no dispatch change is needed).
    env.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(1 << 40))
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    print(f"WARNING: torch worker failed (exit {proc.returncode}): torch "
          "columns left empty", file=sys.stderr)
    return None
  return json.loads(lines[-1])


# -------------------------------------------------------------------- main


def ratio(a, b):
  return f"{a / b:.2f}" if a and b else "-"


def rate(x):
  return f"{x:.1f}" if x else "-"


def report(args, jax_rows, tr, host_memory_reuse):
  import flax
  import jax

  from kd_jax.deployment import cpu_name

  torch_info = (f"torch {tr['torch']} (torchvision {tr['torchvision']}, "
                f"{tr['threads']} threads"
                f"{', glibc heap reuse' if args.torch_malloc_reuse else ''})"
                if tr else "torch: not run")
  print(f"Machine: {cpu_name()}, Python "
        f"{platform.python_version()}; jax {jax.__version__} (flax "
        f"{flax.__version__}, backend {jax.default_backend()}), {torch_info}; "
        f"{datetime.date.today()}.")
  print(f"float32, batch {args.batch}, images/s = batch / median step time "
        f"over {args.steps} steps after {args.warmup} warm-up steps, best of "
        f"{args.rounds} alternating rounds per side.\n")
  print("| case | teacher -> student | px | kd_jax on-device img/s | "
        "kd_jax pipeline img/s | torch ready img/s | torch host->tensor img/s "
        "| kd_jax/torch (ready) | kd_jax/torch (pipeline vs host) | "
        "kd_jax pipeline/on-device | torch host/ready | kd_jax cached-teacher "
        "img/s | kd_jax cached / torch (ready) |")
  print("|" + "---|" * 13)
  mismatches = []
  for case, r in jax_rows.items():
    tname, sname, size, _ = CASES[case]
    t = tr["cases"][case] if tr else {}
    for role, name in (("teacher", tname), ("student", sname)):
      key = f"{role}_params"
      if t and t[key] != r[key]:
        mismatches.append(f"{case} {role} {name}: kd_jax {r[key]:,} vs "
                          f"torch {t[key]:,}")
    ti, th = t.get("images_per_s"), t.get("host_images_per_s")
    ji, jp = r["images_per_s"], r["pipeline_images_per_s"]
    print(f"| {case} | {tname} -> {sname} | {size} | {rate(ji)} | {rate(jp)} "
          f"| {rate(ti)} | {rate(th)} | {ratio(ji, ti)} | {ratio(jp, th)} | "
          f"{ratio(jp, ji)} | {ratio(th, ti)} | {rate(r['cached_images_per_s'])} "
          f"| {ratio(r['cached_images_per_s'], ti)} |")
  print("\n| case | model | kd_jax params | torch params |")
  print("|---|---|---|---|")
  for case, r in jax_rows.items():
    tname, sname = CASES[case][:2]
    t = tr["cases"][case] if tr else {}
    for role, name in (("teacher", tname), ("student", sname)):
      key = f"{role}_params"
      torch_count = f"{t[key]:,}" if t else "-"
      print(f"| {case} | {name} | {r[key]:,} | {torch_count} |")
  # Page faults: a step that gets fresh memory from the OS pays for every
  # page it touches (see kd_jax/cpu_runtime.py).
  print(f"\nMinor page faults per timed step (most over the rounds; kd_jax "
        f"host-memory reuse {'on' if host_memory_reuse else 'off'}):\n")
  print("| case | kd_jax on-device | torch ready |")
  print("|---|---|---|")
  for case, r in jax_rows.items():
    t = tr["cases"][case] if tr else {}
    torch_faults = f"{t['faults_per_step']:,.0f}" if t else "-"
    print(f"| {case} | {r['faults_per_step']:,.0f} | {torch_faults} |")
  for m in mismatches:
    banner = "!" * 72
    print(f"\n{banner}\nWARNING: PARAMETER COUNTS DIFFER: {m}\n"
          f"the torch model is not the kd_jax model; the ratios compare "
          f"different networks\n{banner}", file=sys.stderr)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default="echo,cifar")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--warmup", type=int, default=10)
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--torch_python", default=".venv-torch/bin/python")
  p.add_argument("--torch_malloc_reuse", action="store_true",
                 help="give the torch worker the glibc malloc settings kd_jax "
                 "makes for itself (large freed blocks kept in the heap)")
  p.add_argument("--torch_worker", action="store_true",
                 help="internal: run the torch side and print one JSON line")
  args = p.parse_args()
  unknown = set(args.cases.split(",")) - set(CASES)
  if unknown:
    p.error(f"unknown cases {sorted(unknown)}; allowed: {sorted(CASES)}")
  if args.torch_worker:
    torch_worker(args)
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from kd_jax import cpu_runtime
  host_memory_reuse = cpu_runtime.configure()  # as kd_jax's commands run
  jax_rounds, torch_rounds = [], []
  for r in range(args.rounds):
    rows = {}
    for case in args.cases.split(","):
      print(f"round {r + 1}: kd_jax {case} ...", file=sys.stderr, flush=True)
      rows[case] = jax_case(case, args.batch, args.steps, args.warmup)
    jax_rounds.append(rows)
    print(f"round {r + 1}: torch {args.cases} ...", file=sys.stderr, flush=True)
    tr = run_torch(args)
    if tr:
      torch_rounds.append(tr)
  tr = None
  if torch_rounds:
    tr = dict(torch_rounds[0], cases={
        case: best_of([t["cases"][case] for t in torch_rounds])
        for case in torch_rounds[0]["cases"]})
  jax_rows = {case: best_of([rows[case] for rows in jax_rounds])
              for case in jax_rounds[0]}
  report(args, jax_rows, tr, host_memory_reuse)
  report_rounds(jax_rounds, torch_rounds)


def report_rounds(jax_rounds, torch_rounds):
  """Each round's rates and the kd_jax/torch ratio within each round.

  A round measures kd_jax and then torch back to back, so the ratio of one
  round is less exposed to the machine's slow spells than the ratio of the
  two sides' best rounds; its median over the rounds is the figure to quote
  when the sides are close.
  """
  if not torch_rounds or len(torch_rounds) != len(jax_rounds):
    return
  print("\nPer round (kd_jax on-device img/s / torch ready img/s = ratio):\n")
  print("| case | rounds | median ratio | min | max |")
  print("|---|---|---|---|---|")
  for case in jax_rounds[0]:
    pairs = [(j[case]["images_per_s"], t["cases"][case]["images_per_s"])
             for j, t in zip(jax_rounds, torch_rounds)]
    ratios = [a / b for a, b in pairs]
    detail = ", ".join(f"{a:.1f}/{b:.1f} = {a / b:.2f}" for a, b in pairs)
    print(f"| {case} | {detail} | {statistics.median(ratios):.2f} | "
          f"{min(ratios):.2f} | {max(ratios):.2f} |")


def best_of(rounds):
  """Per key, the largest value over the rounds (rates: the best round)."""
  return {k: max(r[k] for r in rounds) for k in rounds[0]}


if __name__ == "__main__":
  main()
