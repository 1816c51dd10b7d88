"""dataset.transfer_limit: the distilled stages train on a transfer set, the
teacher on every training image (Hinton et al. 2015, section 3)."""
import os

import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax.data import datasets as data
from kd_jax.errors import UserError
from kd_jax.study import runner as study
from kd_jax.train import pipeline as train
from tests import helpers

CLASSES = ("A2C", "A4C", "PLAX", "PSAX")


def _folder(tmp_path, per_class_train=20):
  return helpers.write_image_folder(
      str(tmp_path / "f"), classes=CLASSES, size=10,
      per_split={"train": per_class_train, "val": 2, "test": 2})  # per class


def test_students_get_a_stratified_transfer_set_and_the_teacher_all(tmp_path):
  c = helpers.tiny_config(**{"dataset.name": "folder",
                             "dataset.data_dir": _folder(tmp_path),
                             "dataset.train_limit": 0,
                             "dataset.transfer_limit": 24})
  ds = data.load(c)
  assert len(ds.train) == 80
  assert data.stage_data(ds, "teacher", c.dataset.transfer_limit) is ds
  full_paths = set(ds.train.paths)
  for role in ("student", "scratch", "assistant", "hint"):
    part = data.stage_data(ds, role, c.dataset.transfer_limit)
    assert len(part.train) == 24
    assert np.bincount(part.train.labels).tolist() == [6, 6, 6, 6]
    assert set(part.train.paths) <= full_paths
    assert part.val is ds.val and part.test is ds.test
    # The same sample for every seed and every call: paired comparisons.
    c2 = helpers.tiny_config(**{"dataset.name": "folder",
                                "dataset.data_dir": c.dataset.data_dir,
                                "dataset.train_limit": 0,
                                "dataset.transfer_limit": 24, "seed": 3})
    assert list(data.stage_data(ds, role, c2.dataset.transfer_limit).train.paths) == list(part.train.paths)
    assert data.stage_data(part, role, c.dataset.transfer_limit).train is part.train  # idempotent
  c.dataset.transfer_limit = 0
  assert data.stage_data(ds, "student", c.dataset.transfer_limit) is ds


@pytest.mark.parametrize("field", ["transfer_limit", "train_limit", "eval_limit"])
def test_a_negative_limit_is_refused(field):
  c = helpers.tiny_config(**{f"dataset.{field}": -1})
  with pytest.raises(UserError, match=rf"config.dataset.{field}=-1 must be >= 0"):
    config_lib.validate(c)


def test_a_run_trains_the_teacher_on_all_and_the_students_on_the_transfer_set(
    tmp_path):
  workdir = str(tmp_path / "run")
  c = helpers.tiny_config(**{"dataset.name": "folder",
                             "dataset.data_dir": _folder(tmp_path, 16),
                             "dataset.train_limit": 0,
                             "dataset.transfer_limit": 20,
                             "max_steps_per_epoch": 0, "batch_size": 8})
  train.train_and_evaluate(c, workdir)
  res = {s: helpers.read_json(os.path.join(workdir, s, "results.json"))
         for s in ("teacher", "scratch", "student")}
  assert res["teacher"]["train_examples"] == 64
  assert res["scratch"]["train_examples"] == res["student"]["train_examples"] == 20
  # Steps follow the data each stage saw: 64 / 8 and 20 / 8 (rounded up
  # or down by data.steps_per_epoch) per epoch.
  epochs = lambda r: r["epochs_run"]
  assert res["teacher"]["steps"] / epochs(res["teacher"]) == data.steps_per_epoch(64, 8, 0)
  assert res["student"]["steps"] / epochs(res["student"]) == data.steps_per_epoch(20, 8, 0)
  # An unfinished student resumes: its checkpoint's fingerprint (stage data
  # included) is its own.
  os.remove(os.path.join(workdir, "student", "results.json"))
  again = train.train_and_evaluate(c, workdir)
  assert [r["test_accuracy"] for r in again["rows"]] == [
      res[s]["test"]["accuracy"] for s in ("teacher", "scratch", "student")]


def test_a_study_trains_its_teacher_on_every_image():
  s = study.Study(os.path.join(helpers.REPO, "configs", "repro",
                               "mnist_subclass_kd.py"),
                  "seeds=1,dataset.transfer_limit=100")
  assert all(c.dataset.transfer_limit == 100 for c in s.configs)
  assert s.teacher_cell().overrides["dataset.transfer_limit"] == 0
