"""Export a trained model's inference function with `jax.export`.

  python -m kd_jax.export --workdir=WORKDIR --out=student.bin [--stage=student]
                          [--platforms=cpu[,cuda]]

The file holds everything inference needs and nothing of the training code:
  b"KDJAXEXP1\\n" | 8-byte little-endian length N | N bytes of JSON metadata |
  the serialized `jax.export.Exported` (StableHLO with the weights as
  constants).
The exported function maps uint8 images [B, S, S, 3] (any batch size B; S =
the run's `dataset.image_size`) to class probabilities [B, C]: scaling,
normalisation, the model in inference mode, subclass grouping (subclass
distillation) and the softmax are all inside it. The metadata names the
classes, S, the model and where it came from. `python -m kd_jax.predict`
loads it with JAX, numpy and PIL only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from kd_jax import console

if __name__ == "__main__":  # the command: before TensorFlow or JAX is imported
  console.quiet_native_logs()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from kd_jax import checkpointing, cpu_runtime, data, losses, models  # noqa: E402
from kd_jax import reporting, stage as stage_lib  # noqa: E402
from kd_jax.config_lib import UserError  # noqa: E402
from kd_jax.predict import MAGIC  # noqa: E402  (the reader owns the file format)


def load_inference(workdir: str, stage: str = "student"):
  """(infer_fn, meta): the stage's best checkpoint as a function of uint8
  images [B, S, S, 3] -> probabilities [B, C], and its metadata."""
  config_path = os.path.join(workdir, "config.json")
  if not os.path.exists(config_path):
    raise UserError(f"no kd_jax run in {workdir!r} (no config.json)")
  with open(config_path) as f:
    config = json.load(f)
  stage_dir = os.path.join(workdir, stage)
  if not os.path.isdir(stage_dir):
    stages = sorted(n for n in os.listdir(workdir)
                    if os.path.isdir(os.path.join(workdir, n, "checkpoints")))
    raise UserError(f"no stage {stage!r} in {workdir!r}; it has: "
                    f"{', '.join(stages) or 'none'}")
  manager, meta = checkpointing.read_model_meta(stage_dir)
  name, size = meta["model"], meta["image_size"]
  subclasses = meta.get("subclasses", 1)
  outputs = meta["num_classes"] * subclasses
  like = models.init_shapes(name, outputs, size)
  device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  variables, _ = checkpointing.restore_model(manager, like, device)
  manager.close()
  model = models.get_model(name, num_classes=outputs)
  # The checkpoint's meta records what the model was trained on (imported
  # weights: their framework's normalisation); older checkpoints' config.
  normalization = meta.get("normalization",
                           config["dataset"]["normalization"])

  def infer(images_BxSxSx3):
    x = data.preprocess(images_BxSxSx3, image_size=size,
                        normalization=normalization)
    logits = model.apply(variables, x, train=False)
    if subclasses > 1:  # class logit = log-sum-exp over its subclasses
      logits = losses.subclass_to_class_logits(logits, subclasses)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  info = {"format": 1, "model": name, "stage": stage,
          "class_names": meta["class_names"], "num_classes": meta["num_classes"],
          "subclasses": subclasses, "image_size": size, "channels": 3,
          "input_dtype": "uint8", "normalization": normalization,
          "dataset": meta.get("dataset", ""),
          "checkpoint": checkpointing.resolve_model_dir(stage_dir),
          "params": stage_lib.param_count(variables["params"]),
          "jax_version": jax.__version__}
  return infer, info


def export_model(workdir: str, out: str, *, stage: str = "student",
                 platforms=("cpu",)) -> dict:
  """Writes the exported model to `out` (atomically); returns its metadata."""
  infer, info = load_inference(workdir, stage)
  (b,) = jax.export.symbolic_shape("b")
  size = info["image_size"]
  spec = jax.ShapeDtypeStruct((b, size, size, 3), jnp.uint8)
  exported = jax.export.export(jax.jit(infer), platforms=tuple(platforms))(spec)
  payload = exported.serialize()
  info["platforms"] = list(exported.platforms)
  header = json.dumps(info, sort_keys=True).encode()
  reporting.write_atomic(out, lambda f: f.write(
      MAGIC + len(header).to_bytes(8, "little") + header + payload))
  info["bytes"] = os.path.getsize(out)
  return info


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m kd_jax.export",
                              description="Serialise a trained model with jax.export.")
  p.add_argument("--workdir", required=True, help="a kd_jax run's workdir")
  p.add_argument("--out", required=True, help="output file, e.g. student.bin")
  p.add_argument("--stage", default="student",
                 help="which stage's best checkpoint (student, teacher, scratch, ...)")
  p.add_argument("--platforms", default="cpu",
                 help="comma-separated lowering platforms: cpu, cuda, rocm, tpu")
  args = p.parse_args(argv)
  platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
  bad = [s for s in platforms if s not in ("cpu", "cuda", "rocm", "tpu")]
  try:
    if bad or not platforms:
      raise UserError(f"unknown platform(s) {bad or args.platforms!r}; "
                      "allowed: cpu, cuda, rocm, tpu")
    info = export_model(args.workdir, args.out, stage=args.stage,
                        platforms=platforms)
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    return 2
  print(f"exported {info['model']} ({info['stage']}, {info['params']:,} params, "
        f"{len(info['class_names'])} classes, input uint8 [B, {info['image_size']}, "
        f"{info['image_size']}, 3], platforms {','.join(info['platforms'])}) "
        f"to {args.out} ({info['bytes'] / 1e6:.2f} MB)")
  return 0


if __name__ == "__main__":
  cpu_runtime.configure()  # before JAX starts a backend
  sys.exit(main())
