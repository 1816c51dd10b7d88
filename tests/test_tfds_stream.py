"""TFDS datasets by name (data/tfds_source.py): held in memory or read row
by row from ArrayRecord files, on tiny datasets this file builds and
prepares with TFDS's own builders (nothing downloads)."""
import errno
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from kd_jax.data import datasets as data
from kd_jax.data import label_index
from kd_jax.data import tfds_source
from kd_jax.data import transforms
from kd_jax.train import pipeline
from tests import helpers

NAME = "kd_stream_images"
HOLDOUT_NAME = "kd_stream_images_no_test"


class KdStreamImages(tfds.core.GeneratorBasedBuilder):
  """3 classes of class-coloured noise, 8 to 47 pixels a side (PNG)."""
  VERSION = tfds.core.Version("1.0.0")
  SPLITS = {"train": 48, "validation": 12, "test": 12}
  # No checksums file to look for beside this module: for a builder defined
  # inside a package, TFDS 4.9 would otherwise import `importlib_resources`,
  # which Python >= 3.9 installs do not carry.
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["red", "green", "blue"]),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing downloads
    return {split: self._generate_examples(seed, n)
            for seed, (split, n) in enumerate(self.SPLITS.items())}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for i in range(n):
      h, w = rng.integers(8, 48, 2)
      image = rng.normal(100, 50, (h, w, 3))
      image[..., i % 3] += 25  # the class is faintly visible in the colour
      yield i, {"image": np.clip(image, 0, 255).astype(np.uint8),
                "label": i % 3}


class KdStreamImagesNoTest(KdStreamImages):
  """Train and validation only, as imagenette and ImageNet publish."""
  SPLITS = {"train": 48, "validation": 12}


def _prepare(cls, data_dir, file_format):
  builder = cls(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False))
  return data_dir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("tfds")
  return {"array_record": _prepare(KdStreamImages, str(root / "ar"),
                                   "array_record"),
          "tfrecord": _prepare(KdStreamImages, str(root / "tfr"), "tfrecord"),
          "holdout": _prepare(KdStreamImagesNoTest, str(root / "holdout"),
                              "array_record")}


def _config(data_dir, name=NAME, in_memory_mb=0, **overrides):
  c = helpers.tiny_config(**{"dataset.name": name, "dataset.data_dir": data_dir,
                             "dataset.in_memory_mb": in_memory_mb,
                             "dataset.train_limit": 0, "dataset.eval_limit": 0,
                             **overrides})
  return c


def _direct(data_dir, split, rows, geometry, name=NAME):
  """The images of `rows` decoded by TFDS itself, then `transforms.fit`."""
  source = tfds.builder(name, data_dir=data_dir).as_data_source(split)
  mode, size, resize_size = geometry
  return np.stack([transforms.fit(source[int(r)]["image"], size, mode,
                                  resize_size) for r in rows])


def _all_batches(split, batch=8):
  return list(data.eval_batches(split, global_batch=batch, image_size=28))


RRC = {"dataset.train_transform": "random_resized_crop",
       "dataset.eval_transform": "resize_center_crop"}


@pytest.mark.parametrize("overrides", [{}, RRC], ids=["resize", "rrc"])
def test_streamed_batches_equal_tfds_decoding_and_fit(prepared, overrides,
                                                      capsys):
  c = _config(prepared["array_record"], **overrides)
  ds = data.load(c)
  assert f"TFDS {NAME}: 72 examples streamed from " in capsys.readouterr().out
  assert ds.class_names == ("red", "green", "blue")
  assert (len(ds.train), len(ds.val), len(ds.test)) == (48, 12, 12)
  for part, split, role in ((ds.train, "train", "train"),
                            (ds.val, "validation", "eval"),
                            (ds.test, "test", "eval")):
    geometry = transforms.storage(role, c.dataset)
    got = np.concatenate([b["image"] for b in _all_batches(part)])[:len(part)]
    np.testing.assert_array_equal(
        got, _direct(prepared["array_record"], split, part.index, geometry))


def test_held_out_val_is_read_at_the_evaluation_geometry(prepared):
  """Without a 'test' split, 'validation' is the test set and val is held
  out of train: its rows of the 'train' split, at the eval geometry."""
  root = prepared["holdout"]
  for mb in (0, 2048):
    c = _config(root, HOLDOUT_NAME, mb, **RRC)
    ds = data.load(c)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (43, 5, 12)
    assert not set(ds.train.index) & set(ds.val.index)
    eval_geo = transforms.storage("eval", c.dataset)
    got = np.concatenate([b["image"] for b in _all_batches(ds.val)])[:5]
    np.testing.assert_array_equal(
        got, _direct(root, "train", ds.val.index, eval_geo, HOLDOUT_NAME))
    got = np.concatenate([b["image"] for b in _all_batches(ds.test)])[:12]
    np.testing.assert_array_equal(
        got, _direct(root, "validation", range(12), eval_geo, HOLDOUT_NAME))


def test_in_memory_and_streamed_give_the_same_batches(prepared, capsys):
  streamed = data.load(_config(prepared["array_record"], in_memory_mb=0))
  held = data.load(_config(prepared["array_record"], in_memory_mb=2048))
  tfrecord = data.load(_config(prepared["tfrecord"], in_memory_mb=2048))
  assert f"TFDS {NAME}: 72 examples held in memory" in capsys.readouterr().out
  assert held.train.images is not None and held.train.source is None
  for name in ("train", "val", "test"):
    parts = [getattr(d, name) for d in (streamed, held, tfrecord)]
    batches = [_all_batches(p) for p in parts]
    for a, b, t in zip(*batches):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["image"], t["image"])  # PNG: lossless
      np.testing.assert_array_equal(a["label"], b["label"])
  kw = dict(global_batch=16, seed=1, epoch=0, num_steps=3, image_size=28)
  for a, b in zip(data.train_batches(streamed.train, **kw),
                  data.train_batches(held.train, **kw)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_in_memory_and_streamed_train_the_same(prepared, tmp_path):
  results = []
  for mb in (2048, 0):
    c = _config(prepared["array_record"], in_memory_mb=mb,
                **{"kd.method": "none", "scratch_baseline": False})
    summary = pipeline.train_and_evaluate(c, str(tmp_path / f"mb{mb}"))
    student = summary["stages"]["student"]
    results.append((student["test"], student["history"],
                    student["final_train_metrics"]))
  assert results[0] == results[1]


def test_each_process_reads_only_its_rows(prepared, monkeypatch):
  ds = data.load(_config(prepared["array_record"]))
  read = []
  original = tfds_source.Rows.records
  monkeypatch.setattr(tfds_source.Rows, "records", lambda self, rows: (
      read.extend(int(r) for r in rows), original(self, rows))[1])
  kw = dict(global_batch=16, seed=3, epoch=1, num_steps=3, image_size=28,
            indexed=True)
  whole = list(data.train_batches(ds.train, **kw))
  for p in (0, 1):
    read.clear()
    mine = list(data.train_batches(ds.train, process_index=p,
                                   process_count=2, **kw))
    rows = slice(8 * p, 8 * p + 8)
    for b, w in zip(mine, whole):
      for key in ("image", "label", "index"):
        np.testing.assert_array_equal(b[key], w[key][rows])
    assert sorted(read) == sorted(
        int(ds.train.index[i]) for w in whole for i in w["index"][rows])


def test_epoch_order_is_seed_and_epoch_and_resume_is_exact(prepared):
  ds = data.load(_config(prepared["array_record"]))
  kw = dict(global_batch=8, seed=5, num_steps=4, image_size=28, indexed=True)
  first = list(data.train_batches(ds.train, epoch=2, **kw))
  again = list(data.train_batches(ds.train, epoch=2, **kw))
  other = list(data.train_batches(ds.train, epoch=3, **kw))
  resumed = list(data.train_batches(ds.train, epoch=2, start_step=2, **kw))
  order = data.epoch_order(ds.train.labels, seed=5, epoch=2)
  np.testing.assert_array_equal(
      np.concatenate([b["index"] for b in first]), order[:32])
  assert not np.array_equal(first[0]["index"], other[0]["index"])
  assert len(resumed) == 2
  for a, b in zip(first + first[2:], again + resumed):
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(a[key], b[key])


def test_a_streamed_split_holds_no_images(prepared):
  ds = data.load(_config(prepared["array_record"]))
  for part in (ds.train, ds.val, ds.test):
    assert part.images is None and part.source is not None
    assert not [v for v in vars(part.source).values()
                if isinstance(v, np.ndarray)]
  # Limits and transfer sets keep the source and pick rows of it.
  sub = data.stage_data(ds, "student", 10).train
  assert len(sub) == 10 and sub.source is ds.train.source
  got = np.concatenate([b["image"] for b in _all_batches(sub, 5)])
  np.testing.assert_array_equal(got, _direct(
      prepared["array_record"], "train", sub.index,
      transforms.storage("train", _config("").dataset)))
  assert data.digest(ds) == data.digest(data.load(
      _config(prepared["array_record"])))


def _counting_reads(monkeypatch):
  read = []
  original = tfds_source.Rows.records
  monkeypatch.setattr(tfds_source.Rows, "records", lambda self, rows: (
      read.extend(rows), original(self, rows))[1])
  return read


def test_labels_are_stored_beside_the_split_and_read_back(tmp_path,
                                                          monkeypatch, capsys):
  d = _prepare(KdStreamImages, str(tmp_path / "ar"), "array_record")
  want = np.asarray([r["label"] for r in tfds.builder(
      NAME, data_dir=d).as_data_source("train")], np.int32)
  read = _counting_reads(monkeypatch)
  ds = tfds_source.open_dataset(NAME, d)
  np.testing.assert_array_equal(ds.labels("train"), want)
  assert len(read) == 48
  index = label_index.path(str(ds.builder.data_dir), "train")
  assert os.path.exists(index)
  read.clear()  # a later run reads the index, no record
  np.testing.assert_array_equal(
      tfds_source.open_dataset(NAME, d).labels("train"), want)
  assert read == []
  # A record file that changed makes the index stale: read and rewritten.
  f = str(ds.builder.info.splits["train"].filepaths[0])
  st = os.stat(f)
  os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  np.testing.assert_array_equal(
      tfds_source.open_dataset(NAME, d).labels("train"), want)
  assert len(read) == 48
  read.clear()
  tfds_source.open_dataset(NAME, d).labels("train")
  assert read == []
  # A directory that refuses the write: one note, the labels still right.
  os.remove(index)

  def refuse(path, write):
    raise OSError(errno.EROFS, "Read-only file system", path)
  monkeypatch.setattr(label_index.reporting, "write_atomic", refuse)
  capsys.readouterr()
  np.testing.assert_array_equal(
      tfds_source.open_dataset(NAME, d).labels("train"), want)
  (line,) = capsys.readouterr().out.strip().splitlines()
  assert line.startswith(f"note: cannot store the label index {index} "
                         "(Read-only file system)"), line
  assert not os.path.exists(index)


def test_a_fixed_shape_dataset_stays_as_stored_but_for_the_eval_crop(tmp_path):
  """A mocked fixed-shape TFDS dataset (MNIST) stays in memory at its own
  size, as before streaming existed; under the evaluation centre crop its
  val and test images are those images through `transforms.fit`."""
  with tfds.testing.mock_data(num_examples=40):
    plain = data.load(_config(str(tmp_path), "mnist", in_memory_mb=2048))
    crop = data.load(_config(str(tmp_path), "mnist", in_memory_mb=2048,
                             **{"dataset.eval_transform": "resize_center_crop",
                                "dataset.image_size": 24}))
  assert plain.train.images.shape[1:] == (28, 28, 1)
  assert plain.train.source is None and plain.image_shape == (28, 28, 1)
  np.testing.assert_array_equal(crop.train.images, plain.train.images)
  for name in ("val", "test"):
    want = np.stack([transforms.fit(im, 24, "resize_center_crop")
                     for im in getattr(plain, name).images])
    np.testing.assert_array_equal(getattr(crop, name).images, want)


CLI_CASES = [
    ("oxford_flowers102", None, {},
     "TFDS dataset 'oxford_flowers102' needs config.dataset.data_dir"),
    ("oxford_flowers102", "empty", {},
     "`tfds build oxford_flowers102 --data_dir {empty} "
     "--file_format=array_record`"),
    (NAME, "tfrecord", {"in_memory_mb": 0},
     "rebuild it as ArrayRecord: `tfds build kd_stream_images --data_dir "
     "{tfrecord} --file_format=array_record`"),
    ("imdb_reviews", "empty", {},
     "TFDS dataset 'imdb_reviews' is not an image-classification dataset"),
    ("fashon_mnist", None, {}, "did you mean 'fashion_mnist'?"),
]


@pytest.mark.parametrize("name,where,extra,message", CLI_CASES,
                         ids=["no_data_dir", "unprepared", "tfrecord",
                              "not_images", "typo"])
def test_bad_tfds_input_is_one_line(prepared, tmp_path, name, where, extra,
                                    message):
  dirs = {"empty": str(tmp_path), "tfrecord": prepared["tfrecord"]}
  args = ["--config=configs/quickstart.py", f"--config.dataset.name={name}",
          f"--workdir={tmp_path / 'wd'}"]
  if where:
    args.append(f"--config.dataset.data_dir={dirs[where]}")
  args += [f"--config.dataset.{k}={v}" for k, v in extra.items()]
  r = helpers.run_cli(*args, timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
  lines = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert len(lines) == 1, r.stderr[-1500:]
  assert message.format(**dirs) in lines[0], lines[0]
  assert "Traceback" not in r.stderr
  assert not (tmp_path / "wd").exists()
