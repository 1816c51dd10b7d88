"""`python -m kd_jax.study run STUDY --only=KEY=VALUE,...` runs a subset of
a study's cells (with the shared teacher where a kept cell needs it), its
refusals are one line with exit 2 and write nothing, and the report of the
subset with `--deploy_format=int8` shows the int8 files' MB and ms."""
import csv
import os
import subprocess
import sys

import pytest

from kd_jax.deploy import export
from kd_jax.errors import UserError
from kd_jax.study import report
from kd_jax.study import runner as study
from tests import helpers

QS_STUDY = os.path.join("configs", "quickstart_study.py")
ECHO = os.path.join(helpers.REPO, "configs", "echo_study.py")


def _cli(*args, timeout=600):
  env = dict(os.environ)
  env["PYTHONPATH"] = helpers.REPO + os.pathsep + env.get("PYTHONPATH", "")
  return subprocess.run([sys.executable, "-m", "kd_jax.study", *args],
                        cwd=helpers.REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _names(s):
  return [c.name for c in s.selected()]


def test_only_keeps_the_cells_with_every_value():
  s = study.Study(ECHO, only="method=ctkd,student=ghostnet_100")
  assert _names(s) == [
      f"student-ghostnet_100__method-ctkd__schedule-{sched}__seed-{seed}"
      for sched in ("cosine", "linear") for seed in range(3)]
  assert [c.name for c in s.plan()][0] == "teacher"  # CTKD distils
  # several values: '|' or a repeated key; config paths and aliases alike
  either = ["student-ghostnet_100__method-none__seed-0",
            "student-ghostnet_100__method-ctkd__schedule-cosine__seed-0",
            "student-ghostnet_100__method-ctkd__schedule-linear__seed-0"]
  for only in ("method=ctkd|none,student=ghostnet_100,seed=0",
               "kd.method=none,method=ctkd,student.name=ghostnet_100,seed=0"):
    assert _names(study.Study(ECHO, only=only)) == either, only
  linear = study.Study(ECHO, only="kd.schedule=linear,seed=2,method=ctkd")
  assert len(_names(linear)) == 4  # one per student
  # Scratch cells need no teacher: the plan has none.
  scratch = study.Study(ECHO, only="method=none,seed=0")
  assert [c.name for c in scratch.plan()] == _names(scratch)
  assert len(scratch.plan()) == 4
  # The cells keep their indices in the whole study (`command --index`).
  assert [c.index for c in s.selected()] == [
      i for i, c in enumerate(s.cells()) if c.name in _names(s)]
  assert len(study.Study(ECHO).selected()) == 84


def test_only_refuses_what_no_cell_has():
  with pytest.raises(UserError, match=r"--only method=dkd matches no cell; "
                     r"method is one of: none, vanilla, conditional, ctkd"):
    study.Study(ECHO, only="method=dkd")
  with pytest.raises(UserError, match=r"--only key 'colour' is neither a "
                     r"cell axis \(student, method, seed, T, schedule\)"):
    study.Study(ECHO, only="colour=red")
  with pytest.raises(UserError, match="no cell has all of these values"):
    study.Study(ECHO, only="method=none,schedule=linear")


@pytest.mark.parametrize("only,message", [
    ("method=dkd", "--only method=dkd matches no cell; method is one of: "
     "none, vanilla"),
    ("colour=red", "--only key 'colour' is neither a cell axis (student, "
     "method, seed)"),
    ("student=tiny_cnn,seed=7", "--only seed=7 matches no cell; seed is one "
     "of: 0, 1"),
    ("method", "--only item 'method' is not KEY=VALUE"),
])
def test_only_refusal_is_one_line_exit_2_and_writes_nothing(tmp_path, only,
                                                           message):
  study_dir = tmp_path / "s"
  r = _cli("run", QS_STUDY, "--arg=runlocal", f"--study_dir={study_dir}",
           f"--only={only}", "--in_process")
  assert r.returncode == 2, r.stderr[-2000:]
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("kd_jax: error: "), r.stderr
  assert message in lines[0]
  assert "Traceback" not in r.stderr
  assert not study_dir.exists()


def test_only_is_refused_by_count_and_command(tmp_path):
  r = _cli("count", QS_STUDY, "--only=seed=0")
  assert r.returncode == 2
  assert r.stderr.strip() == ("kd_jax: error: --only works with list, run "
                              "and commands, not with count")


def _fake_profile(name, classes, size, timing):
  return {"gflops": 0.01, "latency_ms": 2.0}


def _export_mb(workdir, path, quantize):
  export.export_tflite(workdir, path, quantize=quantize)
  return os.path.getsize(path) / 1e6


@pytest.mark.slow  # an end-to-end run; the parts are tested fast
def test_only_runs_the_subset_and_the_int8_report(tmp_path):
  """tiny_cnn at seed 0 only (scratch + vanilla KD): the teacher and those
  two cells run, nothing else; the report of the subset with
  --deploy_format=int8 shows the int8 files' MB and ms."""
  study_dir = tmp_path / "s"
  r = _cli("run", QS_STUDY, "--arg=runlocal", f"--study_dir={study_dir}",
           "--only=student=tiny_cnn,seed=0", "--in_process")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (f"study {QS_STUDY}: 2 of the study's 8 cells "
          "(--only=student=tiny_cnn,seed=0) in ") in r.stdout
  assert "teacher: training mlp_1200x2" in r.stdout
  kd_cell = "student-tiny_cnn__method-vanilla__seed-0"
  assert sorted(os.listdir(study_dir)) == sorted([
      "logs", "teacher", "teacher_cache",
      "student-tiny_cnn__method-none__seed-0", kd_cell])
  for name in ("teacher", kd_cell):
    assert os.path.exists(study_dir / name / "results.json"), name

  out = report.make_report(str(study_dir), str(tmp_path / "r"),
                           profile_fn=_fake_profile, deploy_format="int8")
  assert [r["cell"] for r in out["rows"]] == [
      "student-tiny_cnn__method-none__seed-0", kd_cell]
  teacher, student = out["deployment"]
  assert (teacher["role"], student["model"]) == ("teacher", "tiny_cnn")
  int8_mb = _export_mb(str(study_dir / kd_cell), str(tmp_path / "s8.tflite"),
                       "int8")
  f32_mb = _export_mb(str(study_dir / kd_cell), str(tmp_path / "s32.tflite"),
                      "none")
  assert student["size_mb"] == pytest.approx(int8_mb, abs=1e-6)
  assert student["size_mb"] != pytest.approx(f32_mb, rel=0.1)
  assert student["jax_size_mb"] != pytest.approx(int8_mb, rel=0.1)
  assert student["latency_ms"] == student["tflite_int8_ms_all"] != 2.0
  assert student["jax_latency_ms"] == 2.0  # the JAX profile's, kept aside
  assert student["frames_per_s"] == pytest.approx(1e3 / student["latency_ms"])
  # The teacher is judged by its int8 file too, so the ratios compare like
  # with like.
  t_mb = _export_mb(str(study_dir / "teacher"), str(tmp_path / "t8.tflite"),
                    "int8")
  assert teacher["size_mb"] == pytest.approx(t_mb, abs=1e-6)
  assert student["size_ratio_vs_teacher"] == pytest.approx(t_mb / int8_mb)
  assert student["speedup_vs_teacher"] == pytest.approx(
      teacher["latency_ms"] / student["latency_ms"])
  md = out["markdown"]
  assert ("| model | role | params | MB (int8 TFLite) | GFLOPs | "
          "ms/frame (int8 TFLite) | frames/s (int8 TFLite) |") in md
  assert (f"| tiny_cnn | student | {student['params']:,} | {int8_mb:.2f} | "
          in md)
  with open(tmp_path / "r" / "deployment.csv") as f:
    rows = {row["model"]: row for row in csv.DictReader(f)}
  assert float(rows["tiny_cnn"]["size_mb"]) == pytest.approx(int8_mb, abs=1e-6)
