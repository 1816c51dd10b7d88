"""Reading and running TFLite (LiteRT) files: the kd_jax metadata inside
the flatbuffer (`read_metadata`, with `struct` alone), the interpreter
(`ai_edge_litert`'s when installed, else TensorFlow's `tf.lite.Interpreter`,
which runs the same files) and batch-1 latency.

Imports neither JAX nor TensorFlow until a file runs: `kd_jax.predict`
reads and runs a .tflite file with numpy and an interpreter only.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import struct
import sys
import tempfile
import time
import warnings

import numpy as np

METADATA_NAME = "kd_jax"
FILE_ID = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer


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
