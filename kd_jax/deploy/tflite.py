"""TFLite (LiteRT) models of kd_jax's inference functions: conversion,
quantisation, the metadata they carry, and running them.

Conversion follows LiteRT's route for JAX: the function goes through
`jax2tf.convert` into a `tf.function` with a fixed uint8 [1, S, S, 3] input
signature, and `tf.lite.TFLiteConverter.from_concrete_functions` converts
that. With this JAX (0.10) jax2tf has native serialization only: the
tf.function holds one `XlaCallModule` op carrying the StableHLO module (the
op-by-op TensorFlow lowering, `native_serialization=False`, is gone), and
TensorFlow 2.21's converter accepts it, legalising the StableHLO into TFLite
builtin ops: no TensorFlow (Flex) or custom ops end up in the file. The
batch is fixed at 1, the edge case: a symbolic batch converts too, but keeps
shape arithmetic (SHAPE, BROADCAST_TO) in front of the ops, which runs
several times slower in the interpreter. The model is traced inside
`fast_ops.standard_ops()`, so depthwise convolutions and max-pools reach the
converter as the convolution and pooling ops TFLite has kernels for.

`QUANTIZE` (what `--quantize` takes):
  none          float32 weights and activations
  float16       float16 weights, widened to float32 when the interpreter
                loads them: half the file, the same arithmetic
  dynamic_int8  int8 weights; activations quantised on the fly where a
                kernel supports it (dynamic-range quantisation)
  int8          full integer: int8 weights and activations, ranges
                calibrated on `calibration` images. Still uint8 images in and
                float32 probabilities out (the first op casts the image, the
                last dequantises the int8 softmax, whose probabilities come
                in steps of 1/256)

kd_jax's JSON metadata (class names, input size, model, provenance) is stored
inside the flatbuffer, in the model's `metadata` list under the name
`tflite_runtime.METADATA_NAME`, so the .tflite file is all a device needs;
`tflite_runtime.read_metadata` reads it back with `struct` alone. Models run in
`ai_edge_litert`'s interpreter (LiteRT's own runtime, the package a device
installs) when it is installed, else in TensorFlow's `tf.lite.Interpreter`,
which TensorFlow 2.21 still ships (deprecated in favour of LiteRT's) and
which runs the same files.

Reading and running the files is `tflite_runtime`'s (numpy and an
interpreter only); this module converts.
"""
from __future__ import annotations

import json
import re
import warnings

import numpy as np

from kd_jax.deploy import tflite_runtime
from kd_jax.models import fast_ops

QUANTIZE = ("none", "float16", "dynamic_int8", "int8")


class ConversionError(Exception):
  """A function the TFLite converter cannot convert; the message names the
  op when the converter does."""


# ------------------------------------------------------------------ convert


def convert(infer, image_size: int, *, quantize: str = "none",
            calibration=None) -> bytes:
  """The TFLite flatbuffer of `infer` (uint8 [1, S, S, 3] -> outputs).
  `calibration`: uint8 [N, S, S, 3] images, needed for quantize='int8'."""
  if quantize not in QUANTIZE:
    raise ValueError(f"quantize={quantize!r}; allowed: {', '.join(QUANTIZE)}")
  if quantize == "int8" and (calibration is None or not len(calibration)):
    raise ValueError("quantize='int8' needs calibration images")
  from jax.experimental import jax2tf
  import tensorflow as tf


  def fresh(images):
    # JAX caches traces by function, not by fast_ops' context: a function
    # of its own is traced anew even when `infer` was jitted before.
    return infer(images)

  fn = tf.function(jax2tf.convert(fresh), autograph=False, input_signature=[
      tf.TensorSpec((1, image_size, image_size, 3), tf.uint8)])
  try:
    with fast_ops.standard_ops(), tflite_runtime.quiet_native_output():
      concrete = fn.get_concrete_function()
  except Exception as e:  # jax2tf refuses what it cannot serialize
    raise ConversionError(f"jax2tf cannot serialize the model: {type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0]}"[:400]) from None
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], fn)
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  if quantize == "int8":
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.representative_dataset = lambda: (
        [image[None]] for image in np.asarray(calibration, np.uint8))
  try:
    with tflite_runtime.quiet_native_output(), warnings.catch_warnings():
      # The converter warns that the uint8 input has no calibration
      # statistics: it is the raw image, cast to float by the first op.
      warnings.simplefilter("ignore")
      return converter.convert()
  except Exception as e:  # the converter's own errors carry no common type
    raise ConversionError(conversion_problem(str(e))) from None


def conversion_problem(message: str) -> str:
  """The converter's (multi-line) error as one line: its first error, the
  op it names and the Python source line the op was traced from."""
  first = re.search(r"((?:/|<)[^\s:]*:\d+:\d+): error: (.*)", message)
  if first is None:
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return (lines[0] if lines else "the TFLite converter failed")[:400]
  where, detail = first.groups()
  op = re.search(r"'((?:stablehlo|chlo|mhlo|vhlo|tfl?)\.\w+)'", detail)
  head = f"op {op.group(1)}" if op else "the TFLite converter"
  if op and op.group(1) == "tf.XlaCallModule":
    # The converter left the StableHLO module whole: something inside it,
    # e.g. a custom call, has no TFLite lowering.
    detail += (" (the StableHLO inside holds an op without a TFLite "
               "lowering, e.g. a custom call)")
  return f"{head} (traced at {where}): {detail.strip()}"[:400]


def with_metadata(model: bytes, meta: dict) -> bytes:
  """`model` with `meta` (JSON) in its metadata list as tflite_runtime.METADATA_NAME,
  replacing an earlier entry of that name."""
  from tensorflow.lite.python import schema_py_generated as schema_fb
  from tensorflow.lite.tools import flatbuffer_utils
  obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
  buf = schema_fb.BufferT()
  buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  obj.buffers = (obj.buffers or []) + [buf]
  entry = schema_fb.MetadataT()
  entry.name, entry.buffer = tflite_runtime.METADATA_NAME, len(obj.buffers) - 1
  obj.metadata = [m for m in (obj.metadata or [])
                  if m.name not in (tflite_runtime.METADATA_NAME, tflite_runtime.METADATA_NAME.encode())]
  obj.metadata.append(entry)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))
