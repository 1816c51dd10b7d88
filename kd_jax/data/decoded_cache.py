"""Decode once (`dataset.decoded_cache=DIR`): a split of an image folder or
CSV set stored as one fixed-size uint8 array, so that later epochs and runs
read it instead of decoding every file again.

An entry is the directory `DIR/<split>-<source>-<key>/` holding
`images.npy` (uint8 [N, S, S, 3], row i = file i of the split, read back as
a memory map) and `manifest.json` (every file's path, size and mtime, the
geometry, and the corrupt files skipped with the row each one's row copies).
`<source>` hashes what selects the files (dataset, root, CSV, split, limits)
and their geometry; `<key>` hashes the file list with sizes and mtimes, as
the teacher cache's key hashes an image folder. Another geometry is another
source, so it gets its own entry. An entry of the same source under another
key means the files changed since it was written: that is refused, naming
the first changed file, and never read instead.

An entry is written in a hidden temporary directory and renamed into place
when whole, so an interrupted write leaves no entry (only a `.tmp-*`
directory that lookups ignore). In a multi-process run process 0 decodes
and writes; the others wait for it and then read the same entry.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from kd_jax.data import decode
from kd_jax.errors import UserError

FORMAT = 1
IMAGES, MANIFEST = "images.npy", "manifest.json"
CHUNK = 256  # files decoded per pool round while writing


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# The mode os.makedirs gives (mkdtemp's 0700 would keep the entry from the
# rest of a team).
DIR_MODE = 0o777 & ~_umask()


def stat_files(paths) -> list:
  """[[absolute path, size, mtime_ns]] of `paths`."""
  out = []
  for p in paths:
    p = os.path.abspath(str(p))
    st = os.stat(p)
    out.append([p, st.st_size, st.st_mtime_ns])
  return out


def _hash(obj) -> str:
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
  return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def entry_name(source: dict, geometry: decode.Geometry, files) -> tuple:
  """(the prefix every entry of this source and geometry shares, the
  entry's directory name)."""
  prefix = f"{source['split']}-{_hash([source, geometry.__dict__])}"
  return prefix, f"{prefix}-{_hash(files)}"


def first_change(old, new) -> str:
  """The first file of `new` ([[path, size, mtime]]) that differs from the
  entry's list `old`, in words."""
  before = {p: (s, m) for p, s, m in old}
  for p, s, m in new:
    if p not in before:
      return f"{p} is new"
    if before[p] != (s, m):
      return f"{p} changed (size or modification time)"
  now = {p for p, _, _ in new}
  gone = [p for p, _, _ in old if p not in now]
  return f"{gone[0]} is gone" if gone else "the files' order changed"


def _refuse_changed(cache_dir, prefix, name, files):
  """UserError when `cache_dir` holds an entry of this source under
  another key: its files changed since it was written."""
  for other in sorted(glob.glob(os.path.join(cache_dir, prefix + "-*"))):
    if os.path.basename(other) == name:
      continue
    with open(os.path.join(other, MANIFEST)) as f:
      old = json.load(f)["files"]
    raise UserError(
        f"decoded cache entry {other} was written from other files: "
        f"{first_change(old, files)}; delete that entry to decode again, or "
        "set config.dataset.decoded_cache to another directory")


def write(entry, paths, files, corrupt, geometry: decode.Geometry):
  """Decodes `paths` into the entry directory `entry`, atomically."""
  tmp = tempfile.mkdtemp(dir=os.path.dirname(entry), prefix=".tmp-")
  try:
    n, s = len(paths), geometry.size
    images = np.lib.format.open_memmap(os.path.join(tmp, IMAGES), "w+",
                                       np.uint8, (n, s, s, 3))
    problems = []
    chunks = [paths[i:i + CHUNK] for i in range(0, n, CHUNK)]
    for i, (part, probs) in enumerate(decode.iter_decoded(chunks, geometry)):
      if corrupt != "skip":
        decode.stand_ins(probs, corrupt)  # the first bad file refuses
      images[i * CHUNK:i * CHUNK + len(part)] = part
      problems += probs
    src = decode.stand_ins(problems, corrupt)
    bad = np.flatnonzero(src != np.arange(n))
    images[bad] = images[src[bad]]
    images.flush()
    del images
    skipped = [{"row": int(r), "path": files[r][0], "problem": problems[r],
                "stand_in": int(src[r])} for r in bad]
    _write_manifest(tmp, files, geometry, skipped)
    _fsync(os.path.join(tmp, IMAGES))
    os.chmod(tmp, DIR_MODE)
    _rename_into_place(tmp, entry)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_manifest(d, files, geometry, skipped):
  manifest = {"format": FORMAT, "geometry": geometry.__dict__,
              "files": files, "skipped": skipped}
  path = os.path.join(d, MANIFEST)
  with open(path, "w") as f:
    json.dump(manifest, f)
  _fsync(path)


def _fsync(path):
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _rename_into_place(tmp, entry):
  """`tmp` renamed to `entry`; if another run wrote `entry` meanwhile (the
  same files, as the name says), its copy is kept and `tmp` dropped."""
  try:
    os.rename(tmp, entry)
  except OSError:
    if not os.path.isfile(os.path.join(entry, MANIFEST)):
      raise
    shutil.rmtree(tmp, ignore_errors=True)


def read(entry):
  """(uint8 images as a read-only memory map, the manifest's skipped
  files) of the entry directory `entry`."""
  with open(os.path.join(entry, MANIFEST)) as f:
    manifest = json.load(f)
  return np.load(os.path.join(entry, IMAGES), mmap_mode="r"), manifest["skipped"]


def _prepare(cache_dir, source, paths, files: decode.Files):
  """The entry's path, written first if it is not there yet."""
  listed = stat_files(paths)
  prefix, name = entry_name(source, files.geometry, listed)
  entry = os.path.join(cache_dir, name)
  if os.path.isfile(os.path.join(entry, MANIFEST)):
    return entry
  _refuse_changed(cache_dir, prefix, name, listed)
  os.makedirs(cache_dir, exist_ok=True)
  start = time.time()
  print(f"decoded cache: decoding the {len(paths)} images of "
        f"{source['split']} into {entry}", flush=True)
  write(entry, paths, listed, files.corrupt, files.geometry)
  print(f"decoded cache: {entry} written in {time.time() - start:.1f} s",
        flush=True)
  return entry


def _agree(ok: bool) -> bool:
  """Process 0's `ok`, on every process."""
  flag = multihost_utils.broadcast_one_to_all(np.int32(1 if ok else 0))
  return bool(int(flag))


def load_or_write(cache_dir, source: dict, paths, files: decode.Files):
  """(uint8 [N, S, S, 3] memory map, skipped files [{row, path, problem,
  stand_in}]) of `paths` from `cache_dir`, decoded and written first when
  this source has no entry for these files. Only process 0 writes."""
  if jax.process_count() == 1:
    return read(_prepare(cache_dir, source, paths, files))
  error, entry = None, None
  if jax.process_index() == 0:
    try:
      entry = _prepare(cache_dir, source, paths, files)
    except UserError as e:
      error = e
  if not _agree(error is None):
    raise error or UserError("process 0 could not write the decoded cache "
                             f"in {cache_dir}; see its error line")
  if entry is None:
    listed = stat_files(paths)
    entry = os.path.join(cache_dir,
                         entry_name(source, files.geometry, listed)[1])
  return read(entry)
