"""TFDS image-classification datasets by name, from a prepared data_dir.

`open_dataset(name, data_dir)` checks that `name` is an image-classification
dataset (an Image input and a ClassLabel target as its supervised keys)
prepared in `data_dir`, and maps its splits: train is 'train'; test is
'test', else 'validation' (ImageNet publishes no test labels, so its
validation split is the test set); val is 'validation' when a 'test' split
exists too, else held out of train by the caller.

A split is either decoded once into memory (`TfdsDataset.arrays`; small
datasets, any file format) or read row by row while training (`Rows`:
random access with `tfds.data_source` over ArrayRecord): each batch reads
only the rows asked for and decodes them in a thread pool, one batch ahead
of the consumer, so nothing larger than the batch pipeline is held.

Images of varying size are fitted on the host to the split's geometry
(`transforms.fit` with `transforms.storage`'s (mode, size, resize_size)),
so that a batch is one uint8 array; images of a fixed shape (MNIST, CIFAR)
are kept as stored, as the other array sources keep them
(`TfdsDataset.geometry`).
"""
from __future__ import annotations

import concurrent.futures
import difflib
import io
import itertools
import os
import threading

import numpy as np
from PIL import Image

from kd_jax.data import decode as file_decode
from kd_jax.data import label_index
from kd_jax.data import transforms
from kd_jax.errors import UserError

_READ_CHUNK = 1024  # rows per read when a whole split is read


class NotPrepared(UserError):
  """The dataset is not prepared where config.dataset.data_dir points (tiny
  mode runs on the embedded data instead)."""


def build_command(name, data_dir="DIR") -> str:
  return (f"`tfds build {name} --data_dir {data_dir or 'DIR'} "
          "--file_format=array_record`")


def decode(encoded: bytes, channels: int) -> np.ndarray:
  """uint8 [H, W, channels] of an encoded image. Pillow, as TFDS's NumPy
  decoder without OpenCV, so the same bytes give the same pixels on every
  machine; the conversion covers palette, greyscale and CMYK files."""
  with Image.open(io.BytesIO(encoded)) as im:
    mode = "L" if channels == 1 else "RGB"
    a = np.asarray(im if im.mode == mode else im.convert(mode), np.uint8)
  return a[..., None] if a.ndim == 2 else a


class Rows:
  """Random access to the images of one TFDS split at one geometry (None:
  as stored, for fixed-shape images)."""

  def __init__(self, builder, split, image_key, channels, geometry,
               file_format):
    self.builder, self.split, self.image_key = builder, split, image_key
    self.channels, self.geometry = channels, geometry
    self._file_format = file_format
    self._source = None
    self._lock = threading.Lock()

  def records(self, rows):
    """The records of `rows` (dicts of features), their images encoded."""
    import tensorflow_datasets as tfds
    with self._lock:
      if self._source is None:
        # The image stays encoded here: decoding runs in the pool.
        self._source = self.builder.as_data_source(
            self.split, decoders={self.image_key: tfds.decode.SkipDecoding()},
            file_format=self._file_format)
      return self._source.__getitems__([int(r) for r in rows])

  def _image(self, encoded):
    image = decode(encoded, self.channels)
    if self.geometry is None:
      return image
    mode, size, resize_size = self.geometry
    return transforms.fit(image, size, mode, resize_size)

  def read(self, rows, label_key=None):
    """uint8 [len(rows), H, W, C]: the images of `rows`, in order; with
    `label_key`, (images, int32 labels) of one read."""
    records = self.records(rows)
    encoded = [r[self.image_key] for r in records]
    images = np.stack(list(file_decode.pool().map(self._image, encoded)))
    if label_key is None:
      return images
    return images, np.asarray([r[label_key] for r in records], np.int32)

  def batches(self, row_batches):
    """Yields `read(rows)` for each array of rows; the next batch is read
    while the consumer uses this one."""
    with concurrent.futures.ThreadPoolExecutor(1) as ahead:
      pending = None
      for rows in row_batches:
        upcoming = ahead.submit(self.read, rows)
        if pending is not None:
          yield pending.result()
        pending = upcoming
      if pending is not None:
        yield pending.result()

  def fingerprint(self) -> str:
    """The dataset, split, geometry and the split's files (name, size,
    modification time): what a cache keyed by the data must change with."""
    root = str(self.builder.data_dir)
    files = sorted(f for f in os.listdir(root) if f"-{self.split}." in f)
    stats = [(f, os.stat(os.path.join(root, f))) for f in files]
    return "|".join([self.builder.info.full_name, self.split,
                     str(self.geometry)] +
                    [f"{f}:{s.st_size}:{s.st_mtime_ns}" for f, s in stats])


def _base_name(name: str) -> str:
  """'imagenet2012' of 'imagenet2012/subset:5.1.0'."""
  return name.split(":")[0].split("/")[0]


def _registered(name) -> bool:
  import tensorflow_datasets as tfds
  try:
    tfds.builder_cls(_base_name(name))
  except Exception:  # DatasetNotFoundError, or a builder module that fails
    return False
  return True


def _cannot_read(name, data_dir, e, builder=None) -> str:
  if builder is not None and not builder.is_prepared():
    why = f": not prepared there (no {builder.data_dir})"
  else:
    why = f" ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"
  return (f"cannot read TFDS dataset {name!r} from {data_dir}{why}; "
          f"prepare it once with internet: {build_command(name, data_dir)}")


def _supervised_keys(name, info) -> tuple[str, str]:
  """(image key, label key): the supervised keys when they are an Image and
  a ClassLabel feature, else a UserError (kd_jax trains classifiers)."""
  import tensorflow_datasets as tfds
  keys = info.supervised_keys
  try:
    image, label = keys
    ok = (isinstance(info.features[image], tfds.features.Image) and
          isinstance(info.features[label], tfds.features.ClassLabel))
  except (TypeError, ValueError, KeyError):
    ok = False
  if not ok:
    raise UserError(
        f"TFDS dataset {name!r} is not an image-classification dataset (its "
        f"supervised keys {keys!r} are not an Image and a ClassLabel "
        "feature); allowed: a TFDS dataset of images with class labels")
  return image, label


def check_name(name, data_dir, known_names=()):
  """UserError unless `name` is a registered TFDS dataset or one prepared
  in `data_dir`; `known_names`: the other names a typo may have meant."""
  on_disk = bool(data_dir) and os.path.isdir(
      os.path.join(data_dir, _base_name(name)))
  if _registered(name) or on_disk:
    return
  close = difflib.get_close_matches(name, known_names, n=1)
  raise UserError(
      f"unknown config.dataset.name {name!r}: neither a kd_jax source nor a "
      "TFDS dataset registered here or prepared in config.dataset.data_dir="
      f"{data_dir!r}" + (f"; did you mean {close[0]!r}?" if close else ""))


def open_dataset(name, data_dir, known_names=()) -> "TfdsDataset":
  """TFDS dataset `name` prepared in `data_dir`; UserError (NotPrepared when
  the data is missing) in one line."""
  import tensorflow_datasets as tfds
  check_name(name, data_dir, known_names)
  if not data_dir or not os.path.isdir(data_dir):
    raise NotPrepared(
        f"TFDS dataset {name!r} needs config.dataset.data_dir=<prepared dir> "
        f"(got {data_dir!r}); prepare it once with internet: "
        f"{build_command(name)}")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises many types; keep it one line
    raise NotPrepared(_cannot_read(name, data_dir, e)) from None
  return TfdsDataset(name, data_dir, builder)


class TfdsDataset:
  """An opened TFDS image-classification dataset: its classes, splits and
  storage, and readers of its splits."""

  def __init__(self, name, data_dir, builder):
    self.name, self.data_dir, self.builder = name, data_dir, builder
    info = builder.info
    self.image_key, self.label_key = _supervised_keys(name, info)
    shape = tuple(info.features[self.image_key].shape)
    self.channels = shape[-1] if shape[-1] in (1, 3) else 3
    self.fixed_shape = (shape if len(shape) == 3 and None not in shape
                        and shape[-1] in (1, 3) else None)
    self.class_names = tuple(info.features[self.label_key].names)
    self.splits = self._split_names(set(info.splits.keys()))

  def _split_names(self, have) -> dict:
    """{'train', 'test'[, 'val']: TFDS split}."""
    if not have:  # not prepared (the first read says so) or mocked in tests
      return {"train": "train", "test": "test"}
    listed = ", ".join(sorted(have))
    if "train" not in have:
      raise UserError(f"TFDS dataset {self.name!r} has no 'train' split (its "
                      f"splits: {listed}); allowed: a dataset with one")
    test = next((s for s in ("test", "validation") if s in have), None)
    if test is None:
      raise UserError(f"TFDS dataset {self.name!r} has neither a 'test' nor "
                      f"a 'validation' split (its splits: {listed})")
    if test == "test" and "validation" in have:
      return {"train": "train", "test": "test", "val": "validation"}
    return {"train": "train", "test": test}

  def geometry(self, role, storage):
    """The (mode, size, resize_size) of `transforms.fit` that a split of
    `role` ('train' | 'eval') is stored at (`storage`: transforms.storage),
    or None: as stored. Images of varying size take it always; images of one
    shape are kept as stored, as every in-memory source keeps them, except
    evaluation images under a centre crop, which `transforms.fit_split`
    gives those sources too."""
    if self.fixed_shape is None:
      return tuple(storage)
    return None if role == "train" or storage[0] == "resize" else tuple(storage)

  def image_shape(self, geometry) -> tuple:
    if geometry is None:
      return self.fixed_shape
    return (geometry[1], geometry[1], self.channels)

  def nbytes(self, geometries) -> int | None:
    """uint8 bytes of every used split at its geometry (`geometries`:
    {'train'|'eval': geometry}); None when the split sizes are unknown."""
    info_splits = self.builder.info.splits
    total = 0
    for role, split in self.splits.items():
      if split not in info_splits:
        return None
      geometry = geometries["train" if role == "train" else "eval"]
      shape = self.image_shape(geometry)
      total += info_splits[split].num_examples * int(np.prod(shape))
    return total

  def _random_access(self):
    import tensorflow_datasets as tfds
    fmt = tfds.core.file_adapters.FileFormat.ARRAY_RECORD
    info = self.builder.info
    prepared = info.available_file_formats() if info.splits else ()
    return fmt if fmt in prepared else None

  def rows(self, split, geometry) -> Rows:
    """The row-by-row reader of `split`; UserError unless it is ArrayRecord."""
    fmt = self._random_access()
    if fmt is None:
      stored = ", ".join(sorted(f.value for f in
                                self.builder.info.available_file_formats()))
      raise UserError(
          f"TFDS {self.name!r} in {self.data_dir} is stored as {stored}, "
          "which cannot be read row by row, and is larger than "
          "config.dataset.in_memory_mb; rebuild it as ArrayRecord: "
          f"{build_command(self.name, self.data_dir)}")
    return Rows(self.builder, split, self.image_key, self.channels, geometry,
                fmt)

  def _num_rows(self, split) -> int:
    n = self.builder.info.splits[split].num_examples
    if not n:
      raise UserError(f"TFDS dataset {self.name!r}: split {split!r} is empty")
    return n

  def labels(self, split) -> np.ndarray:
    """int32 [N]: every row's label, read without decoding an image:
    stratified limits, class weights and balanced sampling need all labels
    before the first batch, and decoding every image to get them costs as
    much as an epoch. Stored beside the split's files after the first read
    (label_index), so later runs skip the read."""
    files = self.builder.info.splits[split].filepaths
    index = label_index.path(str(self.builder.data_dir), split)
    file_stamp = label_index.stamp(files)
    stored = label_index.read(index, file_stamp)
    if stored is not None:
      return stored
    rows, n = self.rows(split, None), self._num_rows(split)
    labels = np.asarray(
        [r[self.label_key] for lo in range(0, n, _READ_CHUNK)
         for r in rows.records(range(lo, min(n, lo + _READ_CHUNK)))],
        np.int32)
    label_index.write(index, file_stamp, labels)
    return labels

  def arrays(self, split, geometry) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, H, W, C], int32 [N]): `split` decoded into memory, by
    rows (ArrayRecord) or by tf.data (TFRecord)."""
    try:
      if self._random_access() is not None:
        rows, n = self.rows(split, geometry), self._num_rows(split)
        parts = [rows.read(np.arange(lo, min(n, lo + _READ_CHUNK)),
                           self.label_key) for lo in range(0, n, _READ_CHUNK)]
        return (np.concatenate([p[0] for p in parts]),
                np.concatenate([p[1] for p in parts]))
      return self._arrays_by_tf_data(split, geometry)
    except UserError:
      raise
    except Exception as e:  # tfds raises many types; keep it one line
      raise NotPrepared(_cannot_read(self.name, self.data_dir, e,
                                     self.builder)) from None

  def _arrays_by_tf_data(self, split, geometry):
    import tensorflow_datasets as tfds
    ds = self.builder.as_dataset(split=split, as_supervised=True)
    if geometry is None:  # one shape: vectorised
      chunks = list(tfds.as_numpy(ds.batch(8192)))
      return (np.concatenate([c[0] for c in chunks]).astype(np.uint8),
              np.concatenate([c[1] for c in chunks]).astype(np.int32))
    mode, size, resize_size = geometry
    # An alpha channel goes, as `decode`'s conversion to RGB drops it.
    fit = lambda image: transforms.fit(image[..., :3], size, mode, resize_size)
    images, labels = [], []
    pairs = iter(tfds.as_numpy(ds))
    # In chunks: the images as stored may take many times their fitted size.
    while chunk := list(itertools.islice(pairs, _READ_CHUNK)):
      images += file_decode.pool().map(fit, [x for x, _ in chunk])
      labels += [y for _, y in chunk]
    return np.stack(images), np.asarray(labels, np.int32)
