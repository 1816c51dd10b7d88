"""Data: sources, deterministic batching, and on-device preprocessing.

Sources (``config.dataset.name``):
  * ``default``: the embedded default. Fashion-MNIST from the Debian package
    ``dataset-fashion-mnist`` (the original IDX files under
    /usr/share/datasets/fashion-mnist) when installed, else scikit-learn's
    bundled 8x8 digits. Nothing is ever downloaded.
  * ``fashion_mnist_local`` / ``digits``: one of those two explicitly.
  * ``mnist_local``: MNIST's original IDX files from ``dataset.data_dir`` or
    ``$KD_JAX_MNIST_DIR`` (the Fashion-MNIST reader).
  * any other name: a TFDS image-classification dataset (``mnist``,
    ``cifar100``, ``imagenet2012``, ``oxford_flowers102``, ...), read from a
    prepared ``config.dataset.data_dir`` (``tfds build NAME --data_dir DIR
    --file_format=array_record`` once, on a machine with internet). Held in
    memory as uint8 up to ``dataset.in_memory_mb``, else read row by row
    from its ArrayRecord files batch by batch (`tfds_source`).
  * ``folder``: ``data_dir/{train,val,test}/<class>/*.png|jpg``. Splits are
    taken *as given by the folders*: put all frames of one video (one
    patient) into one split, or frames leak between train and test. If
    ``val/`` is missing, ``val_fraction`` of train is held out at random and a
    warning says that this can leak frames of one video.
  * ``csv``: the images of ``data_dir`` listed by an annotations CSV
    (``dataset.csv``; columns ``csv_file_column``, ``csv_label_column``,
    ``csv_split_column`` with train/test/val, as MHIST's annotations.csv).
    Classes are the sorted labels; without a val partition, val is held out
    of train stratified by label.

``train_limit``/``eval_limit`` keep a fixed random sample stratified by
class (`limit`), in the split's order.

Batching is deterministic: epoch ``e`` visits the training set in the order
``np.random.default_rng([seed, e]).permutation(n)`` (``balanced``: n
class-balanced draws from that generator, `epoch_order`), so a run resumed at
(epoch, step) sees exactly the batches an uninterrupted run would. Each
process of a multi-process run reads only its own rows of every global batch.
The host only gathers uint8 arrays (vectorised indexing; image files are
decoded in a thread pool, `decode`, validated lazily as batches read them,
or read from their decoded cache, `decoded_cache`); conversion to float,
greyscale->3 channels, resizing, augmentation and normalisation run on the
accelerator inside the jitted step (`preprocess`).
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.data import augment
from kd_jax.data import decode
from kd_jax.data import decoded_cache
from kd_jax.data import tfds_source
from kd_jax.data import transforms
from kd_jax.data.prepare import MANIFEST
from kd_jax.errors import UserError

FASHION_MNIST_DIR = os.environ.get(
    "KD_JAX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# The embedded and IDX sources; image files are 'folder' and 'csv', and
# any other name is a TFDS dataset (`tfds_source`).
LOCAL_SOURCES = ("fashion_mnist_local", "mnist_local", "digits")
# What a mistyped dataset name may have meant.
KNOWN_NAMES = ("default", *LOCAL_SOURCES, "folder", "csv", "mnist",
               "fashion_mnist", "cifar10", "cifar100")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
NORMALIZATION = {  # name -> (mean, std) per RGB channel, on [0, 1] pixels
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclasses.dataclass
class Split:
  labels: np.ndarray  # int32 [N]
  # uint8 [N, H, W, C]: in-memory sources; an image folder or CSV set read
  # from its decoded cache (a read-only memory map, `decoded_cache`).
  images: np.ndarray | None = None
  paths: np.ndarray | None = None  # str [N] (image folders, CSV sets)
  # float32 [N, K]: cached teacher logits (teacher_cache.py); batches then
  # carry them as `teacher_logits`.
  teacher_logits: np.ndarray | None = None
  # [N, h, w, c]: the teacher's cached hint feature (FitNets; `hint` in
  # train batches; may be a read-only memory map).
  teacher_features: np.ndarray | None = None
  # int [N]: each example's index in its source's own split (in-memory
  # and TFDS sources; `teacher_logits.py` looks logits up by it).
  index: np.ndarray | None = None
  # str [N]: each frame's video and patient (an image folder written by
  # `kd_jax.prepare frames`, from its manifest.csv): per-video and
  # per-patient results.
  videos: np.ndarray | None = None
  patients: np.ndarray | None = None
  # How `paths` decode: the split's geometry and corrupt-file policy.
  files: decode.Files | None = None
  # A TFDS split too large to hold: its images are read by `index` from
  # this `tfds_source.Rows`, batch by batch.
  source: tfds_source.Rows | None = None

  def __len__(self):
    return len(self.labels)

  def take(self, idx):
    pick = lambda a: None if a is None else a[idx]
    return Split(self.labels[idx], pick(self.images), pick(self.paths),
                 pick(self.teacher_logits), pick(self.teacher_features),
                 pick(self.index), pick(self.videos), pick(self.patients),
                 files=self.files, source=self.source)


@dataclasses.dataclass
class Dataset:
  name: str  # the concrete source, e.g. 'fashion_mnist_local'
  class_names: tuple
  train: Split
  val: Split
  test: Split
  image_shape: tuple  # (H, W, C) of the stored uint8 images

  @property
  def num_classes(self):
    return len(self.class_names)

  def describe(self):
    h, w, c = self.image_shape
    return (f"{self.name}: {self.num_classes} classes, {h}x{w}x{c}, "
            f"train/val/test = {len(self.train)}/{len(self.val)}/{len(self.test)}")


# ----------------------------------------------------------------- sources


def _read_idx(path):
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def idx_files_available(root) -> bool:
  """Whether `root` holds the four (Fashion-)MNIST IDX files."""
  return all(os.path.exists(os.path.join(root, f"{s}-{k}.gz"))
             for s in ("train", "t10k")
             for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def fashion_mnist_available(root=None):
  return idx_files_available(root or FASHION_MNIST_DIR)


def _read_idx_splits(root):
  """{'train'|'test': (uint8 [N, 28, 28, 1], int32 [N])} from the original
  IDX files (MNIST and Fashion-MNIST share names and format)."""
  arrays = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    x = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    arrays[split] = (x[..., None], y.astype(np.int32))
  return arrays


def _load_fashion_mnist_local():
  root = FASHION_MNIST_DIR
  if not fashion_mnist_available(root):
    raise UserError(
        f"Fashion-MNIST IDX files not found in {root}; install them with "
        "`apt-get install -y dataset-fashion-mnist` (or use dataset.name=digits)")
  return FASHION_MNIST_CLASSES, _read_idx_splits(root)


def _load_mnist_local(data_dir):
  root = data_dir or os.environ.get("KD_JAX_MNIST_DIR", "")
  if not root or not idx_files_available(root):
    raise UserError(
        f"MNIST IDX files (train-images-idx3-ubyte.gz, ...) not found in "
        f"{root or '(unset)'}; set config.dataset.data_dir or "
        "$KD_JAX_MNIST_DIR to the folder holding them")
  return tuple(str(d) for d in range(10)), _read_idx_splits(root)


def _load_digits():
  from sklearn.datasets import load_digits  # bundled with scikit-learn
  d = load_digits()
  x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  y = d.target.astype(np.int32)
  # Fixed stratification-free split: the last 20% (shuffled once) is test.
  perm = np.random.default_rng(1234).permutation(len(y))
  n_test = len(y) // 5
  test, train = perm[:n_test], perm[n_test:]
  names = tuple(str(i) for i in range(10))
  return names, {"train": (x[train], y[train]), "test": (x[test], y[test])}


def _load_tfds(name, dc):
  """(class names, train, val, test, image shape) of TFDS dataset `name`
  (`tfds_source`): decoded into memory when its images take at most
  dataset.in_memory_mb, else read batch by batch from its ArrayRecord
  files. val is its 'validation' split next to a 'test' split, else
  val_fraction of train held out, as for the other array sources."""
  src = tfds_source.open_dataset(name, dc.data_dir, KNOWN_NAMES)
  geo = {role: src.geometry(role, transforms.storage(role, dc))
         for role in ("train", "eval")}
  nbytes = src.nbytes(geo)
  # Unknown sizes (a dataset not prepared, or mocked in tests) take the
  # in-memory path, whose reader names what is missing.
  in_memory = nbytes is None or nbytes <= float(dc.in_memory_mb) * 2**20
  split = lambda role, which: _tfds_split(src, src.splits[which], geo[role],
                                          in_memory)
  train, test = split("train", "train"), split("eval", "test")
  if "val" in src.splits:
    val = split("eval", "val")
  else:
    train, val = _holdout(train, dc.val_fraction or 0.1)
    if geo["eval"] != geo["train"]:
      val = _tfds_geometry(src, val, geo["eval"])
  n = len(train) + len(val) + len(test)
  where = ("held in memory" if in_memory else
           f"streamed from {src.builder.data_dir}")
  if jax.process_index() == 0:
    print(f"TFDS {name}: {n} examples {where}", flush=True)
  return src.class_names, train, val, test, src.image_shape(geo["train"])


def _tfds_split(src, which, geometry, in_memory) -> Split:
  """TFDS split `which` at `geometry`: its images in memory, or its labels
  and a row reader (`tfds_source.Rows`)."""
  if in_memory:
    images, labels = src.arrays(which, geometry)
    return Split(labels, images, index=np.arange(len(labels)))
  labels = src.labels(which)
  return Split(labels, index=np.arange(len(labels)),
               source=src.rows(which, geometry))


def _tfds_geometry(src, part: Split, geometry) -> Split:
  """`part` (rows held out of train) at the evaluation `geometry`."""
  which = src.splits["train"]
  if part.source is not None:
    return dataclasses.replace(part, source=src.rows(which, geometry))
  if src.fixed_shape:  # its images in memory are as stored: fit them
    mode, size, resize_size = geometry
    return dataclasses.replace(part, images=np.stack([
        transforms.fit(image, size, mode, resize_size)
        for image in part.images]))
  images, _ = src.arrays(which, geometry)
  return dataclasses.replace(part, images=images[part.index])


def _list_folder_split(root, split, class_names=None):
  """(class names, Split) of `root/split`, listed without reading a file:
  a file that does not decode is found when a batch reads it (`decode`)."""
  split_dir = os.path.join(root, split)
  classes = sorted(d for d in os.listdir(split_dir)
                   if os.path.isdir(os.path.join(split_dir, d)))
  if not classes:
    raise UserError(f"no class folders in {split_dir}; expected "
                    f"{split_dir}/<class>/*.png|jpg")
  if class_names is not None and tuple(classes) != tuple(class_names):
    raise UserError(
        f"class folders of {split_dir} ({', '.join(classes)}) differ from "
        f"train's ({', '.join(class_names)})")
  paths, labels = [], []
  for label, cls in enumerate(classes):
    for fname in sorted(os.listdir(os.path.join(split_dir, cls))):
      if fname.lower().endswith(IMAGE_EXTENSIONS):
        paths.append(os.path.join(split_dir, cls, fname))
        labels.append(label)
  if not paths:
    raise UserError(f"no images (*.png|jpg|jpeg|bmp|gif) under {split_dir}")
  return tuple(classes), Split(np.asarray(labels, np.int32),
                               paths=np.asarray(paths))


def _load_folder(root):
  if not os.path.isdir(root):
    raise UserError(f"data folder {root!r} does not exist")
  has = lambda split: os.path.isdir(os.path.join(root, split))
  # ImageNet's layout (train/ and val/, no test/): its val/ is the split
  # the field reports, so it is the test split here and selection holds
  # out part of train.
  for split in ("train",) + (() if has("val") else ("test",)):
    if not has(split):
      raise UserError(f"data folder {root!r} has no {split}/ subfolder; "
                      "expected root/{train,val,test}/<class>/*.png|jpg "
                      "(or ImageNet's root/{train,val}/<class>/*.JPEG)")
  names, train = _list_folder_split(root, "train")
  _, test = _list_folder_split(root, "test" if has("test") else "val", names)
  val = None
  if has("val") and has("test"):
    _, val = _list_folder_split(root, "val", names)
  units = _manifest_units(root)
  return names, *(None if s is None else _with_units(s, root, units)
                  for s in (train, val, test))


def _manifest_units(root) -> dict:
  """{frame path relative to root: (video, patient)} of a folder written by
  `kd_jax.prepare frames` (its manifest.csv), else {}."""
  path = os.path.join(root, MANIFEST)
  if not os.path.isfile(path):
    return {}
  with open(path, newline="", encoding="utf-8") as f:
    return {os.path.normpath(r["path"]): (r["video"], r["group"])
            for r in csv.DictReader(f)}


def _with_units(split: Split, root, units) -> Split:
  """`split` with its frames' videos and patients when the manifest lists
  every frame (a frame added by hand leaves the split without them)."""
  if not units:  # most folders have no manifest: no per-path work then
    return split
  rel = [os.path.normpath(os.path.relpath(p, root)) for p in split.paths]
  if not all(r in units for r in rel):
    return split
  return dataclasses.replace(
      split, videos=np.asarray([units[r][0] for r in rel]),
      patients=np.asarray([units[r][1] for r in rel]))


CSV_SPLITS = {"train": "train", "test": "test", "val": "val", "valid": "val",
              "validation": "val"}  # a CSV's split value (any case) -> split
_CSV_COLUMNS = ("csv_file_column", "csv_label_column", "csv_split_column")


def _read_csv(dc):
  """[(line, file, label, split)] of `dc.csv`'s rows, cells stripped;
  UserError when the file or one of the configured columns is missing."""
  if not os.path.isfile(dc.csv):
    raise UserError(f"config.dataset.csv={dc.csv!r}: no such file (allowed: "
                    "an annotations CSV with a row per image)")
  with open(dc.csv, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = [h.strip() for h in next(reader, [])]
    cols = []
    for key in _CSV_COLUMNS:
      if dc[key] not in header:
        raise UserError(f"{dc.csv} has no column {dc[key]!r} (config.dataset."
                        f"{key}); its columns: {', '.join(map(repr, header))}")
      cols.append(header.index(dc[key]))
    rows = []
    for row in reader:
      if any(cell.strip() for cell in row):  # blank lines are no examples
        rows.append((reader.line_num, *(row[i].strip() if i < len(row) else ""
                                        for i in cols)))
  if not rows:
    raise UserError(f"{dc.csv} has a header but no rows")
  return rows


def _check_csv_rows(dc, rows):
  """UserError for the first row with an empty file name or label, a split
  value outside CSV_SPLITS, or a file listed twice (it would leak between
  splits)."""
  seen = {}
  for line, fname, label, split in rows:
    where = f"{dc.csv} line {line}"
    if not fname:
      raise UserError(f"{where}: empty {dc.csv_file_column!r}; every row "
                      "needs an image file name")
    if not label:
      raise UserError(f"{where} ({fname}): empty {dc.csv_label_column!r}; "
                      "every image needs a class label")
    if split.lower() not in CSV_SPLITS:
      raise UserError(f"{where} ({fname}): {dc.csv_split_column} {split!r} is "
                      f"not allowed; allowed: {', '.join(CSV_SPLITS)} (any case)")
    if fname in seen:
      raise UserError(f"{where}: {fname} is listed twice (also line "
                      f"{seen[fname]}); allowed: one row per image")
    seen[fname] = line


def _csv_paths(dc, files):
  """The image paths of `files` under data_dir; UserError naming how many
  are missing and the first."""
  if not os.path.isdir(dc.data_dir):
    raise UserError(f"config.dataset.data_dir={dc.data_dir!r} does not exist "
                    f"(allowed: the directory of the images {dc.csv} lists)")
  paths = [os.path.join(dc.data_dir, f) for f in files]
  missing = [f for f, p in zip(files, paths) if not os.path.isfile(p)]
  if missing:
    raise UserError(f"{len(missing)} of the {len(files)} images {dc.csv} lists "
                    f"are missing from {dc.data_dir}, the first: {missing[0]}")
  return np.asarray(paths)


def _load_csv(dc):
  """(class names, train, val, test) of a CSV-annotated image directory;
  without a val partition val is held out of train, stratified by label."""
  rows = _read_csv(dc)
  _check_csv_rows(dc, rows)
  _, files, labels, splits = zip(*rows)
  paths = _csv_paths(dc, files)
  names = tuple(sorted(set(labels)))
  y = np.asarray([names.index(label) for label in labels], np.int32)
  split_of = np.asarray([CSV_SPLITS[s.lower()] for s in splits])
  parts = {}
  for name in ("train", "val", "test"):
    idx = np.flatnonzero(split_of == name)
    parts[name] = Split(y[idx], paths=paths[idx])
  if not len(parts["val"]):
    parts["train"], parts["val"] = stratified_holdout(parts["train"],
                                                      dc.val_fraction)
  for split, part in parts.items():
    absent = [c for i, c in enumerate(names) if not np.any(part.labels == i)]
    if absent:
      raise UserError(f"{dc.csv}: class {absent[0]!r} has no example in the "
                      f"{split} split; every class needs one in train, val "
                      "(given or held out of train) and test")
  return names, parts["train"], parts["val"], parts["test"]


# ------------------------------------------------------------------- load

# Limits and held-out splits are a property of the data, not of a run: with
# one fixed seed every run seed, sweep cell and stage (teacher, student,
# scratch) sees the same examples, so their metrics compare and dataset
# fingerprints and teacher caches match.
SAMPLE_SEED = 0


def _holdout(train: Split, fraction):
  """Fixed (seed-independent) random hold-out of `fraction` of train."""
  perm = np.random.default_rng(SAMPLE_SEED).permutation(len(train))
  n_val = max(1, int(round(len(train) * fraction)))
  return train.take(np.sort(perm[n_val:])), train.take(np.sort(perm[:n_val]))


def stratified_holdout(train: Split, fraction, seed=SAMPLE_SEED):
  """(train, val): `fraction` of every class held out at random, at least
  one and at most all but one of each class (a class of one example stays
  in train)."""
  rng = np.random.default_rng(seed)
  picks = []
  for c in np.unique(train.labels):
    idx = np.flatnonzero(train.labels == c)
    k = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
    picks.append(rng.choice(idx, k, replace=False))
  val = np.sort(np.concatenate(picks)).astype(np.int64)
  return train.take(np.setdiff1d(np.arange(len(train)), val)), train.take(val)


def class_quotas(counts, n):
  """Examples per class in a sample of `n` of sum(`counts`): proportional
  by largest remainder, and at least one of every class when n >= the
  number of classes (a small sample must not lose a class)."""
  counts = np.asarray(counts)
  ideal = n * counts / counts.sum()
  quota = np.floor(ideal).astype(int)
  if n >= len(counts):
    quota = np.maximum(quota, 1)
  while quota.sum() > n:  # only after raising classes to one
    quota[np.argmax(np.where(quota > 1, quota - ideal, -np.inf))] -= 1
  while quota.sum() < n:
    quota[np.argmax(np.where(quota < counts, ideal - quota, -np.inf))] += 1
  return quota


def limit(split: Split, n, seed=SAMPLE_SEED) -> Split:
  """`split` cut to `n` examples (0: all): a random sample stratified by
  class (`class_quotas`), in the split's order. The first N would be one
  class of a folder listed class by class."""
  if not n or n >= len(split):
    return split
  classes, counts = np.unique(split.labels, return_counts=True)
  rng = np.random.default_rng(seed)
  picks = [rng.choice(np.flatnonzero(split.labels == c), q, replace=False)
           for c, q in zip(classes, class_quotas(counts, n))]
  return split.take(np.sort(np.concatenate(picks)))


def stage_data(ds: Dataset, role: str, transfer_limit: int) -> Dataset:
  """The data a stage of `role` trains on: every training image for the
  teacher, the transfer set (`dataset.transfer_limit` images) for the
  others."""
  if role == "teacher" or not transfer_limit:
    return ds
  return dataclasses.replace(ds, train=limit(ds.train, transfer_limit))


def resolve_name(name):
  if name == "default":
    return "fashion_mnist_local" if fashion_mnist_available() else "digits"
  return name


def _load_files(dc, name):
  """(class names, train, val, test) of an image folder or a CSV-annotated
  image directory (`_file_splits`)."""
  if name == "csv":
    names, *splits = _load_csv(dc)
    return names, *_file_splits(dc, name, splits)
  names, train, val, test = _load_folder(dc.data_dir)
  if val is None and not os.path.isdir(os.path.join(dc.data_dir, "test")):
    print(f"{dc.data_dir}: ImageNet layout (train/, val/): val/ is the test "
          f"split; {dc.val_fraction:.0%} of train is held out for "
          "validation", file=sys.stderr)
    train, val = stratified_holdout(train, dc.val_fraction)
  elif val is None:
    print(f"warning: {dc.data_dir} has no val/ folder; holding out "
          f"{dc.val_fraction:.0%} of train frames at random for validation. "
          "Frames of one video can then fall in both train and val; give "
          "a val/ folder split by video to avoid that.", file=sys.stderr)
    train, val = _holdout(train, dc.val_fraction)
  return names, *_file_splits(dc, name, (train, val, test))


def _file_splits(dc, name, splits):
  """train, val, test of image files, each cut to its limit (here, not
  only in `load`: a decoded cache holds the files a run reads), told how
  its files decode (its role's geometry, `transforms.storage`, and
  dataset.corrupt_images) and, with dataset.decoded_cache, read from it."""
  skipped = decode.Skipped()  # one log: a run counts each file once
  out = []
  for split, part in zip(("train", "val", "test"), splits):
    role = "train" if split == "train" else "eval"
    n = dc.train_limit if split == "train" else dc.eval_limit
    files = decode.Files(decode.Geometry.of(role, dc), dc.corrupt_images,
                         skipped)
    part = dataclasses.replace(limit(part, n), files=files)
    if dc.decoded_cache:
      part = _from_decoded_cache(dc, name, split, n, part)
    out.append(part)
  return out


def _from_decoded_cache(dc, name, split, n, part):
  """`part` with its images read from dataset.decoded_cache (decoded and
  written first when absent); the rows of files skipped as corrupt take
  their stand-in row's label, as its image."""
  source = {"dataset": name, "root": os.path.abspath(dc.data_dir),
            "csv": os.path.abspath(dc.csv) if name == "csv" else "",
            "split": split, "limit": int(n),
            "val_fraction": float(dc.val_fraction)}
  images, skipped = decoded_cache.load_or_write(
      dc.decoded_cache, source, part.paths, part.files)
  labels = np.array(part.labels)
  for s in skipped:
    if part.files.corrupt != "skip":
      raise UserError(f"{s['problem']}, recorded in the decoded cache "
                      f"{dc.decoded_cache}{decode.REFUSE_HINT}")
    part.files.skipped.add(s["path"], s["problem"])
    labels[s["row"]] = labels[s["stand_in"]]
  return dataclasses.replace(part, images=images, labels=labels)


def skipped_summary(ds: Dataset) -> dict:
  """{'corrupt_images_skipped': n} of an image-file dataset (every
  process's skipped files, each once), {} of an in-memory one; results.json
  carries it. A collective: every process calls it."""
  files = ds.train.files
  if files is None:
    return {}
  return {"corrupt_images_skipped":
          decode.count_across_processes(list(files.skipped.files))}


def _tfds_absent(name, data_dir) -> str | None:
  """Why TFDS dataset `name` is not prepared here (None: it may be)."""
  if not data_dir:
    return f"TFDS {name!r} is not prepared here (no dataset.data_dir)"
  if not os.path.isdir(data_dir):
    return (f"TFDS {name!r} is not prepared here (dataset.data_dir "
            f"{data_dir!r} does not exist)")
  return None


def _tfds_or_embedded(name, config):
  """(the source read, class names, train, val, test, image shape) of TFDS
  dataset `name`; in tiny mode the embedded default when `name` is not
  prepared here, with one line saying so. TFDS data needs internet to
  prepare, so a config's tiny mode runs on a fresh machine on the embedded
  data instead; outside tiny mode the missing data is the error."""
  dc, tiny = config.dataset, config.get("runlocal")
  # A mistyped name is an error, not a reason to fall back.
  tfds_source.check_name(name, dc.data_dir, KNOWN_NAMES)
  reason = _tfds_absent(name, dc.data_dir) if tiny else None
  if reason is None:
    try:
      return (name, *_load_tfds(name, dc))
    except tfds_source.NotPrepared as e:
      if not tiny:
        raise
      reason = str(e)
  fallback = resolve_name("default")
  print(f"kd_jax: tiny mode: {reason}; using the embedded data ({fallback}) "
        "instead", file=sys.stderr, flush=True)
  return (fallback, *_array_splits(dc, *_load_arrays(fallback, dc.data_dir)))


def _load_arrays(name, data_dir):
  """(class names, {'train'|'test': (uint8 images, int32 labels)}) of an
  embedded or IDX source (LOCAL_SOURCES)."""
  if name == "fashion_mnist_local":
    return _load_fashion_mnist_local()
  if name == "mnist_local":
    return _load_mnist_local(data_dir)
  if name == "digits":
    return _load_digits()
  raise UserError(f"unknown dataset {name!r}")


def _array_splits(dc, names, arrays):
  """(class names, train, val, test, image shape) of `_load_arrays`'
  arrays: val held out of train."""
  (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
  train, val = _holdout(Split(ytr, xtr, index=np.arange(len(ytr))),
                        dc.val_fraction or 0.1)
  test = Split(yte, xte, index=np.arange(len(yte)))
  # dataset.eval_transform of arrays (image files get it as decoded).
  val, test = transforms.fit_split(val, dc), transforms.fit_split(test, dc)
  return names, train, val, test, tuple(xtr.shape[1:])


def load(config) -> Dataset:
  """Loads the configured dataset. Raises UserError on missing/bad data
  (in tiny mode a TFDS dataset that is not prepared here is the embedded
  default instead, `_tfds_or_embedded`)."""
  dc = config.dataset
  name = resolve_name(dc.name)
  if name in ("folder", "csv"):
    names, train, val, test = _load_files(dc, name)
    shape = (dc.image_size, dc.image_size, 3)
  elif name in LOCAL_SOURCES:
    names, train, val, test, shape = _array_splits(
        dc, *_load_arrays(name, dc.data_dir))
  else:  # any other name is a TFDS dataset
    name, names, train, val, test, shape = _tfds_or_embedded(name, config)
  train = limit(train, dc.train_limit)
  val, test = limit(val, dc.eval_limit), limit(test, dc.eval_limit)
  return Dataset(name, tuple(names), train, val, test, shape)


# --------------------------------------------------------------- batching


def hash_split(h, split: Split):
  """Feeds `split`'s labels and file list (path, size, modification time)
  or in-memory images or streamed TFDS rows (their files' names, sizes
  and modification times) into the hash `h`. Files are hashed by their list
  also when their decoded cache is in memory: that cache is a function of
  them, and reading it whole would take as long as decoding."""
  h.update(np.ascontiguousarray(split.labels).tobytes())
  if split.paths is not None:
    for p in split.paths:
      st = os.stat(p)
      h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  elif split.source is not None:  # a streamed TFDS split: by its files
    h.update(np.ascontiguousarray(split.index).tobytes())
    h.update(split.source.fingerprint().encode())
  else:
    h.update(str(split.images.shape).encode())
    h.update(np.ascontiguousarray(split.images).tobytes())


def digest(ds: Dataset) -> str:
  """A short hash of the dataset's name, classes and every split's data."""
  h = hashlib.blake2b(digest_size=8)
  h.update(f"{ds.name}|{'|'.join(ds.class_names)}".encode())
  for name in ("train", "val", "test"):
    h.update(name.encode())
    hash_split(h, getattr(ds, name))
  return h.hexdigest()


def steps_per_epoch(n_train, global_batch, max_steps=0):
  steps = n_train // global_batch
  if steps == 0:
    raise UserError(f"batch_size={global_batch} is larger than the training "
                    f"set ({n_train} examples)")
  return min(steps, max_steps) if max_steps else steps


def _gather_batches(split: Split, index_batches, image_size):
  """Yields `{"image": uint8 images, "label": labels}` for each array of
  indices, in order, plus the cached `teacher_logits` (and `hint` features)
  when the split carries them."""
  if split.teacher_logits is not None:
    plain = dataclasses.replace(split, teacher_logits=None, teacher_features=None)
    feats = split.teacher_features
    for idx, batch in zip(
        index_batches, _gather_batches(plain, index_batches, image_size)):
      batch["teacher_logits"] = split.teacher_logits[idx]
      if feats is not None:
        batch["hint"] = np.asarray(feats[idx])
      yield batch
    return
  if split.images is not None:
    for idx in index_batches:
      yield {"image": split.images[idx], "label": split.labels[idx]}
    return
  if split.source is not None:  # a streamed TFDS split: read by row
    rows = [split.index[idx] for idx in index_batches]
    for idx, images in zip(index_batches, split.source.batches(rows)):
      yield {"image": images, "label": split.labels[idx]}
    return
  # A split built by hand (no `files`) decodes as a folder's training split.
  files = split.files or decode.Files(decode.Geometry("resize", image_size))
  for images, labels in decode.batches(split.paths, split.labels,
                                       index_batches, files):
    yield {"image": images, "label": labels}


def epoch_order(labels, *, seed, epoch, balanced=False):
  """Indices of the examples epoch `epoch` visits, in order: a permutation,
  or (balanced) len(labels) draws with replacement weighted by inverse class
  frequency, so every class is equally likely at each draw. A function of
  (seed, epoch) only: a resumed run sees the same order."""
  rng = np.random.default_rng([seed, epoch])
  n = len(labels)
  if not balanced:
    return rng.permutation(n)
  _, inverse, counts = np.unique(labels, return_inverse=True,
                                 return_counts=True)
  weights = 1.0 / counts[inverse]
  return rng.choice(n, size=n, replace=True, p=weights / weights.sum())


def train_batches(split: Split, *, global_batch, seed, epoch, num_steps,
                  start_step=0, image_size, process_index=0, process_count=1,
                  balanced=False, indexed=False):
  """This process's rows of global batches `start_step..num_steps-1` of
  `epoch`; `balanced`: class-balanced draws (`epoch_order`); `indexed`: each
  batch also carries `index`, its examples' rows in `split` (CRD's memory
  banks are indexed by them)."""
  order = epoch_order(split.labels, seed=seed, epoch=epoch, balanced=balanced)
  local = global_batch // process_count
  lo = process_index * local
  index_batches = [order[s * global_batch:(s + 1) * global_batch][lo:lo + local]
                   for s in range(start_step, num_steps)]
  for idx, batch in zip(index_batches,
                        _gather_batches(split, index_batches, image_size)):
    yield {**batch, "index": idx.astype(np.int32)} if indexed else batch


def eval_batches(split: Split, *, global_batch, image_size, process_index=0,
                 process_count=1):
  """Every example once, in order; the last batch is padded, mask marks real rows."""
  n = len(split)
  local = global_batch // process_count
  lo = process_index * local
  index_batches, masks = [], []
  for start in range(0, n, global_batch):
    rows = np.arange(start, start + global_batch)[lo:lo + local]
    masks.append(rows < n)
    index_batches.append(np.minimum(rows, n - 1))
  for batch, mask in zip(_gather_batches(split, index_batches, image_size),
                         masks):
    yield {**batch, "mask": mask}


# ------------------------------------------------------ on-device preprocess


TRAIN_TRANSFORMS = ("none", "pad_crop", "random_resized_crop")


def preprocess(images_BxHxWxC, *, image_size, normalization="half", rng=None,
               train_transform="none", random_flip=False, crop_padding=4,
               rrc_scale=augment.DEFAULT_SCALE,
               rrc_ratio=augment.DEFAULT_RATIO):
  """uint8 -> normalised float32 [B, S, S, 3]; augments when `rng` is given:
  `train_transform` ('pad_crop': `augment.pad_crop` of the resized image;
  'random_resized_crop': `augment.random_resized_crop` of the stored image,
  straight to S x S), then the flip."""
  if train_transform not in TRAIN_TRANSFORMS:
    raise ValueError(f"train_transform {train_transform!r}; allowed: "
                     f"{', '.join(TRAIN_TRANSFORMS)}")
  x = images_BxHxWxC.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)  # greyscale -> 3 channels
  b, h, w, _ = x.shape
  augmenting = rng is not None and (train_transform != "none" or random_flip)
  crop_rng, flip_rng = jax.random.split(rng) if augmenting else (None, None)
  if augmenting and train_transform == "random_resized_crop":
    x = augment.random_resized_crop(crop_rng, x, image_size, rrc_scale,
                                    rrc_ratio)
  elif (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, 3), "bilinear")
  if augmenting and train_transform == "pad_crop":
    x = augment.pad_crop(crop_rng, x, crop_padding)
  if augmenting and random_flip:
    flip = jax.random.bernoulli(flip_rng, 0.5, (b, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  mean, std = NORMALIZATION[normalization]
  return (x - jnp.asarray(mean)) / jnp.asarray(std)
