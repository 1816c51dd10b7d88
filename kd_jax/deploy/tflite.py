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
`METADATA_NAME`, so the .tflite file is all a device needs;
`read_metadata` reads it back with `struct` alone. Models run in
`ai_edge_litert`'s interpreter (LiteRT's own runtime, the package a device
installs) when it is installed, else in TensorFlow's `tf.lite.Interpreter`,
which TensorFlow 2.21 still ships (deprecated in favour of LiteRT's) and
which runs the same files.

This module imports neither JAX nor TensorFlow until a function needs them,
so reading and running a .tflite file needs only numpy and an interpreter.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import struct
import sys
import tempfile
import time
import warnings

import numpy as np

QUANTIZE = ("none", "float16", "dynamic_int8", "int8")
METADATA_NAME = "kd_jax"
FILE_ID = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer


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

  from kd_jax.models import fast_ops

  def fresh(images):
    # JAX caches traces by function, not by fast_ops' context: a function
    # of its own is traced anew even when `infer` was jitted before.
    return infer(images)

  fn = tf.function(jax2tf.convert(fresh), autograph=False, input_signature=[
      tf.TensorSpec((1, image_size, image_size, 3), tf.uint8)])
  try:
    with fast_ops.standard_ops(), quiet_native_output():
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
    with quiet_native_output(), warnings.catch_warnings():
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


@contextlib.contextmanager
def quiet_native_output():
  """Sends what native code writes to stdout/stderr (the converter's MLIR
  pass and quantiser lines) to a temporary file while the block runs, so a
  command shows kd_jax's own lines; errors still arrive as exceptions."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  with tempfile.TemporaryFile() as sink:
    try:
      os.dup2(sink.fileno(), 1)
      os.dup2(sink.fileno(), 2)
      yield
    finally:
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      for fd in saved:
        os.close(fd)


# ----------------------------------------------------------------- metadata


def with_metadata(model: bytes, meta: dict) -> bytes:
  """`model` with `meta` (JSON) in its metadata list as METADATA_NAME,
  replacing an earlier entry of that name."""
  from tensorflow.lite.python import schema_py_generated as schema_fb
  from tensorflow.lite.tools import flatbuffer_utils
  obj = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
  buf = schema_fb.BufferT()
  buf.data = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  obj.buffers = (obj.buffers or []) + [buf]
  entry = schema_fb.MetadataT()
  entry.name, entry.buffer = METADATA_NAME, len(obj.buffers) - 1
  obj.metadata = [m for m in (obj.metadata or [])
                  if m.name not in (METADATA_NAME, METADATA_NAME.encode())]
  obj.metadata.append(entry)
  return bytes(flatbuffer_utils.convert_object_to_bytearray(obj))


def is_tflite(head: bytes) -> bool:
  """Whether a file's first bytes are a TFLite flatbuffer's."""
  return len(head) >= 8 and head[4:8] == FILE_ID


def _table_field(blob, table, index):
  """Absolute offset of field `index` of the flatbuffer table at `table`,
  or None when the field is absent."""
  vtable = table - struct.unpack_from("<i", blob, table)[0]
  vt_size = struct.unpack_from("<H", blob, vtable)[0]
  slot = 4 + 2 * index
  if slot >= vt_size:
    return None
  rel = struct.unpack_from("<H", blob, vtable + slot)[0]
  return table + rel if rel else None


def _deref(blob, pos):
  """The target of the uoffset stored at `pos`."""
  return pos + struct.unpack_from("<I", blob, pos)[0]


def _vector(blob, pos):
  """(start, length) of the vector referenced at `pos`."""
  vec = _deref(blob, pos)
  return vec + 4, struct.unpack_from("<I", blob, vec)[0]


def read_metadata(model: bytes) -> dict | None:
  """kd_jax's metadata from a TFLite flatbuffer (None when it has none).

  Reads the flatbuffer by hand (schema.fbs: Model field 4 is `buffers`,
  field 6 `metadata`; Metadata is (name, buffer); Buffer field 0 is `data`)
  so that reading needs no TensorFlow."""
  root = _deref(model, 0)
  meta_field = _table_field(model, root, 6)
  buffers_field = _table_field(model, root, 4)
  if meta_field is None or buffers_field is None:
    return None
  start, n = _vector(model, meta_field)
  for i in range(n):
    entry = _deref(model, start + 4 * i)
    name_at = _table_field(model, entry, 0)
    if name_at is None:
      continue
    s, length = _vector(model, name_at)
    if model[s:s + length].decode() != METADATA_NAME:
      continue
    buffer_at = _table_field(model, entry, 1)
    index = struct.unpack_from("<I", model, buffer_at)[0] if buffer_at else 0
    b_start, _ = _vector(model, buffers_field)
    data_at = _table_field(model, _deref(model, b_start + 4 * index), 0)
    d, size = _vector(model, data_at)
    return json.loads(model[d:d + size])
  return None


# ------------------------------------------------------------------ running


def all_threads() -> int:
  """The CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def interpreter(model: bytes, num_threads: int):
  """A ready interpreter of `model` running on `num_threads` CPU threads."""
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError:
    from tensorflow.lite.python.interpreter import Interpreter
  with warnings.catch_warnings(), quiet_native_output():
    # TensorFlow's copy announces its deprecation in favour of LiteRT's,
    # which ai_edge_litert is; both run the same files alike.
    warnings.simplefilter("ignore")
    it = Interpreter(model_content=bytes(model), num_threads=num_threads)
    it.allocate_tensors()
  return it


class Model:
  """A .tflite model with `call(images uint8 [N, S, S, 3]) -> float32 [N, C]`
  (one image per invoke: the input's batch is 1) and its `meta`."""

  def __init__(self, model: bytes, num_threads: int | None = None):
    self.meta = read_metadata(model)
    self.num_threads = num_threads or all_threads()
    self.interpreter = interpreter(model, self.num_threads)
    (inp,), (out,) = (self.interpreter.get_input_details(),
                      self.interpreter.get_output_details())
    self.input_index, self.output_index = inp["index"], out["index"]
    self.input_shape = tuple(int(d) for d in inp["shape"])

  def call_one(self, image_1xSxSx3):
    self.interpreter.set_tensor(self.input_index, image_1xSxSx3)
    self.interpreter.invoke()
    return self.interpreter.get_tensor(self.output_index)

  def call(self, images_NxSxSx3):
    images = np.ascontiguousarray(images_NxSxSx3, np.uint8)
    if images.shape[1:] != self.input_shape[1:]:
      raise ValueError(f"images of shape {images.shape[1:]}; the model takes "
                       f"{self.input_shape[1:]}")
    if not len(images):
      return np.zeros((0, self.interpreter.get_output_details()[0]["shape"][-1]),
                      np.float32)
    return np.concatenate([np.array(self.call_one(images[i:i + 1]))
                           for i in range(len(images))])


def latency_ms(model: bytes, num_threads: int, *, runs: int = 50,
               warmup: int = 5) -> float:
  """Median wall time (ms) of one batch-1 invoke on `num_threads` threads."""
  m = Model(model, num_threads)
  image = np.zeros(m.input_shape, np.uint8)
  for _ in range(warmup):
    m.call_one(image)
  times = []
  for _ in range(runs):
    t = time.perf_counter()
    m.call_one(image)
    times.append(time.perf_counter() - t)
  return statistics.median(times) * 1e3
