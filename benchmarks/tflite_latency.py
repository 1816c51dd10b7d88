"""Batch-1 latency of the echo students: jax.jit vs TFLite float32, float16,
dynamic-range int8 and full int8, on this CPU, in one run.

  python benchmarks/tflite_latency.py [--models=mobilenet_v3_small,...]
      [--image_size=112] [--num_classes=4] [--runs=100] [--rounds=3]
      [--workdir=RUN]

Each model (random weights: timing does not depend on them) is wrapped as
`kd_jax.export` wraps a trained one (uint8 image in, preprocessing, the
model, softmax out) and run at batch 1 as `jax.jit` (XLA:CPU, all threads,
kd_jax's CPU settings) and as TFLite files converted by `kd_jax.tflite` (int8
calibrated on 64 random images), in the TFLite interpreter on 1 thread and
on all threads. Each variant is timed `--rounds` times, interleaved, as the
median of `--runs` calls; the table shows the best round (the machine may be
shared). With `--workdir` it also exports that run's student in every
quantisation and prints each file's test accuracy and top-1 agreement with
the float32 file on the run's test split.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kd_jax import console  # noqa: E402

console.quiet_native_logs()  # before JAX and TensorFlow are imported

from kd_jax import cpu_runtime  # noqa: E402

cpu_runtime.configure()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from kd_jax import models  # noqa: E402
from kd_jax import reporting
from kd_jax.data import datasets as data
from kd_jax.deploy import export
from kd_jax.deploy import tflite
from kd_jax.deploy import tflite_runtime
from kd_jax.models import profile  # noqa: E402
from kd_jax.study.deployment import cpu_name  # noqa: E402

ECHO_STUDENTS = ("mobilenet_v3_small", "mobilenet_v3_large",
                 "shufflenet_v2_x1_0", "ghostnet_100")


def inference_fn(name, num_classes, size):
  model = models.get_model(name, num_classes=num_classes)
  variables = jax.device_put(profile.random_variables(name, num_classes, size))

  def infer(images):
    x = data.preprocess(images, image_size=size, normalization="half")
    return jax.nn.softmax(model.apply(variables, x, train=False), axis=-1)

  params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]))
  return infer, params


def median_ms(call, runs):
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3


def variants(name, num_classes, size):
  """{label: (MB or None, zero-arg batch-1 call)}: jax.jit and the TFLite
  files on 1 and on all threads."""
  infer, params = inference_fn(name, num_classes, size)
  image = np.zeros((1, size, size, 3), np.uint8)
  jitted = jax.jit(infer)
  out = {"jax.jit": (None, lambda: jitted(image).block_until_ready())}
  calib = np.random.default_rng(0).integers(0, 256, (64, size, size, 3), np.uint8)
  for q in tflite.QUANTIZE:
    blob = tflite.convert(infer, size, quantize=q, calibration=calib)
    for threads in (1, tflite_runtime.all_threads()):
      m = tflite_runtime.Model(blob, threads)
      out[f"{q}/{threads}"] = (len(blob) / 1e6,
                               lambda m=m: m.call_one(image))
  return params, out


def time_all(calls, runs, rounds):
  """{label: best round's median ms}; warm-up first, rounds interleaved."""
  for _, call in calls.values():
    for _ in range(5):
      call()
  best = {}
  for _ in range(rounds):
    for label, (_, call) in calls.items():
      ms = median_ms(call, runs)
      best[label] = min(ms, best.get(label, float("inf")))
  return best


def latency_table(names, num_classes, size, runs, rounds):
  n = tflite_runtime.all_threads()
  head = ("model", "params", "jax.jit ms", "f32 MB", "f32 ms 1t", f"f32 ms {n}t",
          "f16 MB", f"f16 ms {n}t", "dyn-int8 MB", f"dyn-int8 ms {n}t",
          "int8 MB", "int8 ms 1t", f"int8 ms {n}t", f"int8 fps {n}t")
  lines = []
  for name in names:
    params, calls = variants(name, num_classes, size)
    ms = time_all(calls, runs, rounds)
    mb = {k.split("/")[0]: v[0] for k, v in calls.items() if v[0]}
    lines.append([name, f"{params:,}", f"{ms['jax.jit']:.2f}",
                  f"{mb['none']:.2f}", f"{ms['none/1']:.2f}", f"{ms[f'none/{n}']:.2f}",
                  f"{mb['float16']:.2f}", f"{ms[f'float16/{n}']:.2f}",
                  f"{mb['dynamic_int8']:.2f}", f"{ms[f'dynamic_int8/{n}']:.2f}",
                  f"{mb['int8']:.2f}", f"{ms['int8/1']:.2f}", f"{ms[f'int8/{n}']:.2f}",
                  f"{1e3 / ms[f'int8/{n}']:.0f}"])
    print(f"  {name} done", file=sys.stderr, flush=True)
  return reporting.text_table(head, lines, left=1)


def accuracy_table(workdir):
  """Test accuracy of the run's student per quantisation."""
  rows, ref = [], None
  with tempfile.TemporaryDirectory() as tmp:
    for q in tflite.QUANTIZE:
      path = os.path.join(tmp, f"{q}.tflite")
      info = export.export_tflite(workdir, path, quantize=q)
      if ref is None:
        images, labels = export.split_images(workdir, "test", info["image_size"])
      probs = tflite_runtime.Model(open(path, "rb").read()).call(images)
      ref = probs if ref is None else ref
      rows.append([q, f"{info['bytes'] / 1e6:.3f}",
                   f"{np.mean(probs.argmax(-1) == labels):.4f}",
                   f"{np.mean(probs.argmax(-1) == ref.argmax(-1)):.4f}",
                   f"{np.abs(probs - ref).max():.4f}"])
  head = ("quantize", "MB", "test acc", "top-1 = float32", "max |p - p_f32|")
  return (f"{info['model']} ({workdir}), {len(labels)} test images\n"
          + reporting.text_table(head, rows, left=1))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--models", default=",".join(ECHO_STUDENTS))
  p.add_argument("--image_size", type=int, default=112)
  p.add_argument("--num_classes", type=int, default=4)
  p.add_argument("--runs", type=int, default=100)
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--workdir", default="")
  args = p.parse_args()
  names = [m.strip() for m in args.models.split(",") if m.strip()]
  print(f"{cpu_name()}; jax {jax.__version__}; batch 1, "
        f"{args.num_classes} classes, {args.image_size}x{args.image_size}x3 "
        f"uint8 in; median of {args.runs} calls, best of {args.rounds} rounds")
  print(latency_table(names, args.num_classes, args.image_size, args.runs,
                      args.rounds))
  if args.workdir:
    print()
    print(accuracy_table(args.workdir))


if __name__ == "__main__":
  main()
