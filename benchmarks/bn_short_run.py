"""Why the echo pilot's students answered one class: the same short run of
MobileNetV3-small from scratch in kd_jax and in torch on the same frames.

  python benchmarks/bn_short_run.py [--epochs=4] [--batch=32] [--size=64]
      [--recalibrate=8] [--workdir=DIR]

Data: an echo-like set made here (4 views of moving shapes on speckle, 8
patients a view, 12 frames a video; `tests.helpers.write_echo_videos`) cut
into frames by `python -m kd_jax.prepare frames`, split by patient. Both
frameworks train the echo recipe's student (Adam 1e-3, no weight decay,
cosine schedule, [-1, 1] inputs) for the same steps, in the same batch
order, and report, for the final weights:
  train acc (batch stats)  the training frames in training mode: BatchNorm
                           on each batch's statistics, dropout on (what
                           training sees);
  train acc (running)      the training frames in inference mode (the
                           running averages: what evaluation sees);
  val acc (running)        validation frames in inference mode;
  val acc (precise BN)     the same after recomputing the statistics on
                           `--recalibrate` training batches (kd_jax:
                           bn_recalibration_steps; torch: running stats
                           reset and averaged with momentum=None).
A gap between the first two rows is the running averages lagging the
weights, in either framework; it closes with precise BN.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_jax import console  # noqa: E402

console.quiet_native_logs()  # before JAX and TensorFlow are imported

# torch before JAX: imported after a JAX run it can crash the process.
import torch  # noqa: E402
import torchvision  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax import config_lib  # noqa: E402
from kd_jax.data import datasets as data  # noqa: E402
from kd_jax.train import model_init  # noqa: E402
from kd_jax.train import precise_bn  # noqa: E402
from kd_jax.train import sharding  # noqa: E402
from kd_jax.train import stage  # noqa: E402
from kd_jax.train import step as step_lib  # noqa: E402
from tests import helpers  # noqa: E402


def make_frames(root, size):
  videos, labels = helpers.write_echo_videos(root, patients=8, frames=12,
                                             size=size)
  out = os.path.join(root, "frames")
  r = helpers.run_cli_module("kd_jax.prepare", "frames", f"--videos={videos}",
                             f"--labels={labels}", f"--out={out}",
                             f"--size={size}")
  if r.returncode:
    raise SystemExit(r.stderr)
  return out


def make_config(frames, args):
  c = config_lib.base_config()
  c.student.name, c.kd.method = "mobilenet_v3_small", "none"
  c.dataset.name, c.dataset.data_dir = "folder", frames
  c.dataset.image_size, c.batch_size = args.size, args.batch
  c.num_epochs = args.epochs
  config_lib.validate(c)
  return c


def epochs_of_batches(ds, args):
  """The run's batches, epoch by epoch, as kd_jax.main draws them."""
  spe = data.steps_per_epoch(len(ds.train), args.batch)
  for epoch in range(args.epochs):
    yield from data.train_batches(ds.train, global_batch=args.batch, seed=0,
                                  epoch=epoch, num_steps=spe,
                                  image_size=args.size)


def accuracy(predict, split, size):
  hits = 0
  for b in data.eval_batches(split, global_batch=64, image_size=size):
    pred = np.asarray(predict(b["image"])).argmax(-1)
    hits += int(((pred == b["label"]) & b["mask"]).sum())
  return hits / len(split)


def kd_jax_row(c, ds, args):
  """The four accuracies of kd_jax's step (stage.Stage, as main runs it)."""
  specs, mesh = config_lib.read_specs(c), sharding.make_mesh()
  run = stage.Stage(specs, role="student", model_name=c.student.name,
                    method="none", stage_dir="/nonexistent",
                    num_epochs=args.epochs, learning_rate=c.learning_rate,
                    ds=ds, mesh=mesh)
  tx, state = run.init_state()
  fn, hp = jax.jit(step_lib.make_train_step(run.spec(), tx)), \
      step_lib.hyperparams(specs)
  for b in epochs_of_batches(ds, args):
    state, _ = fn(state, sharding.global_batch(b, mesh), hp, None)
  v, model, pre = model_init.inference_variables(state), run.model, \
      run.spec().preprocess
  running = jax.jit(lambda x: model.apply(v, pre(x), train=False))
  batch = jax.jit(lambda x: model.apply(
      v, pre(x), train=True, mutable=["batch_stats"],
      rngs={"dropout": jax.random.PRNGKey(0)})[0])
  images = (b["image"] for b in data.train_batches(
      ds.train, global_batch=args.batch, seed=0, epoch=0,
      num_steps=args.recalibrate, image_size=args.size))
  fixed = precise_bn.recalibrate(precise_bn.make_batch_stats_fn(model, pre),
                                 v, images, mesh)
  precise = jax.jit(lambda x: model.apply(fixed, pre(x), train=False))
  return (accuracy(batch, ds.train, args.size),
          accuracy(running, ds.train, args.size),
          accuracy(running, ds.val, args.size),
          accuracy(precise, ds.val, args.size))


def torch_row(ds, args, num_classes):
  """The same four accuracies of torchvision's MobileNetV3-small trained in
  torch on the same batches (Adam 1e-3, per-step cosine decay)."""
  torch.manual_seed(0)
  model = torchvision.models.mobilenet_v3_small(num_classes=num_classes)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  total = args.epochs * data.steps_per_epoch(len(ds.train), args.batch)
  sched = torch.optim.lr_scheduler.LambdaLR(
      opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
  tensor = lambda img: torch.from_numpy(
      (img.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)).contiguous()
  model.train()
  for b in epochs_of_batches(ds, args):
    loss = torch.nn.functional.cross_entropy(model(tensor(b["image"])),
                                             torch.from_numpy(b["label"]).long())
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()

  def predictor(m, train_mode):
    m.train(train_mode)
    return lambda img: m(tensor(img)).detach().numpy()
  with torch.no_grad():
    row = [accuracy(predictor(copy.deepcopy(model), True), ds.train, args.size),
           accuracy(predictor(model, False), ds.train, args.size),
           accuracy(predictor(model, False), ds.val, args.size)]
    for m in model.modules():  # precise BN: a plain mean over the batches
      if isinstance(m, torch.nn.BatchNorm2d):
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for b in data.train_batches(ds.train, global_batch=args.batch, seed=0,
                                epoch=0, num_steps=args.recalibrate,
                                image_size=args.size):
      model(tensor(b["image"]))
    row.append(accuracy(predictor(model, False), ds.val, args.size))
  return tuple(row)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--epochs", type=int, default=4)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=64)
  p.add_argument("--recalibrate", type=int, default=8)
  p.add_argument("--workdir", default="")
  args = p.parse_args()
  root = args.workdir or tempfile.mkdtemp(prefix="bn_short_run_")
  c = make_config(make_frames(root, args.size), args)
  ds = data.load(c)
  spe = data.steps_per_epoch(len(ds.train), args.batch)
  print(f"{len(ds.train)} train / {len(ds.val)} val frames, "
        f"{args.epochs} epochs x {spe} steps of {args.batch}, {args.size} px, "
        f"precise BN on {args.recalibrate} batches; chance = 0.25")
  rows = {"kd_jax": kd_jax_row(c, ds, args),
          "torch": torch_row(ds, args, ds.num_classes)}
  head = ("train acc (batch stats)", "train acc (running)", "val acc (running)",
          "val acc (precise BN)")
  print(f"{'':8s}" + "".join(f"{h:>26s}" for h in head))
  for name, row in rows.items():
    print(f"{name:8s}" + "".join(f"{v:26.3f}" for v in row))


if __name__ == "__main__":
  main()
