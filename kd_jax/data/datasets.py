"""Data: sources, deterministic batching, and on-device preprocessing.

Sources (``config.dataset.name``):
  * ``default``: the embedded default. Fashion-MNIST from the Debian package
    ``dataset-fashion-mnist`` (the original IDX files under
    /usr/share/datasets/fashion-mnist) when installed, else scikit-learn's
    bundled 8x8 digits. Nothing is ever downloaded.
  * ``fashion_mnist_local`` / ``digits``: one of those two explicitly.
  * ``mnist_local``: MNIST's original IDX files from ``dataset.data_dir`` or
    ``$KD_JAX_MNIST_DIR`` (the Fashion-MNIST reader).
  * ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: TFDS, read from a
    prepared ``config.dataset.data_dir`` (``tfds build NAME --data_dir DIR``
    once, on a machine with internet). Loaded into memory as uint8.
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
decoded by tf.data in parallel and prefetched); conversion to float,
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
from PIL import Image

from kd_jax.data.prepare import MANIFEST
from kd_jax.errors import UserError

FASHION_MNIST_DIR = os.environ.get(
    "KD_JAX_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
TFDS_NAMES = ("mnist", "fashion_mnist", "cifar10", "cifar100")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"GIF87a", b"GIF89a")
NORMALIZATION = {  # name -> (mean, std) per RGB channel, on [0, 1] pixels
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclasses.dataclass
class Split:
  labels: np.ndarray  # int32 [N]
  images: np.ndarray | None = None  # uint8 [N, H, W, C] (in-memory sources)
  paths: np.ndarray | None = None  # str [N] (image folders)
  # float32 [N, K]: cached teacher logits (teacher_cache.py); batches then
  # carry them as `teacher_logits`.
  teacher_logits: np.ndarray | None = None
  # [N, h, w, c]: the teacher's cached hint feature (FitNets; `hint` in
  # train batches; may be a read-only memory map).
  teacher_features: np.ndarray | None = None
  # int [N]: each example's index in its source's own split (in-memory
  # sources; `teacher_logits.py` looks logits up by it).
  index: np.ndarray | None = None
  # str [N]: each frame's video and patient (an image folder written by
  # `kd_jax.prepare frames`, from its manifest.csv): per-video and
  # per-patient results.
  videos: np.ndarray | None = None
  patients: np.ndarray | None = None

  def __len__(self):
    return len(self.labels)

  def take(self, idx):
    pick = lambda a: None if a is None else a[idx]
    return Split(self.labels[idx], pick(self.images), pick(self.paths),
                 pick(self.teacher_logits), pick(self.teacher_features),
                 pick(self.index), pick(self.videos), pick(self.patients))


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


def _load_tfds(name, data_dir):
  import tensorflow_datasets as tfds
  if not data_dir or not os.path.isdir(data_dir):
    raise UserError(
        f"TFDS dataset {name!r} needs config.dataset.data_dir=<prepared dir> "
        f"(got {data_dir!r}); prepare it once with internet: "
        f"`tfds build {name} --data_dir DIR`")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    arrays = {}
    for split in ("train", "test"):
      ds = tfds.load(name, split=split, data_dir=data_dir,
                     as_supervised=True, download=False)
      chunks = list(tfds.as_numpy(ds.batch(8192)))  # one-time, vectorised
      x = np.concatenate([c[0] for c in chunks]).astype(np.uint8)
      y = np.concatenate([c[1] for c in chunks]).astype(np.int32)
      arrays[split] = (x, y)
    names = tuple(builder.info.features["label"].names)
  except UserError:
    raise
  except Exception as e:  # tfds raises many types; keep it one line
    raise UserError(f"cannot read TFDS dataset {name!r} from {data_dir} "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                    f"prepare it once with internet: "
                    f"`tfds build {name} --data_dir {data_dir}`") from None
  return names, arrays


def _image_problem(path) -> str | None:
  """Why `path` is not a readable image (None if it is): the magic bytes of
  PNG/JPEG/BMP/GIF, then Pillow's integrity check (truncated files, bad
  chunks)."""
  try:
    with open(path, "rb") as f:
      head = f.read(8)
  except OSError as e:
    return f"cannot read image file {path}: {e.strerror}"
  if not any(head.startswith(m) for m in _MAGIC):
    return f"corrupt or non-image file {path} (not PNG/JPEG/BMP/GIF)"
  try:
    with Image.open(path) as im:
      im.verify()
    with Image.open(path) as im:  # verify() does not decode the pixels
      im.load()
  except Exception as e:  # Pillow raises many types for broken files
    return f"corrupt image file {path} ({type(e).__name__}: {e})"
  return None


def _readable(paths, where, corrupt="refuse"):
  """Indices of `paths` that are readable images. A broken file is a
  UserError, or with corrupt='skip' is left out and counted in one warning
  about `where`: one bad frame must not stop a long run unnoticed."""
  keep, skipped = [], []
  for i, path in enumerate(paths):
    problem = _image_problem(path)
    if problem and corrupt == "skip":
      skipped.append(path)
      continue
    if problem:
      raise UserError(problem + " (config.dataset.corrupt_images='skip' "
                      "leaves such files out)")
    keep.append(i)
  if skipped:
    print(f"kd_jax: warning: skipped {len(skipped)} corrupt or non-image "
          f"file(s) in {where}: {', '.join(skipped[:3])}"
          + (" ..." if len(skipped) > 3 else ""), file=sys.stderr)
  return keep


def _list_folder_split(root, split, class_names=None, corrupt="refuse"):
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
  keep = _readable(paths, split_dir, corrupt)
  if not keep:
    raise UserError(f"no images (*.png|jpg|jpeg|bmp|gif) under {split_dir}")
  return tuple(classes), Split(np.asarray(labels, np.int32)[keep],
                               paths=np.asarray(paths)[keep])


def _load_folder(root, corrupt="refuse"):
  if not os.path.isdir(root):
    raise UserError(f"data folder {root!r} does not exist")
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(root, split)):
      raise UserError(f"data folder {root!r} has no {split}/ subfolder; "
                      "expected root/{train,val,test}/<class>/*.png|jpg")
  names, train = _list_folder_split(root, "train", corrupt=corrupt)
  _, test = _list_folder_split(root, "test", names, corrupt)
  val = None
  if os.path.isdir(os.path.join(root, "val")):
    _, val = _list_folder_split(root, "val", names, corrupt)
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
  rel = [os.path.normpath(os.path.relpath(p, root)) for p in split.paths]
  if not units or not all(r in units for r in rel):
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
  keep = np.zeros(len(rows), bool)
  keep[_readable(paths, dc.data_dir, dc.corrupt_images)] = True
  parts = {}
  for name in ("train", "val", "test"):
    idx = np.flatnonzero(keep & (split_of == name))
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
  image directory."""
  if name == "csv":
    return _load_csv(dc)
  names, train, val, test = _load_folder(dc.data_dir, dc.corrupt_images)
  if val is None:
    print(f"warning: {dc.data_dir} has no val/ folder; holding out "
          f"{dc.val_fraction:.0%} of train frames at random for validation. "
          "Frames of one video can then fall in both train and val; give "
          "a val/ folder split by video to avoid that.", file=sys.stderr)
    train, val = _holdout(train, dc.val_fraction)
  return names, train, val, test


def _tfds_absent(name, data_dir) -> str | None:
  """Why TFDS dataset `name` is not prepared here (None: it may be)."""
  if not data_dir:
    return f"TFDS {name!r} is not prepared here (no dataset.data_dir)"
  if not os.path.isdir(data_dir):
    return (f"TFDS {name!r} is not prepared here (dataset.data_dir "
            f"{data_dir!r} does not exist)")
  return None


def _tiny_tfds(name, data_dir):
  """(the source read, class names, arrays) of TFDS dataset `name` in tiny
  mode: the embedded default when `name` is not prepared here, with one
  line saying so. TFDS data needs internet to prepare, so a config's tiny
  mode runs on a fresh machine on the embedded data instead; outside tiny
  mode the missing data is the error."""
  reason = _tfds_absent(name, data_dir)
  if reason is None:
    try:
      return (name, *_load_tfds(name, data_dir))
    except UserError as e:
      reason = str(e)
  fallback = resolve_name("default")
  print(f"kd_jax: tiny mode: {reason}; using the embedded data ({fallback}) "
        "instead", file=sys.stderr, flush=True)
  return (fallback, *_load_arrays(fallback, data_dir))


def _load_arrays(name, data_dir):
  """(class names, {'train'|'test': (uint8 images, int32 labels)}) of an
  in-memory source."""
  if name == "fashion_mnist_local":
    return _load_fashion_mnist_local()
  if name == "mnist_local":
    return _load_mnist_local(data_dir)
  if name == "digits":
    return _load_digits()
  if name in TFDS_NAMES:
    return _load_tfds(name, data_dir)
  raise UserError(f"unknown dataset {name!r}")


def load(config) -> Dataset:
  """Loads the configured dataset. Raises UserError on missing/bad data
  (in tiny mode a TFDS dataset that is not prepared here is the embedded
  default instead, `_tiny_tfds`)."""
  dc = config.dataset
  name = resolve_name(dc.name)
  if name in ("folder", "csv"):
    names, train, val, test = _load_files(dc, name)
    shape = (dc.image_size, dc.image_size, 3)
  else:
    if name in TFDS_NAMES and config.get("runlocal"):
      name, names, arrays = _tiny_tfds(name, dc.data_dir)
    else:
      names, arrays = _load_arrays(name, dc.data_dir)
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    train, val = _holdout(Split(ytr, xtr, index=np.arange(len(ytr))),
                          dc.val_fraction or 0.1)
    test = Split(yte, xte, index=np.arange(len(yte)))
    shape = tuple(xtr.shape[1:])
  train = limit(train, dc.train_limit)
  val, test = limit(val, dc.eval_limit), limit(test, dc.eval_limit)
  return Dataset(name, tuple(names), train, val, test, shape)


# --------------------------------------------------------------- batching


def hash_split(h, split: Split):
  """Feeds `split`'s labels and images (in-memory arrays) or file list
  (path, size, modification time) into the hash `h`."""
  h.update(np.ascontiguousarray(split.labels).tobytes())
  if split.images is not None:
    h.update(str(split.images.shape).encode())
    h.update(np.ascontiguousarray(split.images).tobytes())
  else:
    for p in split.paths:
      st = os.stat(p)
      h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())


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


def _decode_folder(paths, image_size):
  """tf.data pipeline: parallel decode + resize to uint8 [S, S, 3]."""
  import tensorflow as tf

  def decode(path):
    img = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
    img = tf.image.resize(img, (image_size, image_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8)

  ds = tf.data.Dataset.from_tensor_slices(paths)
  return ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)


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
  import tensorflow as tf
  if not index_batches:
    return
  n = len(index_batches[0])  # every batch has this size (eval pads its last)
  assert all(len(i) == n for i in index_batches)
  flat = np.concatenate(index_batches)
  ds = _decode_folder(split.paths[flat], image_size).batch(n).prefetch(
      tf.data.AUTOTUNE)
  for idx, images in zip(index_batches, ds.as_numpy_iterator()):
    yield {"image": images, "label": split.labels[idx]}


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


def preprocess(images_BxHxWxC, *, image_size, normalization="half", rng=None,
               random_crop=False, random_flip=False, crop_padding=4):
  """uint8 -> normalised float32 [B, S, S, 3]; augments when `rng` is given."""
  x = images_BxHxWxC.astype(jnp.float32) / 255.0
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)  # greyscale -> 3 channels
  b, h, w, _ = x.shape
  if (h, w) != (image_size, image_size):
    x = jax.image.resize(x, (b, image_size, image_size, 3), "bilinear")
  if rng is not None and (random_crop or random_flip):
    crop_rng, flip_rng = jax.random.split(rng)
    if random_crop:
      p = crop_padding
      padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
      offsets = jax.random.randint(crop_rng, (b, 2), 0, 2 * p + 1)
      x = jax.vmap(lambda im, o: jax.lax.dynamic_slice(
          im, (o[0], o[1], 0), (image_size, image_size, 3)))(padded, offsets)
    if random_flip:
      flip = jax.random.bernoulli(flip_rng, 0.5, (b, 1, 1, 1))
      x = jnp.where(flip, x[:, :, ::-1, :], x)
  mean, std = NORMALIZATION[normalization]
  return (x - jnp.asarray(mean)) / jnp.asarray(std)
