"""The teacher's cached logits of augmented batches (teacher_cache.
AugmentedViews): the same student as with the live teacher, the logits of
exactly the batch the step augments, shared by the next run."""
import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from kd_jax.train import step
from kd_jax.train import teacher_cache
from tests import helpers

AUG = {"dataset.random_flip": True, "dataset.random_crop": True}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  return helpers.train_digits_teacher(tmp_path_factory.mktemp("views_teacher"))


def _config(teacher_dir, cache_dir, arg=""):
  return helpers.tiny_config(
      "dataset=digits,method=vanilla" + arg, scratch_baseline=False,
      **{"teacher.checkpoint": teacher_dir, "teacher.name": "simple_cnn",
         "teacher.cache_dir": cache_dir, **AUG})


@pytest.fixture(scope="module")
def runs(teacher_dir, tmp_path_factory):
  root = tmp_path_factory.mktemp("views")
  cache = str(root / "cache")
  out = {name: train.train_and_evaluate(_config(teacher_dir, c), str(root / name))
         for name, c in (("live", ""), ("views", cache))}
  return root, cache, out


def _params(workdir):
  return helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "best"), "model")[1]


def test_views_give_the_same_student_as_the_live_teacher(runs):
  root, _, out = runs
  assert out["views"]["rows"] == out["live"]["rows"]
  for x, y in zip(jax.tree.leaves(_params(str(root / "live"))),
                  jax.tree.leaves(_params(str(root / "views")))):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_views_hold_the_logits_of_each_augmented_batch(runs, teacher_dir):
  _, cache, out = runs
  c = _config(teacher_dir, cache)
  files = sorted(glob.glob(os.path.join(cache, "views-*", "epoch-*.npy")))
  epochs = out["views"]["stages"]["student"]["epochs_run"]
  spe = c.max_steps_per_epoch
  assert [os.path.basename(f) for f in files] == [
      f"epoch-{e}.npy" for e in range(epochs)]
  cached = np.load(files[1])
  assert cached.shape == (spe, c.batch_size, 10)
  # Recomputed here: batch s of epoch 1, augmented as step spe + s.
  ds = data.load(c)
  mesh = sharding.make_mesh()
  teacher = train.load_frozen(config_lib.read_specs(c), ds, mesh, teacher_dir)
  spec = step.make_spec(config_lib.read_specs(c), models.get_model("simple_cnn", num_classes=10),
                        "vanilla", steps_per_epoch=spe, teacher=teacher.model)
  batches = data.train_batches(ds.train, global_batch=c.batch_size,
                               seed=config_lib.data_seed(c), epoch=1, num_steps=spe,
                               image_size=c.dataset.image_size)
  for s, b in enumerate(batches):
    direct = step.live_teacher_logits(spec, teacher.variables,
                                      jnp.asarray(b["image"]), spe + s)
    np.testing.assert_allclose(cached[s], direct, rtol=1e-5, atol=1e-5)
    plain = teacher.model.apply(teacher.variables, step.Preprocess.from_spec(config_lib.data_spec(c))(jnp.asarray(b["image"])), train=False)
    assert not np.allclose(cached[s], plain, atol=1e-3)  # augmented views


def test_evaluation_reads_the_cached_logits_of_the_eval_splits(runs, teacher_dir):
  # Validation and test are never augmented: the cache holds the teacher's
  # plain logits of those splits (not of the augmented train split), and the
  # runs' agreement with the teacher equals the live run's (test above).
  _, cache, _ = runs
  (root,) = [d for d in glob.glob(os.path.join(cache, "*"))
             if not os.path.basename(d).startswith("views-")]
  assert sorted(f for f in os.listdir(root) if f.endswith(".npy")) == [
      "test.npy", "val.npy"]
  c = _config(teacher_dir, cache)
  ds = data.load(c)
  teacher = train.load_frozen(config_lib.read_specs(c), ds,
                              sharding.make_mesh(), teacher_dir)
  pre = step.Preprocess.from_spec(config_lib.data_spec(c))
  direct = teacher.model.apply(teacher.variables,
                               pre(jnp.asarray(ds.val.images)), train=False)
  np.testing.assert_allclose(np.load(os.path.join(root, "val.npy")), direct,
                             rtol=1e-5, atol=1e-5)


def test_another_cell_reads_the_views(runs, teacher_dir, tmp_path):
  _, cache, out = runs
  files = sorted(glob.glob(os.path.join(cache, "views-*", "epoch-*.npy")))
  mtimes = [os.path.getmtime(f) for f in files]
  c = _config(teacher_dir, cache, ",alpha=0.9")
  res = train.train_and_evaluate(c, str(tmp_path / "alpha09"))
  assert [os.path.getmtime(f) for f in files] == mtimes
  assert sorted(glob.glob(os.path.join(cache, "views-*", "*.npy"))) == files
  live = train.train_and_evaluate(_config(teacher_dir, "", ",alpha=0.9"),
                                  str(tmp_path / "alpha09_live"))
  assert res["rows"] == live["rows"]


def test_when_views_are_not_cached(teacher_dir):
  c = _config(teacher_dir, "/c")
  assert teacher_cache.views_problem(config_lib.read_specs(c)) is None
  assert teacher_cache.views_problem(config_lib.read_specs(_config(teacher_dir, ""))) == "off"
  c.dataset.random_flip = c.dataset.random_crop = False
  assert teacher_cache.views_problem(config_lib.read_specs(c)).startswith("no augmentation")
  assert teacher_cache.views_problem(config_lib.read_specs(_config(teacher_dir, "/c")),
                                     live="hints") == "hints"


def test_the_step_reads_the_cached_views(runs, teacher_dir, tmp_path):
  # NaN in the cached logits of one batch: with nan_policy='skip' exactly
  # that step is skipped, so the run took its teacher signal from the file.
  _, cache, _ = runs
  poisoned = str(tmp_path / "cache")
  (views_dir,) = glob.glob(os.path.join(cache, "views-*"))
  target = os.path.join(poisoned, os.path.basename(views_dir))
  os.makedirs(target)
  for f in os.listdir(views_dir):
    arr = np.load(os.path.join(views_dir, f))
    if f == "epoch-0.npy":
      arr[2, 5] = np.nan
    np.save(os.path.join(target, f), arr)
  c = _config(teacher_dir, poisoned, ",nan_policy=skip")
  res = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert res["stages"]["student"]["skipped_nonfinite_steps"] == 1
