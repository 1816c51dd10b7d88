"""Data: sources, deterministic batching, and on-device preprocessing.

Sources (``config.dataset.name``):
  * ``default``: the embedded default. Fashion-MNIST from the Debian package
    ``dataset-fashion-mnist`` (the original IDX files under
    /usr/share/datasets/fashion-mnist) when installed, else scikit-learn's
    bundled 8x8 digits. Nothing is ever downloaded.
  * ``fashion_mnist_local`` / ``digits``: one of those two explicitly.
  * ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: TFDS, read from a
    prepared ``config.dataset.data_dir`` (``tfds build NAME --data_dir DIR``
    once, on a machine with internet). Loaded into memory as uint8.
  * ``folder``: ``data_dir/{train,val,test}/<class>/*.png|jpg``. Splits are
    taken *as given by the folders*: put all frames of one video (one
    patient) into one split, or frames leak between train and test. If
    ``val/`` is missing, ``val_fraction`` of train is held out at random and a
    warning says that this can leak frames of one video.

Batching is deterministic: epoch ``e`` visits the training set in the order
``np.random.default_rng([seed, e]).permutation(n)``, so a run resumed at
(epoch, step) sees exactly the batches an uninterrupted run would. Each
process of a multi-process run reads only its own rows of every global batch.
The host only gathers uint8 arrays (vectorised indexing; image files are
decoded by tf.data in parallel and prefetched); conversion to float,
greyscale->3 channels, resizing, augmentation and normalisation run on the
accelerator inside the jitted step (`preprocess`).
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from kd_jax.config_lib import UserError

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

  def __len__(self):
    return len(self.labels)

  def take(self, idx):
    pick = lambda a: None if a is None else a[idx]
    return Split(self.labels[idx], pick(self.images), pick(self.paths),
                 pick(self.teacher_logits), pick(self.teacher_features),
                 pick(self.index))


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


def fashion_mnist_available(root=None):
  root = root or FASHION_MNIST_DIR
  return all(os.path.exists(os.path.join(root, f"{s}-{k}.gz"))
             for s in ("train", "t10k")
             for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))


def _load_fashion_mnist_local():
  root = FASHION_MNIST_DIR
  if not fashion_mnist_available(root):
    raise UserError(
        f"Fashion-MNIST IDX files not found in {root}; install them with "
        "`apt-get install -y dataset-fashion-mnist` (or use dataset.name=digits)")
  arrays = {}
  for split, prefix in (("train", "train"), ("test", "t10k")):
    x = _read_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz"))
    arrays[split] = (x[..., None], y.astype(np.int32))
  return FASHION_MNIST_CLASSES, arrays


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
  from PIL import Image
  try:
    with Image.open(path) as im:
      im.verify()
    with Image.open(path) as im:  # verify() does not decode the pixels
      im.load()
  except Exception as e:  # Pillow raises many types for broken files
    return f"corrupt image file {path} ({type(e).__name__}: {e})"
  return None


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
  paths, labels, skipped = [], [], []
  for label, cls in enumerate(classes):
    for fname in sorted(os.listdir(os.path.join(split_dir, cls))):
      if fname.lower().endswith(IMAGE_EXTENSIONS):
        path = os.path.join(split_dir, cls, fname)
        problem = _image_problem(path)
        if problem and corrupt == "skip":
          skipped.append(path)
          continue
        if problem:
          raise UserError(problem + " (config.dataset.corrupt_images='skip' "
                          "leaves such files out)")
        paths.append(path)
        labels.append(label)
  if skipped:
    print(f"kd_jax: warning: skipped {len(skipped)} corrupt or non-image "
          f"file(s) in {split_dir}: {', '.join(skipped[:3])}"
          + (" ..." if len(skipped) > 3 else ""), file=sys.stderr)
  if not paths:
    raise UserError(f"no images (*.png|jpg|jpeg|bmp|gif) under {split_dir}")
  return tuple(classes), Split(np.asarray(labels, np.int32),
                               paths=np.asarray(paths))


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
  return names, train, val, test


# ------------------------------------------------------------------- load


def _holdout(train: Split, fraction):
  """Fixed (seed-independent) random hold-out of `fraction` of train."""
  perm = np.random.default_rng(0).permutation(len(train))
  n_val = max(1, int(round(len(train) * fraction)))
  return train.take(np.sort(perm[n_val:])), train.take(np.sort(perm[:n_val]))


def resolve_name(name):
  if name == "default":
    return "fashion_mnist_local" if fashion_mnist_available() else "digits"
  return name


def load(config) -> Dataset:
  """Loads the configured dataset. Raises UserError on missing/bad data."""
  dc = config.dataset
  name = resolve_name(dc.name)
  if name == "folder":
    names, train, val, test = _load_folder(dc.data_dir, dc.corrupt_images)
    if val is None:
      print(f"warning: {dc.data_dir} has no val/ folder; holding out "
            f"{dc.val_fraction:.0%} of train frames at random for validation. "
            "Frames of one video can then fall in both train and val; give "
            "a val/ folder split by video to avoid that.", file=sys.stderr)
      train, val = _holdout(train, dc.val_fraction)
    shape = (dc.image_size, dc.image_size, 3)
  else:
    if name == "fashion_mnist_local":
      names, arrays = _load_fashion_mnist_local()
    elif name == "digits":
      names, arrays = _load_digits()
    elif name in TFDS_NAMES:
      names, arrays = _load_tfds(name, dc.data_dir)
    else:
      raise UserError(f"unknown dataset {name!r}")
    (xtr, ytr), (xte, yte) = arrays["train"], arrays["test"]
    train, val = _holdout(Split(ytr, xtr, index=np.arange(len(ytr))),
                          dc.val_fraction or 0.1)
    test = Split(yte, xte, index=np.arange(len(yte)))
    shape = tuple(xtr.shape[1:])
  if dc.train_limit:
    train = train.take(np.arange(min(dc.train_limit, len(train))))
  if dc.eval_limit:
    val = val.take(np.arange(min(dc.eval_limit, len(val))))
    test = test.take(np.arange(min(dc.eval_limit, len(test))))
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


def train_batches(split: Split, *, global_batch, seed, epoch, num_steps,
                  start_step=0, image_size, process_index=0, process_count=1):
  """This process's rows of global batches `start_step..num_steps-1` of `epoch`."""
  perm = np.random.default_rng([seed, epoch]).permutation(len(split))
  local = global_batch // process_count
  lo = process_index * local
  index_batches = [perm[s * global_batch:(s + 1) * global_batch][lo:lo + local]
                   for s in range(start_step, num_steps)]
  yield from _gather_batches(split, index_batches, image_size)


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
