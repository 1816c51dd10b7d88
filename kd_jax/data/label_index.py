"""A split's labels stored beside its record files, so that a run starts
without reading every record.

Stratified limits, class weights and balanced sampling need every label of
a streamed split before the first batch; reading them means reading each
record once (the whole encoded dataset: ImageNet's train split is about
140 GB). The first run stores them in `<dataset dir>/kd_jax_labels.<split>.npz`
(int32 labels, and the stamp they belong to: each record file's name, size
and mtime); a later run whose files still match reads them back. Files that
changed make the index stale, so the labels are read from the records
again and the index rewritten. A directory that cannot be written (a shared
read-only copy) costs one line and the read; nothing else changes.
"""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from kd_jax import reporting


def path(dataset_dir: str, split: str) -> str:
  return os.path.join(dataset_dir, f"kd_jax_labels.{split}.npz")


def stamp(files) -> str:
  """What an index belongs to: each file's name, size and mtime."""
  rows = []
  for f in sorted(str(f) for f in files):
    st = os.stat(f)
    rows.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
  return json.dumps(rows)


def read(index_path: str, want_stamp: str) -> np.ndarray | None:
  """The stored labels, or None when there are none for these files."""
  try:
    with np.load(index_path) as z:
      if str(z["stamp"]) != want_stamp:
        return None
      return np.asarray(z["labels"], np.int32)
  except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
    return None  # unreadable (e.g. a truncated copy): read the records again


def write(index_path: str, file_stamp: str, labels: np.ndarray) -> None:
  """Stores `labels` atomically; a directory that refuses the write is
  said in one line and skipped."""
  try:
    reporting.write_atomic(index_path, lambda f: np.savez(
        f, labels=np.asarray(labels, np.int32), stamp=np.asarray(file_stamp)))
  except OSError as e:
    reporting.log(f"note: cannot store the label index {index_path} "
                  f"({e.strerror or e}); the next run reads every record "
                  "for its labels again")
