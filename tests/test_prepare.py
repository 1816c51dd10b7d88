"""`python -m kd_jax.prepare frames`: videos + labels CSV -> image folder."""
import collections
import csv
import os
import subprocess
import sys

import av
import numpy as np
from PIL import Image
import pytest

from kd_jax.data import prepare
from tests.helpers import REPO
from tests.helpers import tiny_config

CLASSES = ("A2C", "A4C", "PLAX")
FRAMES, WIDTH, HEIGHT = 8, 48, 40
# (container, codec, pixel format): lossy and lossless, AVI and MP4.
CODECS = (("mp4", "mpeg4", "yuv420p"), ("avi", "mjpeg", "yuvj420p"),
          ("avi", "rawvideo", "bgr24"))


def level(i):
  """Brightness of frame i: the frame index survives codec loss (steps of
  25 against errors of a few levels)."""
  return 20 + 25 * i


def write_video(path, codec, pix_fmt, colour=False):
  """FRAMES frames; grey content stored as RGB unless colour."""
  fmt = os.path.splitext(path)[1][1:]
  with av.open(path, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
    for i in range(FRAMES):
      rgb = np.full((HEIGHT, WIDTH, 3), level(i), np.uint8)
      if colour:
        rgb[..., 1] //= 2
        rgb[..., 2] = 0
      frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def write_csv(path, rows, columns=("FileName", "label", "patient_id", "Split")):
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows([r[:len(columns)] for r in rows])
  return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """15 videos: 4 patients per class, the first with two videos; one colour
  video; one file on disk the CSV does not list."""
  root = tmp_path_factory.mktemp("echo")
  videos = root / "videos"
  videos.mkdir()
  rows, n = [], 0
  splits = ("TRAIN", "train", "VAL", "Test")  # the split column, any case
  for c, cls in enumerate(CLASSES):
    for p in range(4):
      for k in range(2 if p == 0 else 1):
        ext, codec, pix = CODECS[n % len(CODECS)]
        stem = f"v{c}{p}{k}"
        write_video(str(videos / f"{stem}.{ext}"), codec, pix,
                    colour=(stem == "v230"))
        # EchoNet-Dynamic names files without extension; others with one.
        rows.append((stem if n % 2 else f"{stem}.{ext}", cls, f"P{c}{p}",
                     splits[p]))
        n += 1
  write_video(str(videos / "unlisted.avi"), "mjpeg", "yuvj420p")
  return {"root": root, "videos": str(videos), "rows": rows,
          "csv": write_csv(root / "labels.csv", rows)}


def run(data, out, *flags, csv_path=None):
  return prepare.main(["frames", f"--videos={data['videos']}",
                       f"--labels={csv_path or data['csv']}",
                       f"--out={out}", *flags])


def read_manifest(out):
  with open(os.path.join(out, "manifest.csv"), newline="") as f:
    return list(csv.DictReader(f))


def one_error_line(capsys):
  err = [l for l in capsys.readouterr().err.splitlines()
         if l.startswith("kd_jax: error")]
  assert len(err) == 1, err
  return err[0]


@pytest.fixture(scope="module")
def default_out(data):
  out = str(data["root"] / "default")
  assert run(data, out) == 0
  return out


def test_layout_counts_and_no_leakage(default_out, data):
  rows = read_manifest(default_out)
  assert len(rows) == 15 * FRAMES
  assert sorted(os.listdir(default_out)) == ["manifest.csv", "test", "train",
                                             "val"]
  for split in prepare.SPLITS:
    assert sorted(os.listdir(os.path.join(default_out, split))) == list(CLASSES)
  for r in rows:
    assert os.path.isfile(os.path.join(default_out, r["path"]))
    assert r["path"] == (f"{r['split']}/{r['label']}/"
                         f"{os.path.splitext(r['video'])[0]}_"
                         f"{int(r['frame']):04d}.png")
  splits_of = collections.defaultdict(set)
  for r in rows:
    splits_of[r["group"]].add(r["split"])
  assert all(len(s) == 1 for s in splits_of.values()), splits_of
  # Seeded, stratified: 4 groups per class put each class in every split.
  assert {(r["split"], r["label"]) for r in rows} == {
      (s, c) for s in prepare.SPLITS for c in CLASSES}
  assert "unlisted.avi" not in {r["video"] for r in rows}


def test_frames_in_order_grey_and_resized(default_out):
  for r in read_manifest(default_out):
    with Image.open(os.path.join(default_out, r["path"])) as im:
      assert im.size == (112, 112)
      assert im.mode == ("RGB" if r["video"].startswith("v230") else "L")
      pixels = np.asarray(im.convert("L"), np.float32)
    expected = level(int(r["frame"]))
    if im.mode == "RGB":  # luma of (l, l/2, 0)
      expected = 0.299 * expected + 0.587 * (expected // 2)
    assert abs(pixels.mean() - expected) < 10, (r, pixels.mean())


def test_every_keeps_size_0(data):
  out = str(data["root"] / "every")
  assert run(data, out, "--every=3", "--size=0") == 0
  frames = collections.defaultdict(list)
  for r in read_manifest(out):
    frames[r["video"]].append(int(r["frame"]))
  assert len(frames) == 15
  assert all(sorted(f) == [0, 3, 6] for f in frames.values()), frames
  path = os.path.join(out, read_manifest(out)[0]["path"])
  assert Image.open(path).size == (WIDTH, HEIGHT)


def test_max_frames_size_and_workers(data):
  out = str(data["root"] / "max")
  assert run(data, out, "--every=2", "--max_frames=2", "--size=32",
             "--workers=2") == 0
  rows = read_manifest(out)
  assert sorted({int(r["frame"]) for r in rows}) == [0, 2]
  assert len(rows) == 15 * 2
  assert Image.open(os.path.join(out, rows[0]["path"])).size == (32, 32)


def test_split_column_honoured(data, capsys):
  out = str(data["root"] / "by_column")
  assert run(data, out, "--split_column=Split", "--size=16") == 0
  want = {"TRAIN": "train", "train": "train", "VAL": "val", "Test": "test"}
  split_of = {f"P{c}{p}": want[("TRAIN", "train", "VAL", "Test")[p]]
              for c in range(3) for p in range(4)}
  rows = read_manifest(out)
  assert all(r["split"] == split_of[r["group"]] for r in rows)
  summary = capsys.readouterr().out
  assert "train: 9 videos, 6 groups, 72 frames (A2C 24, A4C 24, PLAX 24)" \
      in summary, summary


def test_conflicting_split_column_is_one_line_exit_2(data):
  rows = list(data["rows"])
  rows[1] = rows[1][:3] + ("TEST",)  # P00's second video, first in TRAIN
  csv_path = write_csv(data["root"] / "conflict.csv", rows)
  out = str(data["root"] / "conflict")
  proc = subprocess.run(
      [sys.executable, "-m", "kd_jax.prepare", "frames",
       f"--videos={data['videos']}", f"--labels={csv_path}", f"--out={out}",
       "--split_column=Split"], cwd=REPO, capture_output=True, text=True,
      timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kd_jax: error:"), lines
  assert "'P00'" in lines[0] and "train" in lines[0] and "test" in lines[0]
  assert not os.path.exists(out)


@pytest.mark.parametrize("case", ["missing", "empty_label", "unreadable"])
def test_bad_rows_are_one_line_before_writing(data, capsys, case):
  rows = list(data["rows"])
  if case == "missing":
    rows.append(("ghost", "A2C", "P99", "TRAIN"))
  elif case == "empty_label":
    rows[3] = (rows[3][0], "", *rows[3][2:])
  else:
    bad_dir = data["root"] / "bad_videos"
    bad_dir.mkdir()
    (bad_dir / "x.avi").write_bytes(b"not a video" * 100)
    data = dict(data, videos=str(bad_dir))
    rows = [("x.avi", "A2C", "P0", "TRAIN")]
  out = str(data["root"] / f"bad_{case}")
  assert run(data, out, csv_path=write_csv(
      data["root"] / f"{case}.csv", rows)) == 2
  line = one_error_line(capsys)
  assert {"missing": "ghost", "empty_label": "empty 'label'",
          "unreadable": "cannot read video"}[case] in line, line
  assert not os.path.exists(out)


def test_existing_out_refused_unless_overwrite(data, capsys):
  out = data["root"] / "existing"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  assert run(data, str(out), "--size=8") == 2
  assert "--overwrite" in one_error_line(capsys)
  # --overwrite replaces only an earlier output of this command.
  assert run(data, str(out), "--size=8", "--overwrite") == 2
  assert "refusing" in one_error_line(capsys)
  assert (out / "keep.txt").read_text() == "mine"
  (out / "keep.txt").unlink()
  assert run(data, str(out), "--size=8", "--max_frames=1") == 0
  assert run(data, str(out), "--size=8", "--max_frames=2", "--overwrite") == 0
  assert len(read_manifest(str(out))) == 15 * 2
  assert not [n for n in os.listdir(data["root"]) if n.startswith(".")]


def test_without_group_column_each_video_is_a_group(data, capsys):
  csv_path = write_csv(data["root"] / "nogroup.csv", data["rows"],
                       columns=("FileName", "label"))
  assert run(data, str(data["root"] / "nogroup"), "--size=8",
             "--max_frames=1", csv_path=csv_path) == 0
  err = capsys.readouterr().err
  assert "no 'patient_id' column" in err and "ignored 1 video file" in err
  groups = {r["group"] for r in read_manifest(str(data["root"] / "nogroup"))}
  assert len(groups) == 15


def test_output_loads_as_a_kd_jax_folder_dataset(default_out):
  from kd_jax.data import datasets as kd_data
  ds = kd_data.load(tiny_config(**{"dataset.name": "folder",
                                   "dataset.data_dir": default_out}))
  assert ds.class_names == CLASSES
  assert len(ds.train) + len(ds.val) + len(ds.test) == 15 * FRAMES
  assert len(ds.test) == sum(r["split"] == "test"
                             for r in read_manifest(default_out))


def test_a_label_typo_is_refused_in_one_line(data, capsys):
  """'A4c' for 'A4C' would be a fifth class of one patient with empty
  val/test folders: refused, and with --classes named as not allowed."""
  rows = list(data["rows"]) + [("unlisted.avi", "A4c", "P99", "TRAIN")]
  csv_path = write_csv(data["root"] / "typo.csv", rows)
  out = str(data["root"] / "typo")
  assert run(data, out, csv_path=csv_path) == 2
  line = one_error_line(capsys)
  assert line.startswith("kd_jax: error: class 'A4c' (1 patient(s), first on "
                         "line 17 of "), line
  assert "has no patient in the" in line and "--classes" in line
  assert run(data, out, "--classes=A2C,A4C,PLAX", csv_path=csv_path) == 2
  assert one_error_line(capsys).endswith(
      "label 'A4c' of video 'unlisted.avi' is not one of "
      "--classes=A2C,A4C,PLAX")
  assert not os.path.exists(out)
  assert run(data, out, "--classes=A2C,A4C,PLAX") == 0  # the right labels


def test_a_truncated_video_keeps_its_frames_and_warns(data, capsys, tmp_path):
  videos = tmp_path / "videos"
  videos.mkdir()
  rows = []
  for c, cls in enumerate(CLASSES):
    for p in range(3):
      write_video(str(videos / f"t{c}{p}.avi"), "mjpeg", "yuvj420p")
      rows.append((f"t{c}{p}.avi", cls, f"P{c}{p}"))
  whole = (videos / "t00.avi").read_bytes()
  (videos / "t00.avi").write_bytes(whole[:len(whole) * 8 // 10])  # 4 of 8
  out = str(tmp_path / "out")
  csv_path = write_csv(tmp_path / "labels.csv", rows,
                       columns=("FileName", "label", "patient_id"))
  assert run(dict(data, videos=str(videos)), out, csv_path=csv_path) == 0
  warnings = [l for l in capsys.readouterr().err.splitlines()
              if "warning: video" in l]
  assert len(warnings) == 1 and "t00.avi decoded to " in warnings[0]
  assert f"of the {FRAMES} frames its header declares" in warnings[0]
  kept = [r for r in read_manifest(out) if r["video"] == "t00.avi"]
  assert 0 < len(kept) < FRAMES
