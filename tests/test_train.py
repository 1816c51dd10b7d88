"""End-to-end training on tiny configs: mock TFDS, image folders, teachers."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import f1_score
import tensorflow_datasets as tfds

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.errors import UserError
from kd_jax.train import checkpointing
from kd_jax.train import model_init
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from tests import helpers


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
  """One tiny quickstart-style run (teacher + scratch + vanilla KD) on mock MNIST."""
  workdir = str(tmp_path_factory.mktemp("mnist_run"))
  c = helpers.tiny_config(**{"dataset.name": "mnist",
                             "dataset.data_dir": workdir})
  with tfds.testing.mock_data(num_examples=160):
    summary = train.train_and_evaluate(c, workdir)
    ds = data.load(c)
  return c, workdir, summary, ds


def test_run_writes_table_results_and_checkpoints(mnist_run):
  c, workdir, summary, ds = mnist_run
  assert [r["stage"] for r in summary["rows"]] == [
      "teacher", "scratch", "student (vanilla)"]
  saved = helpers.read_json(os.path.join(workdir, "results.json"))
  assert saved["rows"] == summary["rows"]
  for role in ("teacher", "scratch", "student"):
    res = helpers.read_json(os.path.join(workdir, role, "results.json"))
    assert res["steps"] == c.num_epochs * c.max_steps_per_epoch
    assert len(res["history"]) == c.num_epochs
    # The confusion matrix counts every test example exactly once.
    assert np.sum(res["test"]["confusion"]) == len(ds.test)
    assert os.path.isdir(os.path.join(workdir, role, "checkpoints", "best"))
    assert os.path.exists(os.path.join(workdir, role, "logs", "metrics.jsonl"))
  # Parameter counts and MB follow from the architectures.
  row = {r["stage"]: r for r in summary["rows"]}
  assert row["teacher"]["params"] == models.count_params(c.teacher.name, 10, c.dataset.image_size)
  assert row["student (vanilla)"]["params"] == models.count_params(c.student.name, 10, c.dataset.image_size)
  assert row["student (vanilla)"]["size_mb"] == pytest.approx(
      row["student (vanilla)"]["params"] * 4 / 1e6)


def test_reported_metrics_match_an_independent_evaluation(mnist_run):
  c, workdir, summary, ds = mnist_run
  _, model_vars = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "best"), "model")
  model = models.get_model(c.student.name, num_classes=10)
  # Preprocess by hand in numpy: [0,1] -> grey to RGB -> resize -> (x-.5)/.5.
  x = ds.test.images.astype(np.float32) / 255.0
  x = np.repeat(x, 3, axis=-1)
  assert c.dataset.image_size == 28  # mock MNIST is 28x28: no resize
  x = (x - 0.5) / 0.5
  pred = np.asarray(model.apply(model_vars, jnp.asarray(x), train=False)).argmax(-1)
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert res["test"]["accuracy"] == pytest.approx(np.mean(pred == ds.test.labels), abs=1e-6)
  assert res["test"]["macro_f1"] == pytest.approx(
      f1_score(ds.test.labels, pred, average="macro", zero_division=0), abs=1e-6)


def test_teacher_is_not_saved_with_the_student(mnist_run):
  c, workdir, _, _ = mnist_run
  _, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  student_shapes = models.init_shapes(c.student.name, 10, 28)["params"]
  assert set(state["params"]) == {"student"}
  assert jax.tree.structure(state["params"]["student"]) == jax.tree.structure(
      student_shapes)
  teacher_files = os.listdir(os.path.join(workdir, "teacher", "checkpoints", "best"))
  assert teacher_files  # the teacher lives in its own stage directory only


def test_rerun_skips_finished_stages(mnist_run, capsys):
  c, workdir, summary, _ = mnist_run
  with tfds.testing.mock_data(num_examples=160):
    again = train.train_and_evaluate(c, workdir)
  assert again["rows"] == summary["rows"]
  assert capsys.readouterr().out.count("already finished") == 3


def test_loaded_teacher_and_mismatches(mnist_run, tmp_path):
  c, workdir, summary, _ = mnist_run
  teacher_dir = os.path.join(workdir, "teacher")
  # A matching teacher is loaded, evaluated and frozen; no teacher stage runs.
  c2 = helpers.tiny_config(**{"dataset.name": "mnist", "dataset.data_dir": workdir,
                              "teacher.checkpoint": teacher_dir,
                              "scratch_baseline": False, "kd.method": "conditional"})
  out = str(tmp_path / "loaded")
  with tfds.testing.mock_data(num_examples=160):
    s2 = train.train_and_evaluate(c2, out)
  assert not os.path.exists(os.path.join(out, "teacher"))
  assert s2["stages"]["teacher"]["method"] == "loaded"
  assert s2["stages"]["teacher"]["test"]["accuracy"] == pytest.approx(
      summary["stages"]["teacher"]["test"]["accuracy"])
  # Wrong class count (a 3-class image folder) and wrong architecture: refused
  # before the workdir is created.
  folder = helpers.write_image_folder(str(tmp_path / "imgs"))
  bad_dir = str(tmp_path / "bad")
  c3 = helpers.tiny_config(**{"dataset.name": "folder", "dataset.data_dir": folder,
                              "teacher.checkpoint": teacher_dir})
  with pytest.raises(UserError, match="10 classes \\(the data has 3\\)"):
    train.train_and_evaluate(c3, bad_dir)
  c4 = helpers.tiny_config(**{"dataset.name": "mnist", "dataset.data_dir": workdir,
                              "teacher.checkpoint": teacher_dir,
                              "teacher.name": "tiny_cnn"})
  with tfds.testing.mock_data(num_examples=160):
    with pytest.raises(UserError, match=f"architecture '{c.teacher.name}'"):
      train.train_and_evaluate(c4, bad_dir)
  c5 = helpers.tiny_config(**{"dataset.name": "mnist", "dataset.data_dir": workdir,
                              "teacher.checkpoint": teacher_dir,
                              "dataset.image_size": 32})
  with tfds.testing.mock_data(num_examples=160):
    with pytest.raises(UserError, match="input 28x28"):
      train.train_and_evaluate(c5, bad_dir)
  assert not os.path.exists(bad_dir)


def test_workdir_with_a_different_config_is_refused(mnist_run):
  c, workdir, _, _ = mnist_run
  c2 = helpers.tiny_config(**{"dataset.name": "mnist", "dataset.data_dir": workdir,
                              "kd.temperature": c.kd.temperature + 1.0})
  before = sorted(os.listdir(workdir))
  with tfds.testing.mock_data(num_examples=160):
    with pytest.raises(UserError, match="differs in kd.temperature"):
      train.train_and_evaluate(c2, workdir)
  assert sorted(os.listdir(workdir)) == before


def test_image_folder_ctkd_run(tmp_path):
  root = helpers.write_image_folder(str(tmp_path / "echo"))
  c = helpers.tiny_config(**{"dataset.name": "folder", "dataset.data_dir": root,
                             "kd.method": "ctkd", "scratch_baseline": False,
                             "kd.temperature": 4.0,  # CTKD learns T
                             "kd.schedule": "linear", "kd.epoch_cap": 1,
                             "num_epochs": 2})
  c.dataset.train_limit = 0
  c.dataset.eval_limit = 0
  summary = train.train_and_evaluate(c, str(tmp_path / "wd"))
  ds = data.load(c)
  assert ds.class_names == ("A2C", "A4C", "PLAX")
  assert (len(ds.train), len(ds.val), len(ds.test)) == (120, 36, 36)
  student = summary["stages"]["student"]
  assert np.sum(student["test"]["confusion"]) == 36
  # The learned temperature is logged every step and stays in its range.
  rows = [r for r in map(eval_json, open(tmp_path / "wd" / "student" / "logs" / "metrics.jsonl"))
          if "temperature" in r]
  assert [r["step"] for r in rows] == list(range(1, student["steps"] + 1))
  temps = np.array([r["temperature"] for r in rows])
  assert np.all((temps > 1.0) & (temps < 21.0))
  # Epoch 1 has lambda = 0 (frozen T); epoch 2 has lambda = 1 and T moves.
  spe = c.max_steps_per_epoch
  start = 1 + 20 / (1 + np.exp(-c.kd.init_raw))  # the authors' start, ~15.6
  assert np.allclose(temps[:spe], start)
  assert not np.isclose(temps[-1], start)
  # The logged T is the one each step used; the final T is one update later.
  assert 1.0 < student["final_temperature"] < 21.0


def eval_json(line):
  import json
  return json.loads(line)


def test_folder_errors(tmp_path):
  c = helpers.tiny_config(**{"dataset.name": "folder",
                             "dataset.data_dir": str(tmp_path / "missing")})
  with pytest.raises(UserError, match="does not exist"):
    data.load(c)
  root = helpers.write_image_folder(str(tmp_path / "d"), per_split={"train": 4, "test": 4})
  os.rename(os.path.join(root, "test", "PLAX"), os.path.join(root, "test", "PSAS"))
  c.dataset.data_dir = root
  with pytest.raises(UserError, match="differ from train's"):
    data.load(c)
  os.rename(os.path.join(root, "test", "PSAS"), os.path.join(root, "test", "PLAX"))
  with open(os.path.join(root, "train", "A2C", "broken.png"), "wb") as f:
    f.write(b"not an image")
  ds = data.load(c)  # listing reads no file; a batch that reads it refuses
  with pytest.raises(UserError, match="corrupt or non-image file .*broken.png"):
    for s in (ds.train, ds.val):
      list(data.eval_batches(s, global_batch=4, image_size=8))


def test_init_is_compiled_once_per_model_and_size_and_gives_models_init():
  c = config_lib.base_config()
  c.dataset.image_size = 28
  mesh = sharding.make_mesh()
  first = model_init.make_init(models.get_model("mlp_small", num_classes=3), 28, mesh)
  n = len(model_init.COMPILED_INITS)
  again = model_init.make_init(models.get_model("mlp_small", num_classes=3), 28, mesh)
  assert len(model_init.COMPILED_INITS) == n  # the same compiled function, no new entry
  rng = jax.random.PRNGKey(5)
  ref = models.init(models.get_model("mlp_small", num_classes=3), rng, 28)
  for got in (first(rng)[0], again(rng)[0]):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref["params"])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  model_init.make_init(models.get_model("mlp_small", num_classes=4), 28, mesh)
  assert len(model_init.COMPILED_INITS) == n + 1  # another class count: another entry


def test_a_stage_resumes_only_its_own_checkpoint(tmp_path):
  """A killed run whose checkpoints outlive its deleted workdir: the next
  run in that path, on other data of the same shapes, must not resume the
  stranger's train state."""
  workdir = str(tmp_path / "run")
  first = helpers.tiny_config("dataset=digits,method=none",
                              scratch_baseline=False, num_epochs=1)
  train.train_and_evaluate(first, workdir)
  for path in ("config.json", "results.json", "student/results.json"):
    os.remove(os.path.join(workdir, path))
  other = helpers.tiny_config("dataset=digits,method=none",
                              scratch_baseline=False, num_epochs=1,
                              **{"dataset.train_limit": 96})
  ds = data.load(other)
  mine = checkpointing.fingerprint(config_lib.read_specs(other), ds, "student", other.student.name)
  with pytest.raises(UserError) as e:
    train.train_and_evaluate(other, workdir)
  msg = str(e.value)
  assert "\n" not in msg and mine in msg and "use another --workdir" in msg
  assert not os.path.exists(os.path.join(workdir, "config.json"))  # refused first
  theirs = checkpointing.fingerprint(config_lib.read_specs(first), data.load(first), "student",
                             first.student.name)
  assert theirs in msg and theirs != mine
  # The same config resumes its own checkpoint (its stage results removed).
  assert train.train_and_evaluate(first, workdir)["stages"]["student"]
