"""A teacher from elsewhere: a logits file gives the same student as the
kd_jax teacher whose logits it holds (the teacher-cache path, no teacher
forward), looked up by path or index; bad files are one line; a study given
a teacher trains none."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from kd_jax.data import datasets as data
from kd_jax.data import teacher_logits
from tests import helpers

QS = "--config=configs/quickstart.py:runlocal,dataset=digits"


def _cache_to_npz(cache_dir, ds, out):
  """The kd_jax teacher cache's logits as a logits file keyed by index."""
  [root] = glob.glob(os.path.join(cache_dir, "*"))
  arrays = {}
  for name in ("train", "val", "test"):
    split = getattr(ds, name)
    arrays[f"{name}_indices"] = split.index
    arrays[f"{name}_logits"] = np.load(os.path.join(root, name + ".npy"))
  np.savez(out, **arrays)


@pytest.mark.slow
def test_logits_file_trains_the_student_of_its_teacher(tmp_path):
  teacher = str(tmp_path / "t")
  r = helpers.run_cli(QS, "--config.kd.method=none", f"--workdir={teacher}")
  assert r.returncode == 0, r.stderr[-2000:]
  cache = str(tmp_path / "cache")
  args = [QS, "--config.scratch_baseline=false",
          "--config.teacher.name=mlp"]  # the quickstart's student model
  a = str(tmp_path / "a")
  r = helpers.run_cli(*args, f"--config.teacher.checkpoint={teacher}",
                      f"--config.teacher.cache_dir={cache}", f"--workdir={a}")
  assert r.returncode == 0, r.stderr[-2000:]
  ds = data.load(helpers.tiny_config("dataset=digits"))
  npz = str(tmp_path / "logits.npz")
  _cache_to_npz(cache, ds, npz)
  b = str(tmp_path / "b")
  r = helpers.run_cli(*args, f"--config.teacher.logits={npz}", f"--workdir={b}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "no teacher forward pass" in r.stdout
  ra = helpers.read_json(os.path.join(a, "results.json"))["rows"]
  rb = helpers.read_json(os.path.join(b, "results.json"))["rows"]
  assert [x["stage"] for x in rb] == ["teacher", "student (vanilla)"]
  # The file's own test metrics are the loaded teacher's.
  assert rb[0]["test_accuracy"] == pytest.approx(ra[0]["test_accuracy"])
  for key in ("test_accuracy", "test_macro_f1", "teacher_agreement"):
    assert rb[1][key] == pytest.approx(ra[1][key]), key
  sa = helpers.read_json(os.path.join(a, "student", "results.json"))
  sb = helpers.read_json(os.path.join(b, "student", "results.json"))
  assert [h["loss"] for h in sb["history"]] == pytest.approx(
      [h["loss"] for h in sa["history"]], rel=1e-6)
  assert not os.path.exists(os.path.join(b, "teacher"))


def _folder_npz(tmp_path, drop=0, extra=False):
  root = str(tmp_path / "folder")
  helpers.write_image_folder(root)
  c = helpers.tiny_config("dataset=folder", **{"dataset.data_dir": root})
  ds = data.load(c)
  paths, labels = [], []
  for name in ("train", "val", "test"):
    split = getattr(ds, name)
    paths += [os.path.relpath(p, root) for p in split.paths]
    labels += list(split.labels)
  logits = 4.0 * np.eye(ds.num_classes, dtype=np.float32)[labels]
  if extra:
    paths.append("train/A2C/not_there.png")
    logits = np.concatenate([logits, logits[:1]])
  npz = str(tmp_path / "folder.npz")
  np.savez(npz, train_paths=np.array(paths[drop:]),
           train_logits=logits[drop:])
  return c, ds, npz, paths


def test_logits_are_looked_up_by_path(tmp_path):
  c, ds, npz, _ = _folder_npz(tmp_path)
  c.teacher.logits = npz
  out = teacher_logits.attach(c, ds)
  for name in ("train", "val", "test"):
    split = getattr(out, name)
    assert np.argmax(split.teacher_logits, -1).tolist() == split.labels.tolist()
  assert teacher_logits.evaluate(out.test)["accuracy"] == 1.0


@pytest.mark.parametrize("drop,extra,message", [
    (1, False, "examples have no logits, the first: "),
    (0, True, "1 logits match no example of the data, the first: "
              "train/A2C/not_there.png"),
])
def test_missing_or_extra_examples_are_one_line(tmp_path, drop, extra, message):
  c, _, npz, paths = _folder_npz(tmp_path, drop, extra)
  r = helpers.run_cli("--config=configs/quickstart.py:runlocal,dataset=folder",
                      f"--config.dataset.data_dir={c.dataset.data_dir}",
                      f"--config.teacher.logits={npz}",
                      f"--workdir={tmp_path / 'w'}")
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert len(errors) == 1 and message in errors[0], r.stderr[-1000:]
  if drop:
    assert "1 of the" in errors[0] and paths[0] in errors[0]
  assert "Traceback" not in r.stderr
  assert not os.path.exists(tmp_path / "w")


def test_a_study_given_a_teacher_submits_no_teacher_job(tmp_path):
  given = tmp_path / "teacher_run"
  given.mkdir()
  env = dict(os.environ, KD_JAX_DRY_RUN="1", KD_JAX_PYTHON=sys.executable,
             PYTHONPATH=helpers.REPO)
  r = subprocess.run(
      ["bash", os.path.join(helpers.REPO, "launch", "slurm_study.sh"),
       "configs/quickstart_study.py", str(tmp_path / "s"),
       f"runlocal,teacher.checkpoint={given}"],
      cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert not any("kd_teacher" in l or "dependency" in l for l in lines)
  runs = [l for l in lines if l.startswith("[")]
  assert runs and not any(l.startswith("[teacher]") for l in runs)
  distils = [l for l in runs if "method=none" not in l]
  assert distils and all(f"teacher.checkpoint={given}" in l for l in distils)
