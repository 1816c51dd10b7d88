"""Stratified limits, CSV-annotated image sets and class-balanced sampling."""
import csv
import os

import numpy as np
import pytest

from kd_jax.data import datasets as data
from kd_jax.errors import UserError
from tests import helpers

CLASSES4 = ("A2C", "A4C", "PLAX", "PSAX")


def _counts(split, k):
  return np.bincount(split.labels, minlength=k).tolist()


def _folder_config(root, **overrides):
  return helpers.tiny_config(**{"dataset.name": "folder",
                                "dataset.data_dir": root, **overrides})


# ------------------------------------------------------- stratified limits


def test_class_quotas():
  assert data.class_quotas([70, 30], 10).tolist() == [7, 3]
  assert data.class_quotas([99, 1], 10).tolist() == [9, 1]  # kept, not rounded away
  assert data.class_quotas([40] * 4, 12).tolist() == [3, 3, 3, 3]
  assert data.class_quotas([5, 5, 5, 5], 3).sum() == 3  # fewer than classes
  assert data.class_quotas([1000, 1, 1], 3).tolist() == [1, 1, 1]


def test_limits_keep_every_class_of_a_class_ordered_folder(tmp_path):
  root = helpers.write_image_folder(
      str(tmp_path / "f"), classes=CLASSES4, size=10,
      per_split={"train": 80, "val": 6, "test": 30})
  full = data.load(_folder_config(root, **{"dataset.train_limit": 0,
                                           "dataset.eval_limit": 0}))
  assert _counts(full.train, 4) == [80] * 4  # listed class by class
  position = {p: i for i, p in enumerate(full.train.paths)}
  for n, per_class in ((8, 2), (12, 3), (300, 75)):
    ds = data.load(_folder_config(root, **{"dataset.train_limit": n,
                                           "dataset.eval_limit": 0}))
    assert _counts(ds.train, 4) == [per_class] * 4, n
    rows = [position[p] for p in ds.train.paths]
    assert rows == sorted(rows)  # the split's order
    again = data.load(_folder_config(root, **{"dataset.train_limit": n,
                                              "dataset.eval_limit": 0}))
    assert list(again.train.paths) == list(ds.train.paths)  # fixed sample
  first_class_only = full.train.take(np.arange(8))  # what the old limit kept
  assert _counts(first_class_only, 4) == [8, 0, 0, 0]
  # Tiny mode (train_limit=128, eval_limit=64) keeps every class everywhere.
  tiny = data.load(_folder_config(root))
  assert _counts(tiny.train, 4) == [32] * 4
  assert _counts(tiny.val, 4) == [6] * 4
  assert _counts(tiny.test, 4) == [16] * 4


def test_limit_keeps_in_memory_indices():
  split = data.Split(np.repeat(np.arange(3, dtype=np.int32), [50, 30, 20]),
                     images=np.zeros((100, 2, 2, 1), np.uint8),
                     index=np.arange(100))
  small = data.limit(split, 10)
  assert _counts(small, 3) == [5, 3, 2]
  assert np.all(np.diff(small.index) > 0)
  assert data.limit(split, 0) is split and data.limit(split, 500) is split


# ------------------------------------------------------------ CSV datasets


HEADER = ["Image Name", "Majority Vote Label", "Number of Annotators who "
          "Selected SSA (Out of 7)", "Partition"]


def _write_mhist(root, n_train=40, n_test=20, rows_extra=(), images=True):
  """An MHIST-like set: ~70% HP / 30% SSA PNGs and annotations.csv with
  partitions in mixed case."""
  from PIL import Image
  img_dir = os.path.join(root, "images")
  os.makedirs(img_dir, exist_ok=True)
  rows = []
  rng = np.random.default_rng(0)
  for split, n in (("Train", n_train), ("TEST", n_test)):
    for i in range(n):
      label = "SSA" if i % 10 in (3, 6, 9) else "HP"  # 30% SSA
      name = f"MHIST_{split.lower()}_{i:03d}.png"
      rows.append([name, label, "3", split])
      if images:
        pixels = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
        pixels[..., 0] = 220 if label == "SSA" else 30
        Image.fromarray(pixels).save(os.path.join(img_dir, name))
  rows.extend(rows_extra)
  csv_path = os.path.join(root, "annotations.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(HEADER)
    writer.writerows(rows)
  return img_dir, csv_path, rows


def _csv_config(img_dir, csv_path, **overrides):
  return helpers.tiny_config(**{"dataset.name": "csv", "dataset.data_dir": img_dir,
                                "dataset.csv": csv_path, "dataset.train_limit": 0,
                                "dataset.eval_limit": 0, **overrides})


def _rewrite(csv_path, rows, header=HEADER):
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def test_csv_splits_counts_and_stratified_val(tmp_path):
  img_dir, csv_path, _ = _write_mhist(str(tmp_path))
  c = _csv_config(img_dir, csv_path, **{"dataset.val_fraction": 0.25})
  ds = data.load(c)
  assert ds.name == "csv" and ds.class_names == ("HP", "SSA")
  assert ds.image_shape == (c.dataset.image_size,) * 2 + (3,)
  # Train rows: 28 HP / 12 SSA; a quarter of each class is held out.
  assert _counts(ds.train, 2) == [21, 9]
  assert _counts(ds.val, 2) == [7, 3]
  assert _counts(ds.test, 2) == [14, 6]
  assert not set(ds.train.paths) & set(ds.val.paths)
  assert all(os.path.basename(p).startswith("MHIST_test") for p in ds.test.paths)
  labels = {os.path.basename(p): int(y) for split in (ds.train, ds.val, ds.test)
            for p, y in zip(split.paths, split.labels)}
  assert labels["MHIST_train_003.png"] == 1 and labels["MHIST_train_000.png"] == 0
  assert list(data.load(c).val.paths) == list(ds.val.paths)  # fixed hold-out
  # Images are decoded like folder images, at the split's stored geometry.
  batch = next(data.eval_batches(ds.test, global_batch=8, image_size=16))
  s = c.dataset.image_size
  assert batch["image"].shape == (8, s, s, 3) and batch["image"].dtype == np.uint8


def test_csv_val_partition_and_limits(tmp_path):
  img_dir, csv_path, rows = _write_mhist(str(tmp_path))
  for i, row in enumerate(rows[:10]):  # 7 HP + 3 SSA train rows -> val
    row[3] = ("val", "Valid", "VALIDATION")[i % 3]
  _rewrite(csv_path, rows)
  ds = data.load(_csv_config(img_dir, csv_path))
  assert _counts(ds.val, 2) == [7, 3] and _counts(ds.train, 2) == [21, 9]
  tiny = data.load(_csv_config(img_dir, csv_path, **{"dataset.train_limit": 10,
                                                     "dataset.eval_limit": 4}))
  assert _counts(tiny.train, 2) == [7, 3]
  assert _counts(tiny.test, 2) == [3, 1] and _counts(tiny.val, 2) == [3, 1]


def _error(c):
  with pytest.raises(UserError) as e:
    data.load(c)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


def test_csv_errors(tmp_path):
  img_dir, csv_path, rows = _write_mhist(str(tmp_path))
  c = _csv_config(img_dir, csv_path)
  c.dataset.csv = str(tmp_path / "nope.csv")
  assert "nope.csv" in _error(c) and "no such file" in _error(c)
  c.dataset.csv = csv_path
  c.dataset.csv_label_column = "Label"
  msg = _error(c)
  assert "'Label'" in msg and "csv_label_column" in msg
  assert "'Image Name'" in msg and "'Partition'" in msg  # the columns it has
  c.dataset.csv_label_column = "Majority Vote Label"
  os.remove(os.path.join(img_dir, "MHIST_train_005.png"))
  os.remove(os.path.join(img_dir, "MHIST_test_001.png"))
  msg = _error(c)
  assert "2 of the 60 images" in msg and "MHIST_train_005.png" in msg
  rows = [r for r in rows if r[0] not in ("MHIST_train_005.png",
                                          "MHIST_test_001.png")]
  bad = [list(r) for r in rows]
  bad[4][1] = ""
  _rewrite(csv_path, bad)
  msg = _error(c)
  assert "line 6" in msg and "empty 'Majority Vote Label'" in msg
  bad = [list(r) for r in rows]
  bad[7][3] = "holdout"
  _rewrite(csv_path, bad)
  msg = _error(c)
  assert "'holdout'" in msg and "train, test, val, valid, validation" in msg
  bad = [r for r in rows if not (r[3] == "TEST" and r[1] == "SSA")]
  _rewrite(csv_path, bad)
  msg = _error(c)
  assert "class 'SSA' has no example in the test split" in msg
  bad = [list(r) for r in rows] + [[rows[0][0], "HP", "1", "test"]]
  _rewrite(csv_path, bad)
  assert "listed twice" in _error(c)
  _rewrite(csv_path, rows)
  broken = os.path.join(img_dir, rows[2][0])
  with open(broken, "wb") as f:
    f.write(b"not a png")
  # Listing reads no file: a corrupt one is found when a batch reads it.
  ds = data.load(c)
  read_all = lambda ds: [list(data.eval_batches(s, global_batch=8, image_size=16))
                         for s in (ds.train, ds.val)]
  with pytest.raises(UserError) as e:
    read_all(ds)
  assert f"corrupt or non-image file {broken}" in str(e.value)
  assert "\n" not in str(e.value)
  c.dataset.corrupt_images = "skip"
  ds = data.load(c)
  assert len(ds.train) + len(ds.val) == 39  # kept: its rows take a neighbour's
  read_all(ds)
  assert data.skipped_summary(ds) == {"corrupt_images_skipped": 1}


def test_csv_cli_run_and_cli_errors(tmp_path):
  img_dir, csv_path, _ = _write_mhist(str(tmp_path), n_train=60, n_test=20)
  workdir = str(tmp_path / "wd")
  base = ["--config=configs/quickstart.py:runlocal,dataset=csv",
          f"--config.dataset.data_dir={img_dir}"]
  r = helpers.run_cli(*base, f"--config.dataset.csv={csv_path}",
                      f"--workdir={workdir}", "--config.scratch_baseline=false")
  assert r.returncode == 0, r.stderr[-3000:]
  assert os.path.exists(os.path.join(workdir, "results.json"))
  r = helpers.run_cli(*base, f"--config.dataset.csv={tmp_path}/missing.csv",
                      f"--workdir={tmp_path}/wd2")
  assert r.returncode == 2 and "missing.csv" in r.stderr
  assert not os.path.exists(str(tmp_path / "wd2"))
  r = helpers.run_cli(*base, f"--workdir={tmp_path}/wd3")
  assert r.returncode == 2 and "config.dataset.csv=<annotations CSV>" in r.stderr


# ------------------------------------------------------ balanced sampling


def _imbalanced(n=1000, minority=100):
  labels = np.zeros(n, np.int32)
  labels[-minority:] = 1
  index = np.arange(n)
  images = np.stack([index % 256, index // 256], 1).astype(np.uint8)
  return data.Split(labels, images=images.reshape(n, 2, 1, 1))


def _batches(split, **kw):
  args = dict(global_batch=50, seed=3, epoch=2, num_steps=20, image_size=8,
              balanced=True)
  return list(data.train_batches(split, **{**args, **kw}))


def test_balanced_sampling_is_even_deterministic_and_resumable():
  split = _imbalanced()
  batches = _batches(split)
  labels = np.concatenate([b["label"] for b in batches])
  assert len(labels) == 1000 and 0.45 < labels.mean() < 0.55  # 90/10 -> ~50/50
  again = _batches(split)
  for a, b in zip(batches, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  resumed = _batches(split, start_step=7)
  assert len(resumed) == 13
  for a, b in zip(batches[7:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  other = _batches(split, epoch=3)
  assert not np.array_equal(other[0]["image"], batches[0]["image"])
  # Each process reads its own rows of the same global batches.
  halves = [_batches(split, process_index=i, process_count=2) for i in (0, 1)]
  np.testing.assert_array_equal(
      np.concatenate([halves[0][4]["image"], halves[1][4]["image"]]),
      batches[4]["image"])


def test_unbalanced_order_is_unchanged():
  split = _imbalanced()
  batches = _batches(split, balanced=False)
  labels = np.concatenate([b["label"] for b in batches])
  assert labels.mean() == pytest.approx(0.1)  # a permutation: every example once
  perm = np.random.default_rng([3, 2]).permutation(1000)
  np.testing.assert_array_equal(batches[0]["label"], split.labels[perm[:50]])
  default = list(data.train_batches(split, global_batch=50, seed=3, epoch=2,
                                    num_steps=20, image_size=8))
  np.testing.assert_array_equal(default[5]["image"], batches[5]["image"])
