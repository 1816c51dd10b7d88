"""`python -m kd_jax.predict` on videos: a video's result is the mean of
predict's own results on the frames `prepare frames` cuts from it, its vote
is the frames' majority class, `--every` sets the frames, images and videos
mix in one call, and a bad video is one line and exit status 2."""
import csv
import math
import os
import subprocess
import sys

import av
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from kd_jax.data import prepare
from kd_jax.deploy import export
from kd_jax.deploy import predict
from tests import helpers

CLASSES = ("A2C", "A4C", "PLAX")
SIZE = 16  # the model's input size
FRAMES, WIDTH, HEIGHT = 30, 40, 32
# Brightness (0..1) at which each class is most likely.
CENTRES = jnp.array([0.2, 0.5, 0.8])
# Frames 0-2 of every 5 are 84/255 (A2C, p ~ 0.62, A4C the rest), 3-4 are
# 128/255 (A4C, p ~ 0.95): A2C wins the vote 18 to 12, A4C the mean.
DIM, BRIGHT = 84, 128


def levels(n=FRAMES):
  return [DIM if i % 5 < 3 else BRIGHT for i in range(n)]


def brightness_model(images_BxSxSx3):
  """Class probabilities from the images' mean brightness alone, so each
  frame's class is known from its pixels."""
  m = jnp.mean(images_BxSxSx3.astype(jnp.float32) / 255.0, axis=(1, 2, 3))
  return jax.nn.softmax(-40.0 * (m[:, None] - CENTRES) ** 2, axis=-1)


def export_brightness_model(path, write=export.export_model):
  """The brightness model written by kd_jax.export's own writer (StableHLO:
  jax.export, symbolic batch, the file's header; or TFLite with its
  metadata) in place of a trained run's."""
  info = {"format": 1, "model": "brightness", "stage": "student",
          "class_names": list(CLASSES), "num_classes": len(CLASSES),
          "subclasses": 1, "image_size": SIZE, "channels": 3,
          "input_dtype": "uint8"}
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(export, "load_inference",
               lambda workdir, stage: (brightness_model, dict(info)))
    write("unused", path)
  return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  return export_brightness_model(
      str(tmp_path_factory.mktemp("model") / "brightness.bin"))


def write_video(path, codec, pix_fmt, values):
  """One solid grey frame per value, stored as RGB."""
  fmt = os.path.splitext(path)[1][1:].lower()
  with av.open(path, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
    for v in values:
      rgb = np.full((HEIGHT, WIDTH, 3), v, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  """The same frames as a lossy MJPEG AVI and an MPEG-4 file whose extension
  is upper case."""
  root = tmp_path_factory.mktemp("videos")
  return [write_video(root / "echo.avi", "mjpeg", "yuvj420p", levels()),
          write_video(root / "echo2.MP4", "mpeg4", "yuv420p", levels())]


def prepare_frames(video, out, every):
  """(frame indices, PNG paths) that `prepare frames --every --size` writes
  for the video: the independent route to the frames."""
  folder, name = os.path.split(video)
  labels = os.path.join(out + ".csv")
  with open(labels, "w", newline="") as f:
    csv.writer(f).writerows([("FileName", "label", "Split"),
                             (name, CLASSES[0], "train")])
  assert prepare.main(["frames", f"--videos={folder}", f"--labels={labels}",
                       f"--out={out}", "--split_column=Split",
                       f"--every={every}", f"--size={SIZE}"]) == 0
  with open(os.path.join(out, prepare.MANIFEST), newline="") as f:
    rows = sorted(csv.DictReader(f), key=lambda r: int(r["frame"]))
  return ([int(r["frame"]) for r in rows],
          [os.path.join(out, r["path"]) for r in rows])


def video_line(stdout, video):
  """The video's printed line as a dict; its frames' lines after it."""
  lines = stdout.strip().splitlines()
  path, name, prob, *rest = lines[0].split("\t")
  assert path == video, lines[0]
  fields = dict(f.split("=", 1) for f in rest)
  fields.update(class_name=name, probability=float(prob),
                probabilities=[float(kv.split(":")[1])
                               for kv in fields["probabilities"].split(",")])
  return fields, lines[1:]


@pytest.mark.parametrize("every", [1, 4])
def test_a_video_is_the_mean_of_its_frames_as_images(model, videos, tmp_path,
                                                     capsys, every):
  for k, video in enumerate(videos):
    frames, pngs = prepare_frames(video, str(tmp_path / f"out{k}"), every)
    capsys.readouterr()
    per_image = np.stack([r[3] for r in predict.predict(model, pngs)])
    mean = per_image.mean(axis=0)
    meta, exported = predict.load_model(model)
    (result,) = predict.classify(meta, exported, [video], batch=7, every=every)
    assert result.frames == frames
    np.testing.assert_allclose(result.frame_probabilities, per_image,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.probabilities, mean, rtol=1e-5, atol=1e-6)
    assert result.class_name == CLASSES[int(mean.argmax())]
    assert predict.main([f"--model={model}", video, f"--every={every}",
                         "--per_frame", "--batch=7"]) == 0
    fields, frame_lines = video_line(capsys.readouterr().out, video)
    assert fields["class_name"] == result.class_name
    assert fields["frames"] == str(len(frames))
    np.testing.assert_allclose(fields["probabilities"], mean, atol=6e-5)
    assert len(frame_lines) == len(frames)
    for line, i, probs in zip(frame_lines, frames, per_image):
      path, name, prob, field = line.split("\t")
      assert path == f"{video}#{i}" and name == CLASSES[int(probs.argmax())]
      assert float(prob) == pytest.approx(float(probs.max()), abs=6e-5)
      assert field.startswith("probabilities=")


def test_the_vote_is_the_majority_of_frame_classes(model, videos, tmp_path,
                                                   capsys):
  _, pngs = prepare_frames(videos[0], str(tmp_path / "out"), 1)
  capsys.readouterr()
  classes = [r[1] for r in predict.predict(model, pngs)]
  assert classes.count("A2C") == 18 and classes.count("A4C") == 12
  assert predict.main([f"--model={model}", videos[0]]) == 0
  fields, _ = video_line(capsys.readouterr().out, videos[0])
  # The mean and the vote disagree on this video, so both are printed.
  assert fields["class_name"] == "A4C" and fields["vote"] == "A2C"
  # One class in every frame: no vote field.
  same = write_video(tmp_path / "bright.avi", "mjpeg", "yuvj420p", [BRIGHT] * 6)
  assert predict.main([f"--model={model}", same]) == 0
  fields, _ = video_line(capsys.readouterr().out, same)
  assert fields["class_name"] == "A4C" and "vote" not in fields


@pytest.mark.parametrize("every", [1, 2, 7, 40])
def test_every_sets_the_frames(model, videos, every):
  meta, exported = predict.load_model(model)
  (result,) = predict.classify(meta, exported, [videos[1]], every=every)
  assert result.frames == list(range(0, FRAMES, every))
  assert len(result.frame_probabilities) == math.ceil(FRAMES / every)


def test_the_default_step_is_prepares():
  args = prepare.build_parser().parse_args(
      ["frames", "--videos=v", "--labels=l.csv", "--out=o"])
  assert predict.DEFAULT_EVERY == args.every


def test_images_and_videos_in_one_call(model, videos, tmp_path, capsys):
  images = []
  for i, v in enumerate((30, 128, 220)):
    images.append(str(tmp_path / f"img{i}.png"))
    Image.fromarray(np.full((20, 24, 3), v, np.uint8)).save(images[-1])
  assert predict.main([f"--model={model}", *images]) == 0
  image_lines = capsys.readouterr().out.strip().splitlines()
  assert predict.main([f"--model={model}", images[0], videos[0], images[1],
                       videos[1], images[2]]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert [lines[0], lines[2], lines[4]] == image_lines
  assert [l.split("\t")[0] for l in lines[1::2]] == videos
  assert [l.split("\t")[1] for l in image_lines] == ["A2C", "A4C", "PLAX"]


def test_a_tflite_model_reads_videos_like_stablehlo(model, videos, tmp_path):
  tfl = export_brightness_model(str(tmp_path / "brightness.tflite"),
                                export.export_tflite)
  bin_results = predict.predict(model, videos, every=3)
  tfl_results = predict.predict(tfl, videos, batch=4, num_threads=1, every=3)
  for a, b in zip(tfl_results, bin_results):
    assert a[:2] == b[:2]
    np.testing.assert_allclose(a[3], b[3], atol=1e-5)


def test_a_truncated_video_uses_what_decodes_and_warns(model, tmp_path,
                                                       capsys):
  video = write_video(tmp_path / "cut.avi", "mjpeg", "yuvj420p", levels())
  whole = open(video, "rb").read()
  with open(video, "wb") as f:
    f.write(whole[:len(whole) * 6 // 10])
  assert predict.main([f"--model={model}", video]) == 0
  captured = capsys.readouterr()
  fields, _ = video_line(captured.out, video)
  assert 0 < int(fields["frames"]) < FRAMES
  warning, = captured.err.strip().splitlines()
  assert warning.startswith(f"kd_jax: warning: video {video!r} decoded to ")
  assert f"of the {FRAMES} frames its header declares" in warning


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "kd_jax.predict", *args],
                        cwd=helpers.REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=helpers.REPO))


def test_a_corrupt_video_is_one_line_and_exit_2(model, videos, tmp_path,
                                                capsys):
  bad = tmp_path / "bad.avi"
  bad.write_bytes(b"RIFF not a video" * 64)
  image = str(tmp_path / "img.png")
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  # Checked before anything is printed, wherever it stands in the list.
  r = _cli(f"--model={model}", image, videos[0], str(bad))
  assert r.returncode == 2 and r.stdout == "", r.stdout
  assert "Traceback" not in r.stderr
  (line,) = r.stderr.strip().splitlines()
  assert line.startswith(f"kd_jax: error: cannot read video {str(bad)!r} ("), line
  # Opens (the header is whole) but no frame decodes: refused when decoded.
  whole = open(videos[0], "rb").read()
  header_only = tmp_path / "header.avi"
  header_only.write_bytes(whole[:whole.index(b"movi") + 100])
  for args, expect in (
      ([str(tmp_path / "none.mp4")], "does not exist"),
      ([str(header_only)], f"cannot decode video {str(header_only)!r}"),
      ([videos[0], "--every=0"], "--every must be >= 1, got 0")):
    assert predict.main([f"--model={model}", *args]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("kd_jax: error: ") and expect in line, line
    assert captured.out == ""
