"""Studies: cell definitions, the local runner (in-process and as processes,
skip + resume), the SLURM array script (rendered through fake sbatch/srun and
in dry-run), and the report of a tiny study on the embedded default data."""
import csv
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from kd_jax.errors import UserError
from kd_jax.study import runner as study
from tests import helpers

QS_STUDY = os.path.join("configs", "quickstart_study.py")


def _env(**extra):
  env = dict(os.environ, **extra)
  env["PYTHONPATH"] = helpers.REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _study_cli(*args, env=None, timeout=300):
  return subprocess.run([sys.executable, "-m", "kd_jax.study", *args],
                        cwd=helpers.REPO, env=env or _env(), capture_output=True,
                        text=True, timeout=timeout)


def test_study_files_declare_their_cells():
  echo = study.Study(os.path.join(helpers.REPO, "configs", "echo_study.py"))
  # 4 students x (scratch + 3 vanilla T + conditional + 2 CTKD) x 3 seeds
  assert len(echo.cells()) == 4 * 7 * 3
  c = {cell.name: cfg for cell, cfg in zip(echo.cells(), echo.configs)}
  cfg = c["student-ghostnet_100__method-ctkd__schedule-linear__seed-2"]
  assert (cfg.student.name, cfg.kd.method, cfg.kd.schedule, cfg.seed) == (
      "ghostnet_100", "ctkd", "linear", 2)
  assert cfg.teacher.name == "vgg16" and cfg.dataset.image_size == 112
  grid = study.Study(os.path.join(helpers.REPO, "configs", "cifar_grid.py"),
                     "seeds=2")
  pairs = {(cfg.kd.temperature, cfg.kd.alpha) for cfg in grid.configs
           if cfg.kd.method == "vanilla"}
  assert pairs == {(t, a) for t in (2, 4, 6, 8, 10, 12, 14)
                   for a in (0.3, 0.5, 0.7, 0.9)}
  assert len(grid.cells()) == 2 * 29  # 28 grid cells + scratch, per seed
  # Every KD cell distils from the one shared teacher; scratch cells do not.
  teacher_ckpt = os.path.join(grid.study_dir, "teacher", "student")
  for cell, cfg in zip(grid.cells(), grid.configs):
    expected = {"teacher.checkpoint": teacher_ckpt, "teacher.cache_dir": os.path.join(
        grid.study_dir, "teacher_cache")} if cfg.kd.method != "none" else {}
    assert cell.overrides == expected


def test_subclass_cells_train_their_own_teacher():
  # A subclass teacher has kd.subclasses logits per class: the study's one
  # (plain) teacher cannot serve those cells, so main trains theirs.
  s = study.Study(os.path.join(helpers.REPO, "configs", "repro",
                               "mnist_subclass_kd.py"), "seeds=2")
  by_method = {}
  for cell, cfg in zip(s.cells(), s.configs):
    by_method.setdefault(cfg.kd.method, []).append(cell)
  assert {m: len(v) for m, v in by_method.items()} == {
      "none": 2, "vanilla": 2, "subclass": 2}
  teacher_ckpt = os.path.join(s.study_dir, "teacher", "student")
  for cell in by_method["vanilla"]:
    assert cell.needs_teacher and cell.overrides["teacher.checkpoint"] == teacher_ckpt
  for cell in by_method["subclass"] + by_method["none"]:
    assert not cell.needs_teacher and "teacher.checkpoint" not in cell.overrides
  assert s.teacher_cell().overrides["kd.method"] == "none"


def test_cell_names_and_study_args():
  assert study.cell_dirname("student=a,method=vanilla,T=2,seed=0,runlocal") == (
      "student-a__method-vanilla__T-2__seed-0")
  assert study.parse_study_arg("runlocal,seeds=3,dataset.data_dir=/d") == (
      3, "runlocal,dataset.data_dir=/d")
  with pytest.raises(UserError, match="seeds must be >= 1"):
    study.parse_study_arg("seeds=0")


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
  """The quickstart study in tiny mode, run in this process."""
  study_dir = str(tmp_path_factory.mktemp("study"))
  s = study.Study(os.path.join(helpers.REPO, QS_STUDY), "runlocal", study_dir)
  assert study.run(s, in_process=True) == 0
  return s


def test_tiny_study_runs_every_cell_with_one_teacher(tiny_study):
  s = tiny_study
  cells = s.cells()
  assert len(cells) == 2 * 2 * 2 and all(c.done for c in cells)
  teacher = helpers.read_json(os.path.join(s.study_dir, "teacher", "results.json"))
  assert teacher["rows"][-1]["model"] == "mlp_1200x2"
  for cell, cfg in zip(cells, s.configs):
    res = helpers.read_json(os.path.join(cell.workdir, "results.json"))
    assert res["config"]["student"]["name"] == cfg.student.name
    assert res["config"]["seed"] == cfg.seed
    stages = res["stages"]
    if cfg.kd.method == "vanilla":  # distilled from the shared teacher
      assert stages["teacher"]["method"] == "loaded"
      assert stages["student"]["teacher_checkpoint"] == os.path.join(
          s.study_dir, "teacher", "student", "checkpoints", "best")
      assert stages["teacher"]["test"]["accuracy"] == pytest.approx(
          teacher["rows"][-1]["test_accuracy"])
      assert stages["student"]["teacher_cache"] is True  # no augmentation
    else:
      assert set(stages) == {"student"}


def test_report_of_the_tiny_study(tiny_study):
  """`python -m kd_jax.report` on the tiny study: CSVs that agree with the
  cells' results.json, the markdown tables and the PNGs."""
  s = tiny_study
  out = os.path.join(s.study_dir, "report_cli")
  r = subprocess.run([sys.executable, "-m", "kd_jax.report", s.study_dir,
                      f"--out={out}", "--no_timing"], cwd=helpers.REPO,
                     env=_env(), capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  # The console gets a digest, report.md the whole report.
  assert "## Deployment check" not in r.stdout
  assert f"report written to {out} (report.md, " in r.stdout
  with open(os.path.join(out, "summary.csv")) as f:
    digest = [row for row in csv.DictReader(f)
              if row["setting"] == "student-tiny_cnn__method-vanilla"][0]
  assert (f"  tiny_cnn             vanilla        "
          f"{float(digest['test_accuracy_mean']):.4f}  "
          "(student-tiny_cnn__method-vanilla, 2 seed(s))") in r.stdout
  with open(os.path.join(out, "results.csv")) as f:
    rows = {row["cell"]: row for row in csv.DictReader(f)}
  assert set(rows) == {c.name for c in s.cells()}
  acc = {}
  for c in s.cells():
    res = helpers.read_json(os.path.join(c.workdir, "results.json"))
    assert float(rows[c.name]["test_accuracy"]) == pytest.approx(
        res["rows"][-1]["test_accuracy"])
    acc.setdefault(c.name.rsplit("__seed-", 1)[0], []).append(
        res["rows"][-1]["test_accuracy"])
  with open(os.path.join(out, "summary.csv")) as f:
    summary = {row["setting"]: row for row in csv.DictReader(f)}
  assert set(summary) == set(acc)  # 2 students x 2 methods
  for setting, values in acc.items():
    assert float(summary[setting]["test_accuracy_mean"]) == pytest.approx(
        np.mean(values))
    assert float(summary[setting]["test_accuracy_std"]) == pytest.approx(
        np.std(values, ddof=1))
  with open(os.path.join(out, "comparisons.csv")) as f:
    comps = list(csv.DictReader(f))
  assert sorted((c["student"], c["kind"], c["n_pairs"]) for c in comps) == [
      ("mlp_small", "kd_vs_scratch", "2"), ("tiny_cnn", "kd_vs_scratch", "2")]
  md = open(os.path.join(out, "report.md")).read()
  assert "| student-tiny_cnn__method-vanilla | tiny_cnn | vanilla |" in md
  assert "Teacher `mlp_1200x2`" in md and "## Deployment check" in md
  for name in ("accuracy_per_student.png", "accuracy_vs_speedup.png",
               "t_alpha_heatmap.png", "training_curves.png"):
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(4) == b"\x89PNG", name


def test_runner_skips_finished_cells_and_processes_match_in_process(tiny_study):
  """Delete two cells; the local launcher (launch/local_study.sh, 2 cell
  processes at a time) reruns exactly those and reproduces the in-process
  results; finished cells are untouched."""
  s = tiny_study
  cells = s.cells()
  rerun = [cells[0], cells[-1]]  # a scratch and a KD cell
  before = {c.name: helpers.read_json(os.path.join(c.workdir, "results.json"))
            for c in rerun}
  mtimes = {c.name: os.path.getmtime(os.path.join(c.workdir, "results.json"))
            for c in cells if c not in rerun}
  for c in rerun:
    shutil.rmtree(c.workdir)
  r = subprocess.run(
      ["bash", os.path.join(helpers.REPO, "launch", "local_study.sh"), QS_STUDY,
       s.study_dir, "runlocal"], cwd=helpers.REPO, capture_output=True, text=True,
      timeout=300, env=_env(KD_JAX_PARALLEL="2", KD_JAX_PYTHON=sys.executable))
  assert r.returncode == 0, r.stderr[-2000:]
  assert "(6 finished, 2 to run)" in r.stdout
  assert "teacher: training" not in r.stdout  # the teacher is done already
  for c in cells:
    if c not in rerun:
      assert os.path.getmtime(os.path.join(c.workdir, "results.json")) == mtimes[c.name]
  for c in rerun:
    after = helpers.read_json(os.path.join(c.workdir, "results.json"))
    assert after["rows"] == before[c.name]["rows"], c.name
    assert os.path.exists(os.path.join(s.study_dir, "logs", c.name + ".log"))


def _fake_slurm(tmp_path):
  """sbatch/srun stand-ins that record their arguments."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = tmp_path / "calls.log"
  for name, out in (("sbatch", 'echo 4242'), ("srun", "true")):
    p = bin_dir / name
    p.write_text(f'#!/bin/bash\necho "{name} $*" >> {log}\n{out}\n')
    p.chmod(0o755)
  return bin_dir, log


def test_slurm_script_submits_teacher_then_array(tmp_path):
  bin_dir, log = _fake_slurm(tmp_path)
  env = _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             KD_JAX_PYTHON=sys.executable, KD_JAX_TASKS_PER_CELL="2")
  env.pop("SLURM_JOB_ID", None)
  study_dir = str(tmp_path / "s")
  script = os.path.join(helpers.REPO, "launch", "slurm_study.sh")
  r = subprocess.run(["bash", script, QS_STUDY, study_dir, "runlocal"],
                     cwd=helpers.REPO, env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  calls = log.read_text().splitlines()
  assert calls[0] == (f"sbatch --parsable --job-name=kd_teacher --ntasks=2 "
                      f"--export=ALL,KD_JAX_CELL=teacher {script} {QS_STUDY} "
                      f"{study_dir} runlocal")
  assert calls[1] == (f"sbatch --array=0-7%16 --ntasks=2 --dependency=afterok:4242 "
                      f"{script} {QS_STUDY} {study_dir} runlocal")
  # Array task 3 runs cell 3 through srun with the runner's exact command.
  log.write_text("")
  r = subprocess.run(["bash", script, QS_STUDY, study_dir, "runlocal"],
                     cwd=helpers.REPO, env=dict(env, SLURM_ARRAY_TASK_ID="3"),
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  s = study.Study(QS_STUDY, "runlocal", study_dir)
  srun = log.read_text().strip()
  assert srun == "srun --ntasks=2 " + " ".join(s.cells()[3].argv)
  assert shlex.split(srun)[2:] == s.cells()[3].argv


def test_slurm_dry_run_prints_every_command(tmp_path):
  env = _env(KD_JAX_DRY_RUN="1", KD_JAX_PYTHON=sys.executable)
  r = subprocess.run(["bash", os.path.join(helpers.REPO, "launch", "slurm_study.sh"),
                      QS_STUDY, str(tmp_path / "s"), "runlocal"],
                     cwd=helpers.REPO, env=env, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert lines[0].startswith("sbatch --parsable --job-name=kd_teacher")
  assert lines[1].startswith("sbatch --array=0-7%16 --ntasks=1 "
                             "--dependency=afterok:TEACHER_JOB_ID")
  runs = [l for l in lines if l.startswith("[")]
  assert len(runs) == 1 + 8 and runs[0].startswith("[teacher] srun --ntasks=1 ")
  assert "--config.teacher.checkpoint=" in runs[-1]
  assert not (tmp_path / "s").exists()  # nothing ran


def test_study_takes_its_arg_after_a_colon_like_main():
  assert study.split_spec("configs/x.py:runlocal,seeds=3") == (
      "configs/x.py", "runlocal,seeds=3")
  assert study.split_spec("configs/x.py:seeds=3", "runlocal") == (
      "configs/x.py", "seeds=3,runlocal")
  r = _study_cli("list", QS_STUDY + ":runlocal,seeds=3")
  assert r.returncode == 0, r.stderr[-1500:]
  rows = [l.split("\t") for l in r.stdout.splitlines()]
  assert len(rows) == 1 + 2 * 2 * 3  # the teacher + students x methods x seeds
  assert all(row[3].endswith("runlocal") for row in rows[1:])


@pytest.mark.parametrize("args,message", [
    (["list", "configs/no_study.py"], "study file 'configs/no_study.py' does not exist"),
    (["list", "configs/quickstart.py"], "is not a study file: it has no cells()"),
    (["command", QS_STUDY, "--index=99"], "cell index 99 out of range: the study has 8 cells"),
    (["count", QS_STUDY, "--arg=seeds=x"], "seeds must be an integer"),
    (["count", QS_STUDY, "--arg=T=-1"], "config.kd.temperature=-1.0 must be > 0"),
])
def test_study_cli_bad_input(args, message):
  r = _study_cli(*args)
  helpers.one_error_line(r, message)
