"""The bad-input table: `python -m kd_jax.main` as a subprocess for every row:
exit status != 0, one `kd_jax: error:` line, no traceback, nothing in the
workdir written or overwritten."""
import glob
import os
import sys

import pytest

from tests import helpers

QS = "--config=configs/quickstart.py"
CASES = [
    ([QS, "--config.kd.temperature=0"], "config.kd.temperature=0.0 must be > 0"),
    ([QS, "--config.kd.temperature=-2"], "must be > 0"),
    ([QS, "--config.kd.alpha=1.5"], "config.kd.alpha=1.5 must be in [0, 1]"),
    ([QS, "--config.kd.alpha=-0.1"], "must be in [0, 1]"),
    ([QS + ":schedule=step"], "unknown config.kd.schedule 'step'; allowed: cosine, linear"),
    ([QS, "--config.kd.method=hinton"], "unknown config.kd.method 'hinton'; allowed: none"),
    ([QS, "--config.kd.method=fitnets"], "method 'fitnets' needs config.kd.hint_student_layer"),
    ([QS, "--config.kd.method=fitnets", "--config.kd.hint_student_layer=hidden1", "--config.kd.hint_teacher_layer=conv9"], "config.kd.hint_teacher_layer='conv9' is not a feature of mlp_1200x2; allowed: hidden1"),
    ([QS, "--config.kd.method=fitnets", "--config.student.name=simple_cnn",
      "--config.teacher.name=simple_cnn", "--config.kd.hint_student_layer=block1",
      "--config.kd.hint_teacher_layer=block2"],
     "hint layers do not match in spatial size at 28px: student simple_cnn.block1 is 14x14x88, teacher simple_cnn.block2 is 7x7x176"),
    ([QS, "--config.kd.assistants=mlp,vgg99"], "unknown teacher assistant (config.kd.assistants) 'vgg99'"),
    ([QS, "--config.kd.method=subclass", "--config.kd.subclasses=1"], "config.kd.subclasses=1 must be >= 2"),
    ([QS, "--config.student.name=resnet9"], "unknown config.student.name 'resnet9'; allowed:"),
    ([QS, "--config.teacher.name=vgg99"], "unknown config.teacher.name 'vgg99'"),
    ([QS, "--config.dataset.name=imagenet"], "unknown config.dataset.name 'imagenet'"),
    ([QS, "--config.num_epochs=0"], "config.num_epochs=0 must be a positive integer"),
    ([QS, "--config.num_epochs=-3"], "config.num_epochs=-3 must be a positive integer"),
    ([QS, "--config.nan_policy=ignore"], "unknown config.nan_policy 'ignore'; allowed: stop, skip"),
    ([QS + ":method=ctkd,schedule=exp"], "unknown config.kd.schedule 'exp'"),
    ([QS, "--config.batch_size=-8"], "config.batch_size=-8 must be a positive integer"),
    ([QS + ":foo=1"], "config arg key 'foo' does not exist"),
    ([QS, "--config.nonexistent=1"], "unknown config field"),
    (["--config=configs/missing.py"], "cannot load config file 'configs/missing.py'"),
    ([QS, "--config.dataset.name=folder", "--config.dataset.data_dir=/no/such/dir"],
     "data folder '/no/such/dir' does not exist"),
    ([QS, "--config.dataset.name=cifar10", "--config.dataset.data_dir=/no/such/dir"],
     "TFDS dataset 'cifar10' needs config.dataset.data_dir"),
    ([QS, "--config.teacher.checkpoint=/no/such/ckpt"], "config.teacher.checkpoint='/no/such/ckpt' does not exist"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[c[1][:40] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
  workdir = tmp_path / "wd"
  r = helpers.run_cli(*args, f"--workdir={workdir}", timeout=300)
  helpers.one_error_line(r, message)
  assert not workdir.exists()


def test_batch_size_not_divisible_by_device_count(tmp_path):
  r = helpers.run_cli(QS + ":runlocal", "--config.batch_size=15",
                      f"--workdir={tmp_path / 'wd'}",
                      env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  helpers.one_error_line(r, "config.batch_size=15 is not divisible by the 2 devices")
  assert not (tmp_path / "wd").exists()


def _folder_run(tmp_path, root, *extra):
  return helpers.run_cli(QS + ":runlocal", "--config.dataset.name=folder",
                         f"--config.dataset.data_dir={root}", *extra,
                         f"--workdir={tmp_path / 'wd'}")


def test_empty_data_folder(tmp_path):
  for split in ("train", "test"):
    (tmp_path / "data" / split).mkdir(parents=True)
  helpers.one_error_line(_folder_run(tmp_path, tmp_path / "data"), "no class folders in")
  assert not (tmp_path / "wd").exists()


def test_class_folder_in_train_but_not_in_test(tmp_path):
  root = tmp_path / "data"
  helpers.write_image_folder(str(root), per_split={"train": 4, "test": 2})
  import shutil
  shutil.rmtree(root / "test" / "PLAX")
  helpers.one_error_line(_folder_run(tmp_path, root),
                  "class folders of " + str(root / "test") + " (A2C, A4C) differ "
                  "from train's (A2C, A4C, PLAX)")
  assert not (tmp_path / "wd").exists()


def _corrupt_folder(tmp_path):
  root = tmp_path / "data"
  helpers.write_image_folder(str(root), per_split={"train": 16, "test": 6})
  good = sorted(glob.glob(str(root / "train" / "A2C" / "*.png")))[0]
  data = open(good, "rb").read()
  truncated = root / "train" / "A2C" / "truncated.png"
  truncated.write_bytes(data[: len(data) // 2])  # PNG magic, broken body
  notes = root / "test" / "A4C" / "notes.jpg"
  notes.write_text("not an image")
  return root, {f"corrupt image file {truncated}",
                f"corrupt or non-image file {notes}"}


def test_corrupt_image_refused_by_name(tmp_path):
  # Validation is lazy: the first batch that reads a corrupt file refuses
  # it (which of the two comes first is the data order's business).
  root, problems = _corrupt_folder(tmp_path)
  r = _folder_run(tmp_path, root)
  line = helpers.one_error_line(r, "kd_jax: error: corrupt")
  assert any(p in line for p in problems), line
  assert not (tmp_path / "wd" / "results.json").exists()


def test_corrupt_images_skipped_with_a_warning_and_count(tmp_path):
  root, problems = _corrupt_folder(tmp_path)
  r = _folder_run(tmp_path, root, "--config.dataset.corrupt_images=skip",
                  "--config.kd.method=none", "--config.scratch_baseline=False",
                  "--config.num_epochs=1")
  assert r.returncode == 0, r.stderr[-2000:]
  warned = [l for l in r.stderr.splitlines()
            if l.startswith("kd_jax: warning: skipped ")]
  named = {p for p in problems if any(p in l for l in warned)}
  assert len(warned) == len(named), warned  # one line per file
  assert any("notes.jpg" in p for p in named)  # the test split is read whole
  results = helpers.read_json(str(tmp_path / "wd" / "results.json"))
  assert results["corrupt_images_skipped"] == len(named)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  """A finished tiny run on digits (10 classes): its teacher is reused."""
  workdir = str(tmp_path_factory.mktemp("finished"))
  r = helpers.run_cli(QS + ":runlocal,dataset=digits", "--config.num_epochs=1",
                      f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-2000:]
  return workdir


def test_teacher_checkpoint_for_other_classes_or_architecture(tmp_path, finished_run):
  root = tmp_path / "data"
  helpers.write_image_folder(str(root), per_split={"train": 8, "test": 4})
  r = _folder_run(tmp_path, root, f"--config.teacher.checkpoint={finished_run}")
  helpers.one_error_line(r, "does not match: 10 classes (the data has 3)")
  r = helpers.run_cli(QS + ":runlocal,dataset=digits", "--config.teacher.name=tiny_cnn",
                      f"--config.teacher.checkpoint={finished_run}",
                      f"--workdir={tmp_path / 'wd'}")
  helpers.one_error_line(r, "architecture 'mlp_1200x2' (config.teacher.name is 'tiny_cnn')")
  assert not (tmp_path / "wd").exists()


# Slow (the default run's budget); tests/test_train.py refuses another
# config's workdir in the default run.
@pytest.mark.slow
def test_workdir_of_another_config_refused_unless_overwrite(tmp_path, finished_run):
  import shutil
  workdir = tmp_path / "wd"
  shutil.copytree(finished_run, workdir)
  before = {p: os.path.getmtime(p) for p in glob.glob(str(workdir / "**"), recursive=True)}
  r = helpers.run_cli(QS + ":runlocal,dataset=digits,alpha=0.9", "--config.num_epochs=1",
                      f"--workdir={workdir}")
  helpers.one_error_line(r, f"workdir {workdir} holds a run of a different config "
                  "(differs in kd.alpha)")
  after = {p: os.path.getmtime(p) for p in glob.glob(str(workdir / "**"), recursive=True)}
  assert after == before  # nothing touched
  r = helpers.run_cli(QS + ":runlocal,dataset=digits,alpha=0.9", "--config.num_epochs=1",
                      f"--workdir={workdir}", "--overwrite")
  assert r.returncode == 0, r.stderr[-2000:]
  (aside,) = glob.glob(str(workdir) + ".old-*")
  assert helpers.read_json(os.path.join(aside, "config.json"))["kd"]["alpha"] == 0.5
  assert helpers.read_json(workdir / "config.json")["kd"]["alpha"] == 0.9


DISK_FULL = """
import errno, runpy, sys
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize
calls = []
async def finalize(self, *a, **k):
  calls.append(1)
  if len(calls) == {fail_at}:  # the data is in the temporary directory
    raise OSError(errno.ENOSPC, "No space left on device")
  return await original(self, *a, **k)
atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = ["kd_jax.main"] + {args!r}
runpy.run_module("kd_jax.main", run_name="__main__")
"""


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path):
  import subprocess
  workdir = str(tmp_path / "wd")
  args = [QS + ":runlocal,dataset=digits,method=none", "--config.num_epochs=2",
          "--config.checkpoint_every_steps=1", f"--workdir={workdir}"]
  env = dict(os.environ, PYTHONPATH=helpers.REPO)
  r = subprocess.run([sys.executable, "-c", DISK_FULL.format(fail_at=5, args=args)],
                     cwd=helpers.REPO, env=env, capture_output=True, text=True,
                     timeout=300)
  line = helpers.one_error_line(r, "could not save the checkpoint of step ")
  assert "No space left on device" in line
  previous = int(line.split("the previous checkpoint (step ")[1].split(")")[0])
  step, _ = helpers.restore_raw(os.path.join(workdir, "student", "checkpoints",
                                             "latest"), "state")
  assert step == previous  # the half-written step is not taken for a checkpoint
  # and the run resumes from it
  r = helpers.run_cli(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resumed from step {previous}" in r.stdout


def test_print_config_prints_the_checked_cell_and_trains_nothing(tmp_path):
  workdir = str(tmp_path / "wd")
  r = helpers.run_cli(QS + ":runlocal,T=3", "--config.kd.alpha=0.25",
                      "--print_config", f"--workdir={workdir}", timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "temperature: 3" in r.stdout and "alpha: 0.25" in r.stdout
  assert not os.path.exists(workdir)
  bad = helpers.run_cli(QS + ":T=-1", "--print_config", timeout=300)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1] == (
      "kd_jax: error: config.kd.temperature=-1.0 must be > 0")
