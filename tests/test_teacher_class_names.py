"""teacher.class_names: a teacher whose outputs are in another order than
the data's classes is reordered once at load time (its classifier's output
units), so its logits are the file's with columns permuted and its test
accuracy is the correctly ordered teacher's; a list that does not name the
data's classes is one line naming both lists, before anything is written."""
import os

# torch (the 'interop' extra) is imported at collection, as the other
# torch tests do: imported late, after this module's teacher run, its import
# segfaults (in triton's extension).
try:
  from safetensors import torch as safetensors_torch
  import torch
  import torchvision
except ImportError:
  torch = None
import jax
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax.data import datasets as data
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from kd_jax.train import teacher_cache
from tests import helpers

DATA_ORDER = ("A2C", "A4C", "PLAX", "PSAX")  # sorted folder names
# The other teacher's outputs: a permutation that is not its own inverse, so
# a map applied the wrong way round fails too.
TEACHER_ORDER = ("PLAX", "A2C", "PSAX", "A4C")
SIZE = 20


def _config(root, checkpoint="", class_names=""):
  """The tiny KD config on the folder, with a frozen tiny_cnn teacher."""
  c = helpers.tiny_config("student=tiny_cnn", scratch_baseline=False)
  c.dataset.name, c.dataset.data_dir = "folder", root
  c.dataset.image_size, c.dataset.eval_limit = SIZE, 0
  c.teacher.name = "tiny_cnn"
  c.teacher.checkpoint, c.teacher.class_names = checkpoint, class_names
  return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(data folder, teacher trained here in the data's order, the same
  teacher saved with its outputs in TEACHER_ORDER)."""
  tmp = tmp_path_factory.mktemp("class_names")
  root = helpers.write_image_folder(
      str(tmp / "echo"), classes=DATA_ORDER, size=SIZE,
      per_split={"train": 24, "val": 6, "test": 10})
  c = _config(root)
  c.kd.method, c.num_epochs = "none", 2
  train.train_and_evaluate(c, str(tmp / "teacher"))
  teacher_dir = str(tmp / "teacher" / "student")
  _, meta = checkpointing.read_model_meta(teacher_dir)
  variables = jax.device_get(train.load_frozen(
      config_lib.read_specs(_config(root)), data.load(_config(root)),
      sharding.make_mesh(), teacher_dir, name="tiny_cnn").variables)
  # The file's output i is class TEACHER_ORDER[i]: the columns of tiny_cnn's
  # classifier ('head': kernel and bias) taken in that order.
  src = [DATA_ORDER.index(n) for n in TEACHER_ORDER]
  variables["params"]["head"] = {
      k: np.asarray(v)[..., src] for k, v in variables["params"]["head"].items()}
  other = str(tmp / "other_order" / "student")
  ck = checkpointing.StageCheckpoints(other)
  ck.save_best(1, variables, meta)
  ck.close()
  return root, teacher_dir, other


def _frozen(root, checkpoint, class_names=""):
  c = _config(root, checkpoint, class_names)
  config_lib.validate(c)
  specs, ds, mesh = config_lib.read_specs(c), data.load(c), sharding.make_mesh()
  return specs, ds, mesh, train.load_frozen(specs, ds, mesh, checkpoint)


def test_mapped_logits_are_the_files_with_columns_permuted(setup, capsys):
  root, teacher_dir, other = setup
  specs, ds, mesh, raw = _frozen(root, other)
  capsys.readouterr()
  _, _, _, mapped = _frozen(root, other, ",".join(TEACHER_ORDER))
  assert ("[teacher] outputs mapped from teacher.class_names PLAX,A2C,PSAX,A4C"
          " to the data's class order A2C,A4C,PLAX,PSAX") in capsys.readouterr().out
  _, _, _, ordered = _frozen(root, teacher_dir)
  logits = {name: teacher_cache.compute_logits(specs, t, ds.test, mesh)
            for name, t in (("raw", raw), ("mapped", mapped),
                            ("ordered", ordered))}
  # Data class j is the file's output TEACHER_ORDER.index(DATA_ORDER[j]).
  perm = np.asarray([TEACHER_ORDER.index(n) for n in DATA_ORDER])
  np.testing.assert_array_equal(logits["mapped"], logits["raw"][:, perm])
  np.testing.assert_array_equal(logits["mapped"], logits["ordered"])
  assert not np.array_equal(logits["raw"], logits["ordered"])


def test_mapped_teacher_has_the_ordered_teachers_test_accuracy(setup):
  root, teacher_dir, other = setup
  rows = {}
  for name, path, names in (("ordered", teacher_dir, ""), ("raw", other, ""),
                            ("mapped", other, ",".join(TEACHER_ORDER))):
    specs, ds, mesh, teacher = _frozen(root, path, names)
    rows[name] = train.evaluate_loaded_teacher(specs, ds, mesh, teacher)["test"]
  assert rows["mapped"] == rows["ordered"]
  # The trained teacher read in the wrong order is worse: the map matters.
  assert rows["raw"]["accuracy"] < rows["ordered"]["accuracy"]


def test_a_list_in_the_datas_order_changes_nothing(setup):
  root, teacher_dir, _ = setup
  _, _, _, plain = _frozen(root, teacher_dir)
  _, _, _, same = _frozen(root, teacher_dir, ",".join(DATA_ORDER))
  for a, b in zip(jax.tree.leaves(plain.variables),
                  jax.tree.leaves(same.variables)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_list_that_is_not_the_datas_is_one_line(setup, tmp_path):
  root, _, other = setup
  r = helpers.run_cli(
      "--config=configs/vanilla_kd_mobilenet_v3_small.py:runlocal",
      "--config.student.name=tiny_cnn", "--config.teacher.name=tiny_cnn",
      f"--config.teacher.checkpoint={other}",
      "--config.teacher.class_names=A4C,A2C,PSAX,PLAXX",
      "--config.dataset.name=folder", f"--config.dataset.data_dir={root}",
      f"--config.dataset.image_size={SIZE}", f"--workdir={tmp_path / 'run'}")
  assert r.returncode == 2, r.stderr[-2000:]
  errors = [l for l in r.stderr.splitlines() if l.startswith("kd_jax: error:")]
  assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
  assert ("config.teacher.class_names=A4C,A2C,PSAX,PLAXX does not name the "
          "data's classes A2C,A4C,PLAX,PSAX: it lacks PLAX; the data has no "
          "PLAXX") in errors[0]
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("change, words", [
    (dict(class_names="A2C,A4C,A2C,PLAX"), "A2C more than once"),
    (dict(checkpoint=""), "the teacher this run trains"),
    (dict(checkpoint="", logits=__file__), "config.teacher.logits must"),
])
def test_a_list_the_run_cannot_use_is_refused(change, words):
  c = _config("/nonexistent", checkpoint=__file__, class_names="A4C,A2C,PLAX")
  c.teacher.update(change)
  with pytest.raises(UserError, match=words):
    config_lib.validate(c)


def test_subclass_distillation_refuses_a_list():
  c = _config("/nonexistent", checkpoint=__file__, class_names="A4C,A2C,PLAX")
  c.kd.method = "subclass"
  with pytest.raises(UserError, match="logits per class"):
    config_lib.validate(c)


def test_a_run_without_a_teacher_ignores_the_list():
  c = _config("/nonexistent", class_names="A4C,A2C,PLAX")
  c.kd.method = "none"
  c.dataset.name = "digits"
  config_lib.validate(c)


@pytest.mark.skipif(torch is None, reason="needs the 'interop' extra (torch)")
def test_an_imported_torchvision_teacher_is_mapped_too(tmp_path):
  """The foreign-file route (with BatchNorm statistics beside the head):
  the file in TEACHER_ORDER, mapped, gives the logits of the file in the
  data's order."""
  root = helpers.write_image_folder(
      str(tmp_path / "echo"), classes=DATA_ORDER, size=32,
      per_split={"train": 4, "val": 2, "test": 5})
  torch.manual_seed(0)
  state = torchvision.models.resnet18(weights=None, num_classes=4).state_dict()
  src = [DATA_ORDER.index(n) for n in TEACHER_ORDER]
  other = dict(state, **{k: state[k][src].clone()
                         for k in ("fc.weight", "fc.bias")})
  logits = []
  for name, tensors, names in (("ordered", state, ""),
                               ("other", other, ",".join(TEACHER_ORDER))):
    path = str(tmp_path / f"{name}.safetensors")
    safetensors_torch.save_file(tensors, path)
    c = _config(root, f"torchvision:{path}", names)
    c.teacher.name, c.dataset.image_size = "resnet18", 32
    config_lib.validate(c)
    specs, ds, mesh = config_lib.read_specs(c), data.load(c), sharding.make_mesh()
    teacher = train.load_frozen(specs, ds, mesh, specs.teacher.checkpoint)
    logits.append(teacher_cache.compute_logits(specs, teacher, ds.test, mesh))
  np.testing.assert_array_equal(logits[1], logits[0])
