"""dataset.name=mnist_local reads MNIST's original IDX files (written here,
byte for byte in the IDX format) from data_dir or $KD_JAX_MNIST_DIR."""
import gzip
import struct

import numpy as np
import pytest

from kd_jax.data import datasets as data
from kd_jax.errors import UserError
from tests import helpers


def _write_idx(path, array):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += b"".join(struct.pack(">I", d) for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _mnist_dir(root):
  rng = np.random.default_rng(0)
  arrays = {}
  for prefix, n in (("train", 50), ("t10k", 20)):
    x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = np.arange(n, dtype=np.uint8) % 10
    _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    arrays[prefix] = (x, y)
  return arrays


@pytest.mark.parametrize("via", ["data_dir", "env"])
def test_mnist_local_reads_idx_files(tmp_path, monkeypatch, via):
  arrays = _mnist_dir(tmp_path)
  overrides = {"dataset.data_dir": str(tmp_path)} if via == "data_dir" else {}
  if via == "env":
    monkeypatch.setenv("KD_JAX_MNIST_DIR", str(tmp_path))
  c = helpers.tiny_config("dataset=mnist_local", **overrides,
                          **{"dataset.train_limit": 0, "dataset.eval_limit": 0})
  ds = data.load(c)
  assert ds.name == "mnist_local" and ds.class_names == tuple("0123456789")
  x_test, y_test = arrays["t10k"]
  np.testing.assert_array_equal(ds.test.images[..., 0], x_test)
  np.testing.assert_array_equal(ds.test.labels, y_test)
  x_train, _ = arrays["train"]
  train_and_val = np.concatenate([ds.train.images, ds.val.images])[..., 0]
  order = np.concatenate([ds.train.index, ds.val.index])
  np.testing.assert_array_equal(train_and_val, x_train[order])
  assert sorted(order.tolist()) == list(range(50))


def test_missing_mnist_files_are_one_line(tmp_path, monkeypatch):
  monkeypatch.delenv("KD_JAX_MNIST_DIR", raising=False)
  c = helpers.tiny_config("dataset=mnist_local",
                          **{"dataset.data_dir": str(tmp_path)})
  with pytest.raises(UserError, match="MNIST IDX files .* not found in") as e:
    data.load(c)
  assert "\n" not in str(e.value)
