"""The echo team's first pilot, replayed end to end on generated videos
(4 views of moving shapes on speckle, 8 patients each): `prepare frames`
split by patient -> a study (shared teacher; MobileNetV3-small scratch and
CTKD, two seeds, precise BN) -> `report` -> export -> `predict` on a video.
The distilled student beats chance on frames and on videos, the figures'
numbers are results.json's, the exported model classifies a raw video as
the evaluation did, and each refusal on the way is one line, exit 2,
nothing written."""
import csv
import glob
import json
import os

import numpy as np
import pytest

from kd_jax.distill import methods
from kd_jax.study import figures
from kd_jax.study import report
from tests import helpers

pytestmark = pytest.mark.slow

VIEWS = ",".join(helpers.ECHO_VIEWS)
STUDY_FILE = '''
from kd_jax import config_lib
from kd_jax.study import runner as study


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name, c.dataset.data_dir = "folder", {frames!r}
  c.dataset.image_size, c.batch_size, c.eval_batch_size = 48, 32, 64
  c.num_epochs, c.early_stopping_patience = 4, 0
  c.teacher.name, c.bn_recalibration_steps = "resnet8", 8
  c.kd.alpha = 0.5
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=2)
  return [study.join(f"student=mobilenet_v3_small,method={{m}},seed={{s}}",
                     common)
          for m in ("none", "ctkd") for s in range(seeds)]
'''


def _one_line_refusal(result, *paths):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and lines[0].startswith("kd_jax"), lines
  assert "Traceback" not in result.stderr
  for path in paths:
    assert not os.path.exists(path), path


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pilot"))
  videos, labels = helpers.write_echo_videos(root, patients=8, frames=12,
                                             size=48)
  frames = os.path.join(root, "frames")
  r = helpers.run_cli_module("kd_jax.prepare", "frames", f"--videos={videos}",
                             f"--labels={labels}", f"--out={frames}",
                             "--size=48", f"--classes={VIEWS}")
  assert r.returncode == 0, r.stderr
  study_file = os.path.join(root, "pilot_study.py")
  with open(study_file, "w") as f:
    f.write(STUDY_FILE.format(frames=frames))
  study_dir = os.path.join(root, "study")
  r = helpers.run_cli_module("kd_jax.study", "run", study_file,
                             f"--study_dir={study_dir}", timeout=1800)
  assert r.returncode == 0, r.stderr[-3000:]
  out = report.make_report(study_dir, timing=False)
  return {"root": root, "videos": videos, "labels": labels,
          "frames": frames, "study_file": study_file, "study_dir": study_dir,
          "report": out}


def _cells(pilot, method):
  out = []
  for path in sorted(glob.glob(os.path.join(pilot["study_dir"], "*",
                                            "results.json"))):
    with open(path) as f:
      res = json.load(f)
    stage = res["stages"]["student"]
    # The study's teacher run is a method-none run of the teacher model.
    if stage["method"] == method and stage["model"] == "mobilenet_v3_small":
      out.append((os.path.dirname(path), stage))
  return out


def test_the_distilled_student_beats_chance_on_frames_and_videos(pilot):
  with open(os.path.join(pilot["frames"], "manifest.csv")) as f:
    test_videos = {r["video"] for r in csv.DictReader(f) if r["split"] == "test"}
  cells = _cells(pilot, "ctkd")
  assert len(cells) == 2
  for _, stage in cells:
    test = stage["test"]
    assert test["accuracy"] > 0.5, test  # chance: 0.25
    # One video a patient: as many patients as videos in the test split.
    assert test["videos"] == test["patients"] == len(test_videos) >= 4
    assert test["video_accuracy"] > 0.5, test


def test_the_figures_plot_what_results_json_holds(pilot):
  rep = pilot["report"]
  best = report.best_settings(rep["summary"])
  _, teacher, _ = report.gather(pilot["study_dir"])
  data = figures.speedup_data(rep["deployment"], best, teacher)
  for method in ("ctkd", methods.SCRATCH):
    accs = [s["test"]["accuracy"] for _, s in _cells(pilot, method)]
    point = [p for p in data["points"] if p.get("method") == method]
    assert len(point) == 1
    assert point[0]["y"] == pytest.approx(100 * np.mean(accs))
  with open(os.path.join(pilot["study_dir"], "teacher", "results.json")) as f:
    # The shared teacher is a method-none run of the teacher model.
    t_acc = json.load(f)["stages"]["student"]["test"]["accuracy"]
  teacher_pts = [p for p in data["points"] if p["kind"] == "teacher"]
  assert teacher_pts[0]["y"] == pytest.approx(100 * t_acc)  # not 100 %
  with open(os.path.join(rep["out_dir"], "report.md")) as f:
    assert "video acc" in f.read()


def test_the_exported_student_classifies_a_video_as_evaluation_did(
    pilot, tmp_path):
  cell_dir, _ = _cells(pilot, "ctkd")[0]
  model = str(tmp_path / "student.bin")
  r = helpers.run_cli_module("kd_jax.export", f"--workdir={cell_dir}",
                             f"--out={model}")
  assert r.returncode == 0, r.stderr
  saved = np.load(os.path.join(cell_dir, "student", "test_predictions.npz"))
  video = str(saved["video"][0])
  mean = saved["probs"][saved["video"] == video].mean(0)
  path = os.path.join(pilot["videos"], video)
  r = helpers.run_cli_module("kd_jax.predict", f"--model={model}", path)
  assert r.returncode == 0, r.stderr
  fields = r.stdout.strip().split("\t")
  assert fields[0] == path and "frames=12" in fields
  assert fields[1] == helpers.ECHO_VIEWS[int(np.argmax(mean))]


def test_the_pilot_refusals_are_one_line_and_write_nothing(pilot, tmp_path):
  typo = str(tmp_path / "labels_typo.csv")
  with open(pilot["labels"]) as f:
    rows = list(csv.reader(f))
  rows[1][1] = "A4c"
  with open(typo, "w", newline="") as f:
    csv.writer(f).writerows(rows)
  out = str(tmp_path / "frames")
  _one_line_refusal(helpers.run_cli_module(
      "kd_jax.prepare", "frames", f"--videos={pilot['videos']}",
      f"--labels={typo}", f"--out={out}", f"--classes={VIEWS}"), out)
  run = str(tmp_path / "run")
  _one_line_refusal(helpers.run_cli(
      f"--config={pilot['study_file']}:method=vanilla",
      f"--config.teacher.checkpoint={pilot['study_dir']}/teacher",
      "--config.teacher.class_names=A4C,A2C,PSAX,PLAXX",
      f"--workdir={run}"), run)
  fresh = str(tmp_path / "study")
  _one_line_refusal(helpers.run_cli_module(
      "kd_jax.study", "run", pilot["study_file"], f"--study_dir={fresh}",
      "--only=method=dkd"), fresh)
