"""Image files decoded on the host: a batch of paths to uint8 [n, S, S, 3].

Each file is read, checked (PNG/JPEG/BMP/GIF magic bytes, Pillow's
`verify()`), decoded to RGB (greyscale, palette and alpha images as
TensorFlow's `decode_image(channels=3)` gives them: alpha dropped) and
brought to its split's stored geometry by `transforms.fit`. Files decode in
a shared thread pool: Pillow releases the GIL while it decodes and resizes,
so the threads run on every core, and the results are collected in the
batch's order, so batches do not depend on thread timing.

Validation is lazy: listing a folder reads only its directories, and a file
that does not decode is found when a batch reads it. By
`dataset.corrupt_images` it is then a one-line UserError naming the file
('refuse'), or ('skip') its rows take the image and label of the nearest
good row of the same batch (the one before it, else the one after), and
the file is named in one warning line and counted (`Skipped`).
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import sys
import threading
from concurrent import futures

import jax
from jax.experimental import multihost_utils
import numpy as np
from PIL import Image

from kd_jax.data import transforms
from kd_jax.errors import UserError

MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")
REFUSE_HINT = " (config.dataset.corrupt_images='skip' skips such files)"


@dataclasses.dataclass(frozen=True)
class Geometry:
  """What `transforms.fit` makes of a decoded file: mode, size, resize_size."""
  mode: str = "resize"
  size: int = 32
  resize_size: int = 0

  @classmethod
  def of(cls, role: str, d) -> "Geometry":
    """The stored geometry of a split of `role` ('train' or 'eval') under
    config.dataset `d` (`transforms.storage`)."""
    return cls(*transforms.storage(role, d))


class Skipped:
  """The files a run has skipped as corrupt, {path: problem}, shared by the
  splits of one dataset: each file is warned about once, however often a
  batch reads it."""

  def __init__(self):
    self.files = {}
    self._lock = threading.Lock()

  def add(self, path: str, problem: str):
    with self._lock:
      if path in self.files:
        return
      self.files[path] = problem
    print(f"kd_jax: warning: skipped {problem}; its rows take another image "
          "of the batch and its label (config.dataset.corrupt_images='skip')",
          file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Files:
  """How a split's image files decode: its geometry, the corrupt-file
  policy ('refuse' | 'skip') and the dataset's `Skipped` log."""
  geometry: Geometry
  corrupt: str = "refuse"
  skipped: Skipped = dataclasses.field(default_factory=Skipped, compare=False,
                                       repr=False)


def read_image(path: str, geometry: Geometry):
  """(uint8 [S, S, 3], None) of the image file `path`, or (None, the
  problem in one line) when it cannot be read or decoded."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    return None, f"cannot read image file {path}: {e.strerror}"
  if not data.startswith(MAGIC):
    return None, f"corrupt or non-image file {path} (not PNG/JPEG/BMP/GIF)"
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.verify()  # chunk checksums, which decoding alone does not check
    with Image.open(io.BytesIO(data)) as im:
      rgb = np.asarray(im.convert("RGB"))
  except Exception as e:  # Pillow raises many types for broken files
    why = (str(e).splitlines() or [""])[0][:200]
    return None, f"corrupt image file {path} ({type(e).__name__}: {why})"
  g = geometry
  return transforms.fit(rgb, g.size, g.mode, g.resize_size), None


_POOL = None
_POOL_LOCK = threading.Lock()


def pool() -> futures.ThreadPoolExecutor:
  """The process's decoding threads, one per usable core."""
  global _POOL
  with _POOL_LOCK:
    if _POOL is None:
      n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
          else os.cpu_count()
      _POOL = futures.ThreadPoolExecutor(max(1, n or 1),
                                         thread_name_prefix="kd_jax_decode")
    return _POOL


def _submit(paths, geometry):
  return [pool().submit(read_image, str(p), geometry) for p in paths]


def _collect(pending, geometry):
  """(uint8 [n, S, S, 3], [problem or None] * n) of submitted files, in
  order; a row that did not decode is zeros."""
  s = geometry.size
  images = np.zeros((len(pending), s, s, 3), np.uint8)
  problems = []
  for i, fut in enumerate(pending):
    image, problem = fut.result()
    if image is not None:
      images[i] = image
    problems.append(problem)
  return images, problems


def decode_files(paths, geometry: Geometry):
  """(uint8 [n, S, S, 3], problems) of `paths`, decoded in the pool."""
  return _collect(_submit(paths, geometry), geometry)


def iter_decoded(path_batches, geometry: Geometry, ahead: int = 1):
  """`decode_files` of each batch of paths, in order, with the next
  `ahead` batches decoding while the caller uses the current one."""
  queue = collections.deque()
  batches = iter(path_batches)
  try:
    for paths in batches:
      queue.append(_submit(paths, geometry))
      if len(queue) > ahead:
        yield _collect(queue.popleft(), geometry)
    while queue:
      yield _collect(queue.popleft(), geometry)
  finally:  # a generator closed early leaves no work queued
    for pending in queue:
      for fut in pending:
        fut.cancel()


def stand_ins(problems, corrupt: str) -> np.ndarray:
  """The row each row's image and label come from: itself, or for a file
  that did not decode (corrupt='skip') the nearest good row before it,
  else after it. corrupt='refuse': a UserError naming the first."""
  src = np.arange(len(problems))
  bad = np.asarray([p is not None for p in problems], bool)
  if not bad.any():
    return src
  first = next(p for p in problems if p is not None)
  if corrupt != "skip":
    raise UserError(first + REFUSE_HINT)
  good = np.flatnonzero(~bad)
  if not len(good):
    raise UserError(f"no image of a batch of {len(problems)} decodes, the "
                    f"first: {first}")
  before = np.searchsorted(good, src[bad]) - 1
  src[bad] = good[np.maximum(before, 0)]
  return src


def settle(images, labels, paths, problems, files: Files):
  """(images, labels) of a decoded batch with the rows of files that did
  not decode replaced (`stand_ins`), each such file logged once."""
  src = stand_ins(problems, files.corrupt)
  for path, problem in zip(paths, problems):
    if problem is not None:
      files.skipped.add(str(path), problem)
  if np.all(src == np.arange(len(src))):
    return images, labels
  return images[src], labels[src]


def batches(paths, labels, index_batches, files: Files):
  """(uint8 images, labels) of each array of indices into `paths` and
  `labels`, decoded in order (`iter_decoded`, `settle`)."""
  decoded = iter_decoded((paths[idx] for idx in index_batches),
                         files.geometry)
  for idx, (images, problems) in zip(index_batches, decoded):
    yield settle(images, labels[idx], paths[idx], problems, files)


def _path_hash(path: str) -> int:
  digest = hashlib.blake2b(path.encode(), digest_size=4).digest()
  return int.from_bytes(digest, "big") >> 1  # int32, >= 0


def count_across_processes(paths) -> int:
  """How many distinct `paths` every process together has (each process
  decodes only its own rows, so each knows only the files it read)."""
  if jax.process_count() == 1:
    return len(set(paths))
  mine = np.asarray(sorted({_path_hash(p) for p in paths}), np.int32)
  counts = multihost_utils.process_allgather(np.int32(len(mine)))
  padded = np.full(max(1, int(np.max(counts))), -1, np.int32)
  padded[:len(mine)] = mine
  every = np.asarray(multihost_utils.process_allgather(padded))
  return int(len(np.unique(every[every >= 0])))
