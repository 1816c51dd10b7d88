"""Every config file: loads, validates, names cells by arg string, has a tiny mode."""
import glob
import os

import pytest

from kd_jax import config_lib
from kd_jax.errors import UserError
from kd_jax.train import pipeline as train
from tests import helpers

CONFIGS = sorted(glob.glob(os.path.join(helpers.REPO, "configs", "*.py"))
                 + glob.glob(os.path.join(helpers.REPO, "configs", "repro", "*.py")))
METHOD_CONFIGS = {"scratch": "none", "vanilla_kd": "vanilla",
                  "conditional_kd": "conditional", "ctkd": "ctkd",
                  "ctkd_instance": "ctkd_instance", "fitnets": "fitnets",
                  "teacher_assistant": "vanilla", "subclass": "subclass",
                  "dkd": "dkd", "dist": "dist",
                  "logit_standardization": "vanilla", "dml": "dml"}


def load(path, arg=None):
  return config_lib.load_config_module(path).get_config(arg)


# Configs that start from pretrained weight files: validation checks the
# files exist (their reading is tested in tests/test_mhist.py).
WEIGHT_CONFIGS = ("mhist_transfer.py",)


def _weights_arg(path, tmp_path):
  mod = config_lib.load_config_module(path)
  for name in (mod.TEACHER_FILE, mod.STUDENT_FILE):
    (tmp_path / name).write_bytes(b"")
  return f"weights_dir={tmp_path}"


def test_one_config_per_method_exists():
  names = [os.path.basename(p) for p in CONFIGS]
  for prefix in METHOD_CONFIGS:
    assert any(n.startswith(prefix + "_") for n in names), prefix
  assert "quickstart.py" in names and "ctkd_ghostnet.py" in names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_validates_full_and_tiny(path, tmp_path):
  extra = ""
  if os.path.basename(path) in WEIGHT_CONFIGS:
    with pytest.raises(UserError, match="no such file"):
      config_lib.validate(load(path, f"weights_dir={tmp_path}"))
    extra = _weights_arg(path, tmp_path)
  c = load(path, extra or None)
  config_lib.validate(c)
  name = os.path.basename(path)
  prefixes = [p for p in METHOD_CONFIGS if name.startswith(p + "_")]
  if prefixes:  # the longest matching prefix names the method
    assert c.kd.method == METHOD_CONFIGS[max(prefixes, key=len)], name
  tiny = load(path, ",".join(filter(None, ["runlocal", extra])))
  config_lib.validate(tiny)
  assert tiny.runlocal and tiny.dataset.train_limit <= 128
  assert tiny.max_steps_per_epoch > 0 and tiny.dataset.image_size <= 32
  assert tiny.student.name == c.student.name  # tiny keeps the student


def test_cell_arg_string_names_one_ablation_cell():
  c = load(os.path.join(helpers.REPO, "configs", "ctkd_ghostnet.py"),
           "schedule=linear,seed=1,T=3,alpha=0.7,kd.epoch_cap=5")
  assert (c.kd.schedule, c.seed, c.kd.temperature, c.kd.alpha, c.kd.epoch_cap) == (
      "linear", 1, 3.0, 0.7, 5)
  assert c.student.name == "ghostnet_100" and c.kd.method == "ctkd"
  assert not c.runlocal


@pytest.mark.parametrize("arg,message", [
    ("T=-1", "config.kd.temperature=-1.0 must be > 0"),
    ("alpha=2", "config.kd.alpha=2.0 must be in [0, 1]"),
    ("schedule=exp", "unknown config.kd.schedule 'exp'"),
    ("method=hinton", "unknown config.kd.method 'hinton'"),
    ("method=fitnets", "method 'fitnets' needs config.kd.hint_student_layer"),
    ("hint_stages=3,kd.hint_student_layer=a,kd.hint_teacher_layer=b",
     "config.kd.hint_stages=3 must be 1"),
    ("method=dml,peers=alexnet", "unknown peer model (config.kd.peers) 'alexnet'"),
    ("method=none,assistants=mlp", "teacher assistants need a teacher"),
    ("student=alexnet", "unknown config.student.name 'alexnet'"),
    ("epochs=0", "config.num_epochs=0 must be a positive integer"),
    ("batch_size=0", "config.batch_size=0 must be a positive integer"),
])
def test_validation_messages(arg, message):
  c = load(os.path.join(helpers.REPO, "configs", "quickstart.py"), arg)
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert message in str(e.value)
  assert "\n" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("path", [
    p for p in CONFIGS if not p.endswith("quickstart.py")
    and os.path.basename(p) not in WEIGHT_CONFIGS],
                         ids=os.path.basename)
def test_method_config_runs_in_tiny_mode(path, tmp_path):
  """Each method config end to end in tiny mode (real GhostNet/ShuffleNet/
  MobileNet compiles: minutes on a CPU, hence slow)."""
  c = load(path, "runlocal,dataset=digits")
  summary = train.train_and_evaluate(c, str(tmp_path))
  assert summary["rows"][-1]["model"] == c.student.name
  assert 0.0 <= summary["rows"][-1]["test_accuracy"] <= 1.0


def test_transfer_methods_study_runs_every_method_or_says_why():
  """configs/repro/fashion_transfer_methods.py is the one-protocol table of
  every method: a user-facing method has a setting or a reason it cannot
  run, and every cell's config validates."""
  from kd_jax.distill import methods
  from kd_jax.study import runner
  path = os.path.join(helpers.REPO, "configs", "repro",
                      "fashion_transfer_methods.py")
  mod = config_lib.load_config_module(path)
  run = {dict(i.split("=") for i in s.split(","))["method"]
         for s in mod.SETTINGS}
  user = {m for m, e in methods.METHODS.items() if e.user_facing}
  assert run | set(mod.NOT_RUN) == user and not run & set(mod.NOT_RUN)
  cells = mod.cells("seeds=1")
  assert len(cells) == len(mod.SETTINGS)
  for arg in cells:
    config_lib.validate(mod.get_config(arg))
  assert len({runner.cell_dirname(a) for a in mod.cells()}) == 5 * len(cells)
