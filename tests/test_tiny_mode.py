"""Tiny mode (`runlocal`): a teacher given as weights keeps its model and
image size, one line says what tiny mode shrank, and a TFDS dataset that is
not prepared here is the embedded data instead (with one line)."""
import glob
import os

import pytest
# torch before any JAX work in this process: imported after it, its triton
# probe can crash the interpreter (the 'interop' extra installs both).
import safetensors.torch as safetensors_torch
import torchvision

from kd_jax import config_lib
from kd_jax.config_lib import args as config_args
from kd_jax.data import datasets as data
from kd_jax.errors import UserError
from tests import helpers

VANILLA = os.path.join(helpers.REPO, "configs", "vanilla_kd_mobilenet_v3_small.py")
AT = os.path.join(helpers.REPO, "configs", "at_resnet8x4.py")
VGG_FILE = "torchvision:/weights/vgg16.safetensors"  # never read here
CONFIGS = sorted(glob.glob(os.path.join(helpers.REPO, "configs", "*.py"))
                 + glob.glob(os.path.join(helpers.REPO, "configs", "repro", "*.py")))


def load(path, arg=None):
  return config_lib.load_config_module(path).get_config(arg)


def test_a_teacher_used_as_is_keeps_its_model_and_image_size(tmp_path):
  weights = tmp_path / "vgg16.safetensors"
  weights.write_bytes(b"")  # validation checks that it exists, not more
  tiny = load(VANILLA, f"runlocal,image_size=224,teacher.checkpoint={weights}")
  assert (tiny.teacher.name, tiny.dataset.image_size) == ("vgg16", 224)
  assert (tiny.batch_size, tiny.max_steps_per_epoch) == (16, 4)  # still tiny
  config_lib.validate(tiny)


def test_a_teacher_fine_tuned_from_weights_keeps_its_model_at_tiny_size():
  tiny = load(VANILLA, f"runlocal,teacher.init_from={VGG_FILE}")
  assert (tiny.teacher.name, tiny.dataset.image_size) == ("vgg16", 32)


def test_without_weights_the_teacher_is_swapped_and_the_size_capped():
  tiny = load(VANILLA, "runlocal")
  assert (tiny.teacher.name, tiny.dataset.image_size) == ("simple_cnn", 32)


def test_the_line_lists_what_tiny_mode_shrank():
  line = config_args.tiny_changes(load(VANILLA), load(VANILLA, "runlocal"))
  assert line == ("epochs 20->2, batch 256->16, eval batch 512->32, "
                  "4 steps/epoch, 128 train / 64 eval images, "
                  "image 112->32 px, teacher vgg16->simple_cnn")
  arg = f"teacher.checkpoint={VGG_FILE}"
  kept = config_args.tiny_changes(load(VANILLA, arg),
                                  load(VANILLA, "runlocal," + arg))
  assert "image 112" not in kept
  assert kept.endswith("teacher vgg16 kept at 112 px (given as weights)")


def _command_line(path, arg, overrides):
  """What kd_jax.main does: get_config(arg), the --config.x=y overrides
  after it, then `command_line_config`."""
  config = load(path, arg)
  for key, value in overrides.items():
    config_lib.set_path(config, key, value)
  return config_args.command_line_config(config, f"{path}:{arg}", overrides)


def test_a_weight_file_given_after_tiny_mode_brings_its_teacher_back(capsys):
  c = _command_line(VANILLA, "runlocal", {"teacher.checkpoint": VGG_FILE})
  assert (c.teacher.name, c.dataset.image_size) == ("vgg16", 112)
  err = capsys.readouterr().err.splitlines()
  assert err == ["kd_jax: tiny mode: epochs 20->2, batch 256->16, eval batch "
                 "512->32, 4 steps/epoch, 128 train / 64 eval images, "
                 "teacher vgg16 kept at 112 px (given as weights)"]
  # Overrides of the model or the size are the last word.
  c = _command_line(VANILLA, "runlocal", {"teacher.checkpoint": VGG_FILE,
                                          "teacher.name": "resnet18",
                                          "dataset.image_size": 64})
  assert (c.teacher.name, c.dataset.image_size) == ("resnet18", 64)


def test_a_kd_jax_run_given_after_tiny_mode_is_read_as_tiny(tmp_path):
  # A study passes its tiny teacher run so: it holds the tiny teacher.
  c = _command_line(VANILLA, "runlocal", {"teacher.checkpoint": str(tmp_path)})
  assert (c.teacher.name, c.dataset.image_size) == ("simple_cnn", 32)


def test_runlocal_given_as_an_override_makes_the_run_tiny(capsys):
  c = _command_line(VANILLA, "T=2", {"runlocal": True, "batch_size": 8})
  assert (c.max_steps_per_epoch, c.batch_size, c.kd.temperature) == (4, 8, 2.0)
  err = capsys.readouterr().err
  assert "epochs 20->2" in err and " batch 256" not in err  # 8: the user's
  c = _command_line(VANILLA, "T=2", {})
  assert not c.runlocal and c.batch_size == 256


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_says_what_its_tiny_mode_shrank(path, capsys):
  c = _command_line(path, "runlocal", {})
  err = capsys.readouterr().err.splitlines()
  assert len(err) == 1 and err[0].startswith("kd_jax: tiny mode: epochs ")
  assert c.runlocal


def test_tiny_mode_without_cifar100_uses_the_embedded_data(capsys):
  ds = data.load(load(AT, "runlocal"))
  fallback = data.resolve_name("default")
  assert ds.name == fallback and ds.num_classes == 10  # classes follow the data
  assert len(ds.train) == 128
  err = capsys.readouterr().err.splitlines()
  assert err == [f"kd_jax: tiny mode: TFDS 'cifar100' is not prepared here (no "
                 f"dataset.data_dir); using the embedded data ({fallback}) "
                 "instead"]


def test_tiny_mode_with_an_unprepared_data_dir_uses_the_embedded_data(
    tmp_path, capsys):
  ds = data.load(load(AT, f"runlocal,dataset.data_dir={tmp_path}"))
  assert ds.name == data.resolve_name("default")
  lines = [l for l in capsys.readouterr().err.splitlines()
           if l.startswith("kd_jax: tiny mode:")]
  assert len(lines) == 1 and f"cannot read TFDS dataset 'cifar100' from {tmp_path}" in lines[0]


@pytest.mark.parametrize("arg", [None, "dataset.data_dir=/no/such/dir"])
def test_outside_tiny_mode_a_missing_dataset_is_one_line(arg):
  with pytest.raises(UserError) as e:
    data.load(load(AT, arg))
  assert str(e.value).startswith("TFDS dataset 'cifar100' needs config.dataset.data_dir")
  assert "\n" not in str(e.value)


def _resnet18_file(tmp_path, num_classes):
  model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
  path = str(tmp_path / "resnet18.safetensors")
  safetensors_torch.save_file(model.state_dict(), path)
  return path


@pytest.mark.slow  # an end-to-end run; the parts are tested fast
def test_a_foreign_teacher_given_after_tiny_mode_runs_at_its_size(tmp_path):
  """The issue's route end to end: a torchvision file given with
  --config.teacher.checkpoint after `:runlocal` (which swapped the teacher
  for simple_cnn) is the frozen teacher at the configured 48 px."""
  path = _resnet18_file(tmp_path, num_classes=10)  # the embedded data's 10
  workdir = tmp_path / "run"
  r = helpers.run_cli(
      f"--config={VANILLA}:runlocal,teacher=resnet18,student=tiny_cnn,image_size=48",
      f"--config.teacher.checkpoint=torchvision:{path}", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: tiny mode:")]
  assert len(lines) == 1, r.stderr[-2000:]
  assert lines[0].endswith("teacher resnet18 kept at 48 px (given as weights)")
  summary = helpers.read_json(str(workdir / "results.json"))
  assert summary["config"]["dataset"]["image_size"] == 48
  teacher = summary["rows"][0]
  assert (teacher["stage"], teacher["model"]) == ("teacher", "resnet18")
  assert not (workdir / "teacher").exists()  # imported, not trained
