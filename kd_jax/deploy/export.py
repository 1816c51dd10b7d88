"""Export a trained model's inference function: StableHLO (`jax.export`) or
TFLite (LiteRT), float or quantised.

  python -m kd_jax.export --workdir=WORKDIR --out=student.bin [--stage=student]
                          [--platforms=cpu[,cuda]]
  python -m kd_jax.export --format=tflite --quantize=none|float16|dynamic_int8|int8
                          --workdir=WORKDIR --out=student.tflite
                          [--calibration_examples=200]

Either file holds everything inference needs and nothing of the training
code. The exported function maps uint8 images [B, S, S, 3] (S = the run's
`dataset.image_size`) to class probabilities [B, C]: scaling,
normalisation, the model in inference mode, subclass grouping (subclass
distillation) and the softmax are all inside it. The metadata names the
classes, S, the model and where it came from. `python -m kd_jax.predict`
runs both formats.

--format=stablehlo (default): any batch size B;
  b"KDJAXEXP1\\n" | 8-byte little-endian length N | N bytes of JSON metadata |
  the serialized `jax.export.Exported` (StableHLO with the weights as
  constants). `predict` loads it with JAX, numpy and PIL only.
--format=tflite: a TFLite flatbuffer with batch B = 1 and the JSON metadata
  inside, by LiteRT's JAX route: `jax2tf.convert` -> `tf.function` ->
  `tf.lite.TFLiteConverter`. This JAX's jax2tf serializes natively only (the
  tf.function carries the StableHLO module in one XlaCallModule op), and
  TensorFlow 2.21's converter accepts that and lowers it to TFLite builtin
  ops (`kd_jax/tflite.py`: the route, the quantisations, where the metadata
  lives, the interpreter). `--quantize=int8` calibrates
  on `--calibration_examples` training images of the run's own dataset (a
  fixed class-stratified sample).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections

from kd_jax import models
from kd_jax import reporting
from kd_jax.data import datasets as data
from kd_jax.deploy import predict
from kd_jax.deploy import tflite
from kd_jax.deploy.predict import MAGIC  # the reader owns the file format
from kd_jax.distill import losses
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import model_init

FORMATS = ("stablehlo", "tflite")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


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
          "params": model_init.param_count(variables["params"]),
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


def split_images(workdir: str, split: str, image_size: int, n: int = 0):
  """(uint8 [N, S, S, 3] images as the exported model takes them, labels)
  of the run's own dataset split ('train', 'val' or 'test'); `n` > 0 keeps
  a fixed class-stratified sample of n (`data.limit`)."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  sample = data.limit(getattr(data.load(config), split), n)
  if not len(sample):
    raise UserError(f"the {split} split of {workdir!r} has no images")
  batch = next(data.eval_batches(sample, global_batch=len(sample),
                                 image_size=image_size))
  return predict.to_model_input(batch["image"], image_size), batch["label"]


def export_tflite(workdir: str, out: str, *, stage: str = "student",
                  quantize: str = "none", calibration_examples: int = 200) -> dict:
  """Writes the TFLite model to `out` (atomically); returns its metadata."""
  if quantize not in tflite.QUANTIZE:
    raise UserError(f"--quantize={quantize!r}; allowed: "
                    f"{', '.join(tflite.QUANTIZE)}")
  if calibration_examples < 1:
    raise UserError(f"--calibration_examples={calibration_examples}; allowed: "
                    "an integer >= 1")
  infer, info = load_inference(workdir, stage)
  size = info["image_size"]
  calibration = (split_images(workdir, "train", size, calibration_examples)[0]
                 if quantize == "int8" else None)
  try:
    model = tflite.convert(infer, size, quantize=quantize,
                           calibration=calibration)
  except tflite.ConversionError as e:
    raise UserError(f"cannot export {info['model']} ({stage}) to TFLite "
                    f"with --quantize={quantize}: {e}") from None
  info.update(runtime="tflite", quantize=quantize, batch_size=1,
              calibration_examples=0 if calibration is None else len(calibration))
  blob = tflite.with_metadata(model, info)
  reporting.write_atomic(out, lambda f: f.write(blob))
  info["bytes"] = os.path.getsize(out)
  return info


def _parser():
  p = argparse.ArgumentParser(prog="python -m kd_jax.export",
                              description="Serialise a trained model for inference.")
  p.add_argument("--workdir", required=True, help="a kd_jax run's workdir")
  p.add_argument("--out", required=True,
                 help="output file, e.g. student.bin or student.tflite")
  p.add_argument("--stage", default="student",
                 help="which stage's best checkpoint (student, teacher, scratch, ...)")
  p.add_argument("--format", default="stablehlo",
                 help="stablehlo (jax.export, any batch) or tflite (batch 1)")
  p.add_argument("--platforms", default="cpu",
                 help="stablehlo: comma-separated lowering platforms: "
                 "cpu, cuda, rocm, tpu")
  p.add_argument("--quantize", default="none",
                 help="tflite: none, float16, dynamic_int8 or int8 (full integer)")
  p.add_argument("--calibration_examples", type=int, default=200,
                 help="tflite int8: training images the ranges are calibrated on")
  return p


def _export(args) -> dict:
  """Checks the flags against the format, then exports."""
  if args.format not in FORMATS:
    raise UserError(f"--format={args.format!r}; allowed: {', '.join(FORMATS)}")
  if args.format == "tflite":
    if args.platforms != "cpu":
      raise UserError(f"--platforms={args.platforms!r} is for --format=stablehlo; "
                      "a TFLite model runs wherever its interpreter does")
    return export_tflite(args.workdir, args.out, stage=args.stage,
                         quantize=args.quantize,
                         calibration_examples=args.calibration_examples)
  if args.quantize != "none":
    raise UserError(f"--quantize={args.quantize!r} needs --format=tflite; "
                    "allowed with stablehlo: none")
  platforms = [s.strip() for s in args.platforms.split(",") if s.strip()]
  bad = [s for s in platforms if s not in PLATFORMS]
  if bad or not platforms:
    raise UserError(f"unknown platform(s) {bad or args.platforms!r}; "
                    f"allowed: {', '.join(PLATFORMS)}")
  return export_model(args.workdir, args.out, stage=args.stage,
                      platforms=platforms)


def main(argv=None):
  args = _parser().parse_args(argv)
  try:
    info = _export(args)
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    return 2
  where = (f"platforms {','.join(info['platforms'])}" if "platforms" in info
           else f"TFLite, quantize {info['quantize']}")
  batch = info.get("batch_size", "B")
  print(f"exported {info['model']} ({info['stage']}, {info['params']:,} params, "
        f"{len(info['class_names'])} classes, input uint8 [{batch}, "
        f"{info['image_size']}, {info['image_size']}, 3], {where}) "
        f"to {args.out} ({info['bytes'] / 1e6:.2f} MB)")
  return 0

