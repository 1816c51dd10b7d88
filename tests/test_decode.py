"""Image files decoded on the host (kd_jax/data/decode.py): batches equal
an independent decode, corrupt files are refused or skipped when a batch
reads them, and the decoded cache (kd_jax/data/decoded_cache.py) is read
instead of decoding, refused when its files changed, written atomically."""
import glob
import json
import os

import numpy as np
from PIL import Image
import pytest

from kd_jax.data import datasets as data
from kd_jax.data import decode
from kd_jax.data import decoded_cache
from kd_jax.data import transforms
from kd_jax.errors import UserError
from tests import helpers


def _folder(tmp_path, **per_split):
  """The helpers' folder (PNG/JPEG, greyscale/RGB, non-square) plus RGBA,
  palette and larger images, so every conversion and a downscale occur."""
  root = helpers.write_image_folder(
      str(tmp_path / "data"), per_split=per_split or {"train": 8, "val": 3,
                                                      "test": 3})
  rng = np.random.default_rng(1)
  for split in per_split or ("train", "val", "test"):
    a = np.clip(rng.normal(128, 60, (45, 70, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(a).convert("RGBA").save(f"{root}/{split}/A2C/rgba.png")
    Image.fromarray(a).convert("P").save(f"{root}/{split}/A4C/palette.png")
    Image.fromarray(a).save(f"{root}/{split}/PLAX/big.jpg", quality=90)
  return root


def _config(root, **overrides):
  return helpers.tiny_config(**{"dataset.name": "folder",
                                "dataset.data_dir": root, **overrides})


def _reference(path, geometry):
  """Pillow + transforms.fit on one file, outside the pool."""
  rgb = np.asarray(Image.open(path).convert("RGB"))
  return transforms.fit(rgb, geometry.size, geometry.mode, geometry.resize_size)


def _eval_images(split):
  batches = data.eval_batches(split, global_batch=4, image_size=0)
  return np.concatenate([b["image"][b["mask"]] for b in batches])


def _train(split, steps=3):
  return list(data.train_batches(split, global_batch=4, seed=1, epoch=0,
                                 num_steps=steps, image_size=0))


@pytest.mark.parametrize("transform", [
    {},
    {"dataset.eval_transform": "resize_center_crop",
     "dataset.train_transform": "random_resized_crop",
     "dataset.train_source_size": 40}])
def test_batches_equal_pillow_and_fit_per_file(tmp_path, transform):
  c = _config(_folder(tmp_path), **transform)
  ds = data.load(c)
  for split, role in ((ds.train, "train"), (ds.val, "eval"), (ds.test, "eval")):
    g = decode.Geometry(*transforms.storage(role, c.dataset))
    assert split.files.geometry == g
    got = _eval_images(split)
    want = np.stack([_reference(p, g) for p in split.paths])
    assert got.shape == (len(split), g.size, g.size, 3)
    np.testing.assert_array_equal(got, want)
  # Training batches are the same images in the epoch's order.
  g = ds.train.files.geometry
  order = data.epoch_order(ds.train.labels, seed=1, epoch=0)
  for s, b in enumerate(_train(ds.train)):
    idx = order[4 * s:4 * s + 4]
    np.testing.assert_array_equal(b["label"], ds.train.labels[idx])
    np.testing.assert_array_equal(
        b["image"], np.stack([_reference(p, g) for p in ds.train.paths[idx]]))


def test_resize_is_within_one_grey_level_of_the_old_tf_decode(tmp_path):
  """The default geometry against the former tf.data decode (decode_image
  with 3 channels, antialiased bilinear resize, rounded): at most 1 grey
  level apart. JPEGs use TensorFlow's accurate integer IDCT here, the one
  Pillow (and torchvision) decode with: TensorFlow's default fast IDCT
  differs from it by up to ~5 levels before any resize."""
  tf = pytest.importorskip("tensorflow")
  root = _folder(tmp_path, train=8)
  paths = sorted(glob.glob(f"{root}/train/*/*"))
  for size in (16, 28, 64):  # down- and upscaling
    mine, problems = decode.decode_files(paths, decode.Geometry("resize", size))
    assert problems == [None] * len(paths)
    for path, got in zip(paths, mine):
      raw = tf.io.read_file(path)
      if path.endswith(".jpg"):
        img = tf.io.decode_jpeg(raw, channels=3, dct_method="INTEGER_ACCURATE")
      else:
        img = tf.io.decode_image(raw, channels=3, expand_animations=False)
      img = tf.image.resize(img, (size, size), antialias=True)
      old = tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8).numpy()
      assert np.abs(old.astype(int) - got.astype(int)).max() <= 1, path


def test_stand_ins_are_the_previous_good_row_else_the_next():
  ok, bad = None, "corrupt image file x"
  np.testing.assert_array_equal(
      decode.stand_ins([bad, ok, bad, bad, ok, bad], "skip"), [1, 1, 1, 1, 4, 4])
  np.testing.assert_array_equal(decode.stand_ins([ok, ok], "refuse"), [0, 1])
  with pytest.raises(UserError, match="corrupt image file x .*'skip'"):
    decode.stand_ins([ok, bad], "refuse")
  with pytest.raises(UserError, match="no image of a batch of 2 decodes"):
    decode.stand_ins([bad, bad], "skip")


def test_a_skipped_file_takes_its_neighbours_image_and_label(tmp_path, capfd):
  root = _folder(tmp_path)
  broken = os.path.join(root, "test", "A4C", "f1.jpg")
  with open(broken, "wb") as f:
    f.write(b"\xff\xd8\xff truncated")  # JPEG magic, no image
  ds = data.load(_config(root, **{"dataset.corrupt_images": "skip"}))
  row = list(ds.test.paths).index(broken)
  for _ in range(2):  # read twice: warned and counted once
    images = _eval_images(ds.test)
  g = ds.test.files.geometry
  np.testing.assert_array_equal(images[row],
                                _reference(ds.test.paths[row - 1], g))
  labels = np.concatenate([b["label"][b["mask"]] for b in data.eval_batches(
      ds.test, global_batch=4, image_size=0)])
  assert labels[row] == ds.test.labels[row - 1]
  warned = [l for l in capfd.readouterr().err.splitlines() if broken in l]
  assert len(warned) == 1 and warned[0].startswith(
      f"kd_jax: warning: skipped corrupt image file {broken} (")
  assert data.skipped_summary(ds) == {"corrupt_images_skipped": 1}


# ------------------------------------------------------------- the CLI


def _cli_folder(tmp_path):
  """A folder whose one corrupt file is in test/ (read whole after
  training, so the run meets it deterministically)."""
  root = helpers.write_image_folder(str(tmp_path / "data"),
                                    per_split={"train": 12, "test": 4})
  notes = os.path.join(root, "test", "A4C", "notes.jpg")
  with open(notes, "w") as f:
    f.write("not an image")
  return root, notes


def _cli(tmp_path, root, *extra):
  return helpers.run_cli(
      "--config=configs/quickstart.py:runlocal", "--config.dataset.name=folder",
      f"--config.dataset.data_dir={root}", "--config.kd.method=none",
      "--config.scratch_baseline=False", "--config.num_epochs=1", *extra,
      f"--workdir={tmp_path / 'wd'}")


def test_cli_refuses_a_corrupt_file_when_read_keeping_its_checkpoints(tmp_path):
  root, notes = _cli_folder(tmp_path)
  r = _cli(tmp_path, root)
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert errors == [f"kd_jax: error: corrupt or non-image file {notes} (not "
                    "PNG/JPEG/BMP/GIF) (config.dataset.corrupt_images='skip' "
                    "skips such files)"], r.stderr[-2000:]
  assert "Traceback" not in r.stderr
  wd = tmp_path / "wd"
  assert not (wd / "results.json").exists()
  assert os.listdir(wd / "student" / "checkpoints" / "best")  # kept


@pytest.mark.parametrize("cached", [False, True], ids=["lazy", "decoded_cache"])
def test_cli_skips_a_corrupt_file_warns_once_and_counts_it(tmp_path, cached):
  root, notes = _cli_folder(tmp_path)
  cache = [f"--config.dataset.decoded_cache={tmp_path / 'cache'}"] if cached else []
  r = _cli(tmp_path, root, "--config.dataset.corrupt_images=skip", *cache)
  assert r.returncode == 0, r.stderr[-2000:]
  warned = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: warning: skipped")]
  assert len(warned) == 1 and notes in warned[0], warned
  results = helpers.read_json(str(tmp_path / "wd" / "results.json"))
  assert results["corrupt_images_skipped"] == 1


# ------------------------------------------------------ the decoded cache


def _entries(cache):
  return sorted(e for e in os.listdir(cache) if not e.startswith("."))


def _no_decoding(monkeypatch):
  def refuse(path, geometry):
    raise AssertionError(f"decoded {path}")
  monkeypatch.setattr(decode, "read_image", refuse)


def test_the_cache_is_read_instead_of_decoding_and_gives_the_same_batches(
    tmp_path, monkeypatch):
  root, cache = _folder(tmp_path), str(tmp_path / "cache")
  plain = data.load(_config(root))
  want = {n: _eval_images(getattr(plain, n)) for n in ("train", "val", "test")}
  want_train = _train(plain.train)
  first = data.load(_config(root, **{"dataset.decoded_cache": cache}))
  assert [e.split("-")[0] for e in _entries(cache)] == ["test", "train", "val"]
  _no_decoding(monkeypatch)
  again = data.load(_config(root, **{"dataset.decoded_cache": cache}))
  assert isinstance(again.train.images, np.memmap)
  for ds in (first, again):
    for name, images in want.items():
      np.testing.assert_array_equal(_eval_images(getattr(ds, name)), images)
      np.testing.assert_array_equal(getattr(ds, name).labels,
                                    getattr(plain, name).labels)
    for a, b in zip(want_train, _train(ds.train)):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
    # The same files, so the same digest (checkpoints, teacher cache keys).
    assert data.digest(ds) == data.digest(plain)


def test_another_geometry_is_another_entry_and_changed_files_are_refused(
    tmp_path):
  root, cache = _folder(tmp_path), str(tmp_path / "cache")
  with_cache = lambda **kw: data.load(_config(
      root, **{"dataset.decoded_cache": cache, **kw}))
  ds = with_cache()
  assert len(_entries(cache)) == 3
  with_cache(**{"dataset.image_size": 20})
  assert len(_entries(cache)) == 6
  changed = os.path.abspath(ds.train.paths[2])
  st = os.stat(changed)
  os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  with pytest.raises(UserError) as e:
    with_cache()
  msg = str(e.value)
  assert "\n" not in msg
  assert f"{changed} changed (size or modification time)" in msg
  assert "delete that entry" in msg and "decoded_cache" in msg
  assert len(_entries(cache)) == 6  # nothing written


def test_an_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
  root, cache = _folder(tmp_path), str(tmp_path / "cache")
  calls, real = [], decode.read_image

  def dies_midway(path, geometry):
    calls.append(path)
    if len(calls) == 5:
      raise KeyboardInterrupt
    return real(path, geometry)
  monkeypatch.setattr(decode, "read_image", dies_midway)
  with pytest.raises(KeyboardInterrupt):
    data.load(_config(root, **{"dataset.decoded_cache": cache}))
  assert os.listdir(cache) == []  # no entry, no temporary left
  monkeypatch.undo()
  # A killed writer's temporary directory is ignored by the next run.
  os.makedirs(os.path.join(cache, ".tmp-killed"))
  open(os.path.join(cache, ".tmp-killed", decoded_cache.IMAGES), "wb").close()
  ds = data.load(_config(root, **{"dataset.decoded_cache": cache}))
  assert len(_entries(cache)) == 3 and ds.train.images is not None


def test_a_skipped_file_is_in_the_manifest_and_counted_on_every_read(
    tmp_path, monkeypatch, capfd):
  root, cache = _folder(tmp_path), str(tmp_path / "cache")
  broken = os.path.abspath(os.path.join(root, "val", "A2C", "f2.png"))
  with open(broken, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n broken")
  skip = {"dataset.decoded_cache": cache, "dataset.corrupt_images": "skip"}
  first = data.load(_config(root, **skip))
  entry = [e for e in _entries(cache) if e.startswith("val-")][0]
  with open(os.path.join(cache, entry, decoded_cache.MANIFEST)) as f:
    (rec,) = json.load(f)["skipped"]
  assert rec["path"] == broken and rec["stand_in"] == rec["row"] - 1
  _no_decoding(monkeypatch)
  again = data.load(_config(root, **skip))
  for ds in (first, again):
    assert data.skipped_summary(ds) == {"corrupt_images_skipped": 1}
    np.testing.assert_array_equal(ds.val.images[rec["row"]],
                                  ds.val.images[rec["row"] - 1])
    assert ds.val.labels[rec["row"]] == ds.val.labels[rec["row"] - 1]
  warned = [l for l in capfd.readouterr().err.splitlines() if broken in l]
  assert len(warned) == 2  # one line per file, in each run
  with pytest.raises(UserError, match="recorded in the decoded cache"):
    data.load(_config(root, **{"dataset.decoded_cache": cache}))
