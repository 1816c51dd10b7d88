"""KD train-step throughput on the CPU: kd_jax against PyTorch, plain and
tuned, measured in alternating rounds in one run.

  .venv/bin/python benchmarks/kd_step_vs_torch.py [--cases=echo,cifar]
      [--steps=20] [--warmup=10] [--rounds=3] [--batch=64] [--image_size=0]
      [--torch_python=.venv-torch/bin/python]
      [--torch_variants=eager,cl,compile,malloc,cl+compile,...]
      [--no-bf16_teacher] [--quick]

The torch side runs in subprocesses with `--torch_python` (a venv with torch
and torchvision; the kd_jax venv need not have torch): one per variant and
round, each calling this file with `--torch_worker` and printing one JSON
line, so no variant inherits another's heap or compiled code. A variant is
a '+'-joined set of options ('eager' = none):
  cl       channels_last memory format for both models and the input;
  compile  torch.compile (inductor) of the teacher and the student;
  malloc   the worker starts with the glibc settings kd_jax makes for
           itself (kd_jax/cpu_runtime.py) as MALLOC_MMAP_MAX_ and
           MALLOC_TRIM_THRESHOLD_; glibc reads them at start-up, so every
           other variant starts with all MALLOC_* and GLIBC_TUNABLES
           removed from its environment.
The default runs all 8 combinations. kd_jax runs in this process (float32,
and unless --no-bf16_teacher once more with teacher.compute_dtype=bfloat16:
a speed option, not the peer's float32 work, so kept out of the float32
ratios); the CPU's avx512_bf16 / amx flags are printed with the results.

Cases (CPU): echo, VGG16 -> MobileNetV3-small at 112 px, 4 classes (torch:
torchvision's vgg16 / mobilenet_v3_small); cifar, vgg_cifar -> simple_cnn at
32 px, 10 classes (torch: equivalents written here, with the layer shapes of
kd_jax/models/vgg.py and small.py; the parameter counts of both sides are
compared). One step on both sides: uint8 batch normalised inside the step,
teacher forward in inference mode without gradients, student forward in
training mode, loss = alpha T^2 KL(p_t || p_s) + (1 - alpha) CE with T=4,
alpha=0.5, backward, Adam (lr 1e-3) update.

Throughput is batch / the median time of one step (`--steps` timed steps
after `--warmup` untimed ones, which include torch.compile's compilation),
for kd_jax's jitted step (a) with a batch already on the device and (b) with
batches from kd_jax's input pipeline (host arrays -> device every step), and
for torch (a) with a ready uint8 tensor and, for the eager variant only, (b)
with a host numpy batch gathered and turned into a tensor every step (no
DataLoader). A kd_jax column feeds the same step the teacher's cached logits
instead of running the teacher (kd_jax's teacher cache runs the teacher once
per split, before training): different work from the peer's step, so it is
kept out of the like-for-like ratios.

Every round measures kd_jax, then each torch variant (their order rotates
from round to round), all cases in each. Per round the script prints every
variant's images/s, the best torch variant, and kd_jax / best; then the
median of those ratios over the rounds (the figure to quote: the two sides
of a round run back to back, which cancels most of a shared machine's slow
spells, 10-25% from one pass to the next on 2 cores). The first table,
kept comparable with earlier runs, gives each side's best round against
the eager variant; the last, minor page faults per step.

`--quick` is a smoke run at tiny sizes (batch 4, 32 px, 2 steps after 1
warm-up, 1 round; values given explicitly win): it checks that every
variant runs, and measures nothing worth keeping.
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
TORCH_OPTIONS = ("cl", "compile", "malloc")
TORCH_VARIANTS = ("eager", "cl", "compile", "malloc", "cl+compile",
                  "cl+malloc", "compile+malloc", "cl+compile+malloc")
# kd_jax/cpu_runtime.py's mallopt settings, as glibc's start-up variables.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
CPU_FLAGS = ("avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
QUICK = {"batch": 4, "image_size": 32, "steps": 2, "warmup": 1, "rounds": 1}
DEFAULTS = {"batch": 64, "image_size": 0, "steps": 20, "warmup": 10,
            "rounds": 3}


def variant_options(name) -> frozenset:
  """'cl+malloc' -> {'cl', 'malloc'}; 'eager' -> {}."""
  return frozenset() if name == "eager" else frozenset(name.split("+"))


def step_time_and_faults(fn, steps, warmup):
  """(median seconds per step, minor page faults per step, warm-up seconds)
  over `steps` calls of fn after `warmup` untimed ones."""
  t0 = time.perf_counter()
  for _ in range(warmup):
    fn()
  warm_s = time.perf_counter() - t0
  times = []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
  return statistics.median(times), faults / steps, warm_s


def host_data(batch, size, classes):
  """uint8 NHWC images and int32 labels of HOST_BATCHES batches (seed 0)."""
  rng = np.random.default_rng(0)
  n = batch * HOST_BATCHES
  return (rng.integers(0, classes, n).astype(np.int32),
          rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def case_size(case, image_size):
  return image_size or CASES[case][2]


def cpu_flags() -> dict:
  """{flag: present} of CPU_FLAGS, from /proc/cpuinfo (empty elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      line = next((l for l in f if l.startswith("flags")), "")
  except OSError:
    return {}
  have = set(line.split(":", 1)[-1].split())
  return {flag: flag in have for flag in CPU_FLAGS}


# ------------------------------------------------------------------ kd_jax


def jax_setup(case, batch, size, teacher_dtype):
  """(config, mesh, the jitted step, state, hp, teacher variables,
  teacher module) of one case."""
  import jax

  from kd_jax import config_lib
  from kd_jax import models
  from kd_jax.models import profile
  from kd_jax.train import sharding
  from kd_jax.train import model_init
  from kd_jax.train import step as step_lib

  tname, sname, _, classes = CASES[case]
  c = config_lib.base_config()
  c.dataset.image_size, c.batch_size = size, batch
  c.kd.method, c.kd.temperature, c.kd.alpha = "vanilla", TEMPERATURE, ALPHA
  c.teacher.compute_dtype = teacher_dtype
  mesh = sharding.make_mesh()
  repl = sharding.replicated(mesh)
  student = models.get_model(sname, num_classes=classes)
  teacher = models.get_model(tname, num_classes=classes)
  t_vars = jax.device_put(profile.random_variables(tname, classes, size,
                                                   seed=1), repl)
  tx = step_lib.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=LR, num_epochs=1,
                               steps_per_epoch=1000, ctkd=False)
  p, bs = model_init.init_variables(student, c.dataset.image_size, mesh, jax.random.PRNGKey(0))
  # Built as the trainer does (Stage.init_state): committed and replicated
  # like the step's output, so the second call does not compile again.
  state = jax.jit(lambda p, b: step_lib.new_train_state(tx, p, b),
                  out_shardings=repl)({"student": p}, {"student": bs})
  hp = jax.device_put(step_lib.hyperparams(config_lib.read_specs(c)), repl)
  spec = step_lib.make_spec(config_lib.read_specs(c), student, "vanilla", steps_per_epoch=1000,
                            teacher=teacher)
  step = jax.jit(step_lib.make_train_step(spec, tx), donate_argnums=0)
  return c, mesh, step, state, hp, t_vars, teacher


def jax_case(case, batch, steps, warmup, size, teacher_dtype="float32"):
  """kd_jax's rates for one case; with a bf16 teacher, on-device only."""
  import jax

  from kd_jax import config_lib
  from kd_jax.data import datasets as data
  from kd_jax.train import sharding
  from kd_jax.train import model_init
  from kd_jax.train import step as step_lib

  c, mesh, step, state, hp, t_vars, teacher = jax_setup(
      case, batch, size, teacher_dtype)
  split = data.Split(*host_data(batch, size, CASES[case][3]))

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

  t_dev, faults, _ = step_time_and_faults(lambda: one(lambda: dev_batch),
                                          steps, warmup)
  out = {"images_per_s": batch / t_dev, "faults_per_step": faults,
         "teacher_params": model_init.param_count(t_vars["params"]),
         "student_params": model_init.param_count(state.params["student"])}
  if teacher_dtype != "float32":
    return out
  t_pipe = step_time_and_faults(
      lambda: one(lambda: sharding.global_batch(next(batches), mesh)),
      steps, warmup)[0]
  # The same step fed the teacher's cached logits (kd_jax/teacher_cache.py
  # computes them once per split, before training).
  t_logits = jax.jit(lambda v, x: teacher.apply(
      v, step_lib.Preprocess.from_spec(config_lib.data_spec(c))(x), train=False))(
          t_vars, dev_batch["image"])
  cached_batch = {**dev_batch, "teacher_logits": t_logits}
  t_cached = step_time_and_faults(lambda: one(lambda: cached_batch), steps,
                                  warmup)[0]
  return dict(out, pipeline_images_per_s=batch / t_pipe,
              cached_images_per_s=batch / t_cached)


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


def torch_step(case, size, options):
  """(one(x8, y): a KD step, to_tensors(host batch), teacher, student) of
  one case with the variant's `options` applied."""
  import torch
  import torch.nn.functional as F

  tname, sname, _, classes = CASES[case]
  builders = torch_models()
  torch.manual_seed(0)
  teacher = builders[tname](classes, size).eval()
  student = builders[sname](classes, size).train()
  fmt = (torch.channels_last if "cl" in options
         else torch.contiguous_format)
  teacher, student = teacher.to(memory_format=fmt), student.to(
      memory_format=fmt)
  opt = torch.optim.Adam(student.parameters(), lr=LR)
  t_fwd, s_fwd = teacher, student
  if "compile" in options:
    t_fwd, s_fwd = torch.compile(teacher), torch.compile(student)

  def to_tensors(host):
    x8, y = host  # NHWC: the permuted view is channels_last already
    return (torch.from_numpy(x8).permute(0, 3, 1, 2).contiguous(
        memory_format=fmt), torch.from_numpy(y).long())

  def one(x8, y):
    x = (x8.float() / 255.0 - 0.5) / 0.5
    with torch.no_grad():
      zt = t_fwd(x)
    zs = s_fwd(x)
    kl = F.kl_div(F.log_softmax(zs / TEMPERATURE, -1),
                  F.log_softmax(zt / TEMPERATURE, -1),
                  reduction="batchmean", log_target=True)
    loss = ALPHA * TEMPERATURE**2 * kl + (1 - ALPHA) * F.cross_entropy(zs, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  return one, to_tensors, teacher, student


def torch_case(case, batch, steps, warmup, size, options, host):
  """The torch variant's rates for one case (`host`: also the host->tensor
  rate)."""
  one, to_tensors, teacher, student = torch_step(case, size, options)
  labels, images = host_data(batch, size, CASES[case][3])

  def host_batches():
    for epoch in itertools.count():
      perm = np.random.default_rng([0, epoch]).permutation(len(labels))
      for s in range(HOST_BATCHES):
        idx = perm[s * batch:(s + 1) * batch]
        yield images[idx], labels[idx]

  batches = host_batches()
  ready = to_tensors(next(batches))
  t_ready, faults, warm_s = step_time_and_faults(lambda: one(*ready), steps,
                                                 warmup)

  def count(m):
    return sum(q.numel() for q in m.parameters() if q.requires_grad)

  out = {"teacher_params": count(teacher), "student_params": count(student),
         "images_per_s": batch / t_ready, "faults_per_step": faults,
         "warmup_s": warm_s}
  if host:
    t_host = step_time_and_faults(lambda: one(*to_tensors(next(batches))),
                                  steps, warmup)[0]
    out["host_images_per_s"] = batch / t_host
  return out


def torch_worker(args):
  import torch
  import torchvision

  torch.set_num_threads(os.cpu_count())
  options = variant_options(args.torch_variant)
  malloc_env = all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())
  if malloc_env != ("malloc" in options):
    raise SystemExit(f"variant {args.torch_variant}: the worker's malloc "
                     f"environment does not match ({malloc_env})")
  out = {"torch": torch.__version__, "torchvision": torchvision.__version__,
         "threads": torch.get_num_threads(), "variant": args.torch_variant,
         "cases": {}}
  for case in args.cases.split(","):
    out["cases"][case] = torch_case(
        case, args.batch, args.steps, args.warmup,
        case_size(case, args.image_size), options, args.torch_host)
  print(json.dumps(out), flush=True)


def torch_python(args):
  python = args.torch_python
  return python if os.path.isabs(python) else os.path.join(REPO, python)


def run_torch(args, variant):
  """The worker's JSON for one variant, or None (with a warning)."""
  cmd = [torch_python(args), os.path.abspath(__file__), "--torch_worker",
         f"--torch_variant={variant}", f"--cases={args.cases}",
         f"--steps={args.steps}", f"--warmup={args.warmup}",
         f"--batch={args.batch}", f"--image_size={args.image_size}"]
  if variant == "eager":
    cmd.append("--torch_host")
  # glibc reads its MALLOC_* variables once, at start-up: each variant gets
  # exactly its own settings, whatever this process was started with.
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
  if "malloc" in variant_options(variant):
    env.update(MALLOC_ENV)
  proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode or not lines:
    print(f"WARNING: torch variant {variant} failed (exit "
          f"{proc.returncode}): left out", file=sys.stderr)
    return None
  return json.loads(lines[-1])


# -------------------------------------------------------------------- main


def ratio(a, b):
  return f"{a / b:.2f}" if a and b else "-"


def rate(x):
  return f"{x:.1f}" if x else "-"


def best_of(rounds):
  """Per key, the largest value over the rounds (rates: the best round)."""
  return {k: max(r[k] for r in rounds) for k in rounds[0]}


def best_torch(torch_round, case):
  """(variant, img/s) of the fastest torch variant of one round and case."""
  rates = {v: r["cases"][case]["images_per_s"]
           for v, r in torch_round.items() if r}
  if not rates:
    return None, None
  v = max(rates, key=rates.get)
  return v, rates[v]


def torch_info(rounds):
  """'torch X (torchvision Y, N threads)' from the first worker that ran."""
  tr = next((r for rd in rounds for r in rd["torch"].values() if r), None)
  return (f"torch {tr['torch']} (torchvision {tr['torchvision']}, "
          f"{tr['threads']} threads)" if tr else "torch: not run")


def report_header(args, rounds, host_memory_reuse):
  import flax
  import jax

  from kd_jax.study.deployment import cpu_name

  flags = cpu_flags()
  have = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
  if flags and not (flags["avx512_bf16"] or flags["amx_bf16"]):
    have += " (no bf16 instructions: XLA emulates the bf16 teacher)"
  print(f"Machine: {cpu_name()}, Python {platform.python_version()}; jax "
        f"{jax.__version__} (flax {flax.__version__}, backend "
        f"{jax.default_backend()}), {torch_info(rounds)}; "
        f"{datetime.date.today()}.")
  print(f"CPU flags: {have or 'unknown (no /proc/cpuinfo)'}.")
  print(f"kd_jax host-memory reuse {'on' if host_memory_reuse else 'off'}; "
        f"batch {args.batch}, images/s = batch / median step time over "
        f"{args.steps} steps after {args.warmup} warm-up step(s), "
        f"{len(rounds)} alternating round(s).\n")


def report_eager(args, rounds):
  """Each side's best round against the eager peer (float32), and the
  models' parameter counts on both sides."""
  eager = [rd["torch"]["eager"] for rd in rounds if rd["torch"].get("eager")]
  print("Best round per side, against the eager (untuned) torch variant:\n")
  print("| case | teacher -> student | px | kd_jax on-device img/s | "
        "kd_jax pipeline img/s | torch ready img/s | torch host->tensor img/s "
        "| kd_jax/torch (ready) | kd_jax/torch (pipeline vs host) | "
        "kd_jax pipeline/on-device | torch host/ready | kd_jax cached-teacher "
        "img/s | kd_jax cached / torch (ready) |")
  print("|" + "---|" * 13)
  params = []
  for case in rounds[0]["jax"]:
    tname, sname = CASES[case][:2]
    r = best_of([rd["jax"][case] for rd in rounds])
    t = best_of([e["cases"][case] for e in eager]) if eager else {}
    ti, th = t.get("images_per_s"), t.get("host_images_per_s")
    ji, jp, jc = (r["images_per_s"], r["pipeline_images_per_s"],
                  r["cached_images_per_s"])
    print(f"| {case} | {tname} -> {sname} | "
          f"{case_size(case, args.image_size)} | {rate(ji)} | {rate(jp)} | "
          f"{rate(ti)} | {rate(th)} | {ratio(ji, ti)} | {ratio(jp, th)} | "
          f"{ratio(jp, ji)} | {ratio(th, ti)} | {rate(jc)} | {ratio(jc, ti)} |")
    first = rounds[0]["jax"][case]
    params += [(case, role, name, first[f"{role}_params"])
               for role, name in (("teacher", tname), ("student", sname))]
  print("\n| case | model | kd_jax params | torch params |")
  print("|---|---|---|---|")
  counts = {(c, role): r["cases"][c][f"{role}_params"]
            for rd in rounds for r in rd["torch"].values() if r
            for c in r["cases"] for role in ("teacher", "student")}
  for case, role, name, n in params:
    tn = counts.get((case, role))
    print(f"| {case} | {name} | {n:,} | {f'{tn:,}' if tn else '-'} |")
    if tn and tn != n:
      banner = "!" * 72
      print(f"\n{banner}\nWARNING: PARAMETER COUNTS DIFFER: {case} {role} "
            f"{name}: kd_jax {n:,} vs torch {tn:,}\nthe torch model is not "
            f"the kd_jax model; the ratios compare different networks\n"
            f"{banner}", file=sys.stderr)


def report_variants(args, rounds):
  """Every round's rates: kd_jax, kd_jax with a bf16 teacher, each torch
  variant, the best variant and kd_jax / best; last row per case: each
  column's best round."""
  variants = args.torch_variants.split(",")
  print("\nPer round, images/s (on-device / ready batch; kd_jax float32 "
        "unless named; best = the fastest torch variant of the round):\n")
  print("| case | round | kd_jax | kd_jax bf16 teacher | "
        + " | ".join(f"torch {v}" for v in variants)
        + " | best torch | kd_jax/best | kd_jax bf16 teacher/best |")
  print("|" + "---|" * (7 + len(variants)))
  for case in rounds[0]["jax"]:
    cols = []
    for i, rd in enumerate(rounds):
      t = {v: (r["cases"][case]["images_per_s"] if r else None)
           for v, r in rd["torch"].items()}
      cols.append([rd["jax"][case]["images_per_s"],
                   rd["bf16"].get(case, {}).get("images_per_s")]
                  + [t.get(v) for v in variants])
      bv, b = best_torch(rd["torch"], case)
      print(f"| {case} | {i + 1} | " + " | ".join(rate(x) for x in cols[-1])
            + f" | {bv or '-'} {rate(b)} | {ratio(cols[-1][0], b)} | "
            f"{ratio(cols[-1][1], b)} |")
    best = [max((x for x in col if x), default=None) for col in zip(*cols)]
    top = max((x for x in best[2:] if x), default=None)
    top_v = variants[best[2:].index(top)] if top else "-"
    print(f"| {case} | best | " + " | ".join(rate(x) for x in best)
          + f" | {top_v} {rate(top)} | {ratio(best[0], top)} | "
          f"{ratio(best[1], top)} |")


def round_ratios(rounds, case, key, against):
  """kd_jax (`key`: 'jax' or 'bf16') / torch per round, where both ran;
  `against`: 'best' or a variant name."""
  out = []
  for rd in rounds:
    j = rd[key].get(case, {}).get("images_per_s")
    if against == "best":
      t = best_torch(rd["torch"], case)[1]
    else:
      r = rd["torch"].get(against)
      t = r["cases"][case]["images_per_s"] if r else None
    if j and t:
      out.append(j / t)
  return out


def report_medians(rounds):
  """The per-round ratios' median, min and max: the figures to quote."""
  def summary(xs):
    return (f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"
            if xs else "-")

  print("\nPer-round ratios, median (min-max) over the rounds:\n")
  print("| case | rounds | kd_jax/best torch per round | kd_jax/best torch "
        "| kd_jax/torch eager | kd_jax bf16 teacher/best torch |")
  print("|---|---|---|---|---|---|")
  for case in rounds[0]["jax"]:
    best = round_ratios(rounds, case, "jax", "best")
    print(f"| {case} | {len(rounds)} | "
          f"{', '.join(f'{x:.2f}' for x in best) or '-'} | {summary(best)} | "
          f"{summary(round_ratios(rounds, case, 'jax', 'eager'))} | "
          f"{summary(round_ratios(rounds, case, 'bf16', 'best'))} |")


def report_faults(args, rounds, host_memory_reuse):
  # A step that gets fresh memory from the OS pays for every page it
  # touches (see kd_jax/cpu_runtime.py): the malloc variants show it.
  variants = args.torch_variants.split(",")
  print(f"\nMinor page faults per timed step (most over the rounds; kd_jax "
        f"host-memory reuse {'on' if host_memory_reuse else 'off'}):\n")
  print("| case | kd_jax | " + " | ".join(f"torch {v}" for v in variants)
        + " |")
  print("|" + "---|" * (2 + len(variants)))
  for case in rounds[0]["jax"]:
    def most(get):
      xs = [x for x in map(get, rounds) if x is not None]
      return f"{max(xs):,.0f}" if xs else "-"
    row = [most(lambda rd: rd["jax"][case]["faults_per_step"])]
    for v in variants:
      row.append(most(lambda rd, v=v: rd["torch"][v]["cases"][case][
          "faults_per_step"] if rd["torch"].get(v) else None))
    print(f"| {case} | " + " | ".join(row) + " |")


def parse_args():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--cases", default="echo,cifar")
  for name, kind in (("steps", int), ("warmup", int), ("rounds", int),
                     ("batch", int), ("image_size", int)):
    p.add_argument(f"--{name}", type=kind, default=None,
                   help=f"default {DEFAULTS[name]} ({QUICK[name]} with "
                   "--quick); image_size 0 = each case's own")
  p.add_argument("--quick", action="store_true",
                 help="smoke run at tiny sizes: " + ", ".join(
                     f"{k}={v}" for k, v in QUICK.items()))
  p.add_argument("--torch_python", default=".venv-torch/bin/python")
  p.add_argument("--torch_variants", default=",".join(TORCH_VARIANTS),
                 help="comma list of '+'-joined options from "
                 f"{TORCH_OPTIONS}, or 'eager'")
  p.add_argument("--bf16_teacher", action=argparse.BooleanOptionalAction,
                 default=True, help="also time kd_jax with "
                 "teacher.compute_dtype=bfloat16")
  p.add_argument("--torch_worker", action="store_true",
                 help="internal: run one torch variant, print one JSON line")
  p.add_argument("--torch_variant", default="eager", help="internal")
  p.add_argument("--torch_host", action="store_true", help="internal")
  args = p.parse_args()
  for k, v in (QUICK if args.quick else DEFAULTS).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  unknown = set(args.cases.split(",")) - set(CASES)
  if unknown:
    p.error(f"unknown cases {sorted(unknown)}; allowed: {sorted(CASES)}")
  for v in args.torch_variants.split(",") + [args.torch_variant]:
    if v != "eager" and not variant_options(v) <= set(TORCH_OPTIONS):
      p.error(f"unknown torch variant {v!r}: '+'-joined options from "
              f"{TORCH_OPTIONS}, or 'eager'")
  if args.rounds < 1:
    p.error("--rounds must be at least 1")
  return args


def measure_round(args, r):
  """One round: kd_jax (float32, then a bf16 teacher), then every torch
  variant in an order rotated by the round number."""
  cases = args.cases.split(",")
  rd = {"jax": {}, "bf16": {}, "torch": {}}
  for case in cases:
    print(f"round {r + 1}: kd_jax {case} ...", file=sys.stderr, flush=True)
    rd["jax"][case] = jax_case(case, args.batch, args.steps, args.warmup,
                               case_size(case, args.image_size))
    print(f"  {rd['jax'][case]['images_per_s']:.1f} img/s", file=sys.stderr)
    if args.bf16_teacher:
      print(f"round {r + 1}: kd_jax {case}, bf16 teacher ...",
            file=sys.stderr, flush=True)
      rd["bf16"][case] = jax_case(case, args.batch, args.steps, args.warmup,
                                  case_size(case, args.image_size),
                                  teacher_dtype="bfloat16")
      print(f"  {rd['bf16'][case]['images_per_s']:.1f} img/s",
            file=sys.stderr)
  variants = args.torch_variants.split(",")
  k = r % len(variants)
  for v in variants[k:] + variants[:k]:
    print(f"round {r + 1}: torch {v} {args.cases} ...", file=sys.stderr,
          flush=True)
    rd["torch"][v] = run_torch(args, v)
    for case, t in (rd["torch"][v] or {"cases": {}})["cases"].items():
      print(f"  {case}: {t['images_per_s']:.1f} img/s (warm-up incl. any "
            f"compilation {t['warmup_s']:.0f} s)", file=sys.stderr)
  return rd


def main():
  args = parse_args()
  if args.torch_worker:
    torch_worker(args)
    return
  if not os.path.exists(torch_python(args)):
    raise SystemExit(f"no torch python at {torch_python(args)}: set "
                     "--torch_python")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from kd_jax import cpu_runtime
  host_memory_reuse = cpu_runtime.configure()  # as kd_jax's commands run
  t0 = time.time()
  rounds = [measure_round(args, r) for r in range(args.rounds)]
  report_header(args, rounds, host_memory_reuse)
  report_eager(args, rounds)
  report_variants(args, rounds)
  report_medians(rounds)
  report_faults(args, rounds, host_memory_reuse)
  print(f"\n({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
  main()
