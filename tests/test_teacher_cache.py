"""Teacher-output cache (same student as without it; keyed so a change of
teacher, data or preprocessing never reads stale logits) and bf16 training."""
import dataclasses
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
from kd_jax.train import stage
from kd_jax.train import step
from kd_jax.train import teacher_cache
from tests import helpers


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cache")
  out = {}
  for name, cache_dir in (("live", ""), ("cached", str(root / "tcache"))):
    c = helpers.tiny_config("dataset=digits", **{"teacher.cache_dir": cache_dir})
    workdir = str(root / name)
    out[name] = (c, workdir, train.train_and_evaluate(c, workdir))
  return root, out


def test_cached_teacher_gives_the_same_student(runs):
  _, out = runs
  (_, live_dir, live), (_, cached_dir, cached) = out["live"], out["cached"]
  assert cached["rows"] == live["rows"]
  a = helpers.restore_raw(os.path.join(live_dir, "student", "checkpoints", "best"), "model")[1]
  b = helpers.restore_raw(os.path.join(cached_dir, "student", "checkpoints", "best"), "model")[1]
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  res = helpers.read_json(os.path.join(cached_dir, "student", "results.json"))
  assert res["teacher_cache"] is True
  assert helpers.read_json(os.path.join(live_dir, "student", "results.json"))[
      "teacher_cache"] is False


def test_cache_holds_the_teachers_logits_for_every_example(runs):
  _, out = runs
  c, workdir, _ = out["cached"]
  (key_dir,) = os.listdir(c.teacher.cache_dir)
  ds = data.load(c)
  mesh = sharding.make_mesh()
  teacher = train.load_frozen(config_lib.read_specs(c), ds, mesh, workdir)
  for name in teacher_cache.SPLITS:
    cached = np.load(os.path.join(c.teacher.cache_dir, key_dir, name + ".npy"))
    split = getattr(ds, name)
    x = step.Preprocess.from_spec(config_lib.data_spec(c))(jnp.asarray(split.images))
    direct = np.asarray(teacher.model.apply(teacher.variables, x, train=False))
    assert cached.shape == (len(split), 10)
    np.testing.assert_allclose(cached, direct, rtol=1e-5, atol=1e-5)
  meta = helpers.read_json(os.path.join(c.teacher.cache_dir, key_dir, "meta.json"))
  assert meta["splits"]["train"] == [len(ds.train), 10]


def test_cache_key_changes_with_teacher_data_and_preprocessing(runs):
  _, out = runs
  c, workdir, _ = out["cached"]
  ds = data.load(c)
  mesh = sharding.make_mesh()
  teacher = train.load_frozen(config_lib.read_specs(c), ds, mesh, workdir)
  key = teacher_cache.cache_key(config_lib.read_specs(c), ds, "SimpleCNN", teacher)
  assert key == teacher_cache.cache_key(config_lib.read_specs(c), data.load(c), "SimpleCNN", teacher)
  other_teacher = teacher._replace(variables=jax.tree.map(
      lambda a: a * 1.0001, teacher.variables))
  c2 = helpers.tiny_config("dataset=digits,image_size=24")
  images = ds.train.images.copy()
  images[0, 0, 0, 0] ^= 1  # one pixel of one training image
  ds3 = dataclasses.replace(ds, train=dataclasses.replace(ds.train, images=images))
  keys = {key, teacher_cache.cache_key(config_lib.read_specs(c), ds, "SimpleCNN", other_teacher),
          teacher_cache.cache_key(config_lib.read_specs(c2), ds, "SimpleCNN", teacher),
          teacher_cache.cache_key(config_lib.read_specs(c), ds3, "SimpleCNN", teacher),
          teacher_cache.cache_key(config_lib.read_specs(c), ds, "TinyCNN", teacher)}
  assert len(keys) == 5


def test_cache_is_reused_and_refused_with_augmentation(runs, tmp_path):
  root, out = runs
  c, _, _ = out["cached"]
  (key_dir,) = os.listdir(c.teacher.cache_dir)
  npy = os.path.join(c.teacher.cache_dir, key_dir, "train.npy")
  mtime = os.path.getmtime(npy)
  # Another cell (here: another alpha) reuses the cached logits.
  c2 = helpers.tiny_config("dataset=digits,alpha=0.9", **{
      "teacher.cache_dir": c.teacher.cache_dir,
      "teacher.checkpoint": os.path.join(str(root), "cached")})
  res = train.train_and_evaluate(c2, str(tmp_path / "alpha09"))
  assert res["stages"]["student"]["teacher_cache"] is True
  assert os.path.getmtime(npy) == mtime
  c3 = helpers.tiny_config("dataset=digits", **{"teacher.cache_dir": "/x",
                                               "dataset.random_flip": True})
  assert teacher_cache.usable(config_lib.read_specs(c3)) == (
      False, "augmentation changes the teacher's input every epoch")


@pytest.mark.parametrize("stages", [1, 2])
def test_cached_hint_features_give_the_same_fitnets_student(tmp_path, stages):
  """FitNets (single-stage, and two-stage whose hint stage uses the
  features): the cached teacher feature trains the same student as the live
  one, and the cache holds the teacher's feature for every training example."""
  arg = ("dataset=digits,method=fitnets,student=tiny_cnn,teacher=simple_cnn,"
         "kd.hint_student_layer=block1,kd.hint_teacher_layer=block1,"
         f"kd.hint_weight=10,kd.hint_stages={stages}")
  cache = str(tmp_path / "tcache")
  live_c = helpers.tiny_config(arg, scratch_baseline=False)
  live = train.train_and_evaluate(live_c, str(tmp_path / "live"))
  teacher_dir = os.path.join(str(tmp_path / "live"), "teacher")
  cached_c = helpers.tiny_config(arg, scratch_baseline=False, **{
      "teacher.cache_dir": cache, "teacher.checkpoint": teacher_dir})
  cached = train.train_and_evaluate(cached_c, str(tmp_path / "cached"))
  assert cached["rows"][1:] == live["rows"][1:]  # hint/student rows
  stage_names = ["hint", "student"] if stages == 2 else ["student"]
  for name in stage_names:
    res = helpers.read_json(tmp_path / "cached" / name / "results.json")
    assert res["teacher_cache"] is True, name
    a = helpers.restore_raw(str(tmp_path / "live" / name / "checkpoints" / "latest"),
                            "state")[1]["params"]
    b = helpers.restore_raw(str(tmp_path / "cached" / name / "checkpoints" / "latest"),
                            "state")[1]["params"]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  (key_dir,) = os.listdir(cache)
  feats = np.load(os.path.join(cache, key_dir, "train.hint-block1.npy"))
  ds = data.load(cached_c)
  teacher = train.load_frozen(config_lib.read_specs(cached_c), ds, sharding.make_mesh(), teacher_dir)
  x = step.Preprocess.from_spec(config_lib.data_spec(cached_c))(jnp.asarray(ds.train.images))
  direct = np.asarray(models.apply_with_features(
      teacher.model, teacher.variables, x, train=False)[1]["block1"])
  assert feats.shape == direct.shape and feats.shape[0] == len(ds.train)
  np.testing.assert_allclose(feats, direct, rtol=1e-5, atol=1e-5)


def test_bf16_training_keeps_f32_params_and_tracks_f32_loss(tmp_path):
  c = helpers.tiny_config("dataset=digits,method=none,student=tiny_cnn")
  ds = data.load(c)
  mesh = sharding.make_mesh()
  losses = {}
  for mp in (False, True):
    c.mixed_precision = mp
    run = stage.Stage(config_lib.read_specs(c), role="student", model_name="tiny_cnn", method="none",
                      stage_dir=str(tmp_path / "unused"), num_epochs=1,
                      learning_rate=c.learning_rate, ds=ds, mesh=mesh)
    tx, state = run.init_state()
    train_step = jax.jit(step.make_train_step(run.spec(), tx))
    batch = next(data.train_batches(ds.train, global_batch=16, seed=0, epoch=0,
                                    num_steps=1, image_size=28))
    new, m = train_step(state, batch, step.hyperparams(config_lib.read_specs(c)), None)
    losses[mp] = float(m["loss"])
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(new.params))
  # bf16 has an 8-bit mantissa: the loss agrees to ~1e-2, not bitwise.
  assert losses[True] == pytest.approx(losses[False], rel=2e-2)
  assert losses[True] != losses[False]  # bf16 was really used
