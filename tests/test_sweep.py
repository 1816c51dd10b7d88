"""Vectorised sweeps: a vmapped group of cells equals the same cells run one
by one, writes the same files, resumes, and a study can ask for it."""
import glob
import os

import jax
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax.data import datasets as data
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.study import runner as study
from kd_jax.train import pipeline as train
from kd_jax.train import sharding
from kd_jax.train import sweep
from kd_jax.train import teacher_cache
from tests import helpers


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
  return helpers.train_digits_teacher(tmp_path_factory.mktemp("sweep_teacher"))


def _cells(teacher_dir, method, cells, **extra):
  return [helpers.tiny_config(
      f"dataset=digits,method={method},{a}", scratch_baseline=False,
      **{"teacher.checkpoint": teacher_dir, "teacher.name": "simple_cnn",
         "data_seed": 0, **extra}) for a in cells]


def _poison_teacher_cache(config, teacher_dir, rows):
  """Computes the teacher cache of `config` and writes NaN into the cached
  training logits of `rows`: a teacher that fails on a few inputs."""
  ds = data.load(config)
  mesh = sharding.make_mesh()
  teacher = train.load_frozen(config_lib.read_specs(config), ds, mesh, teacher_dir)
  teacher_cache.load_or_compute(config_lib.read_specs(config), ds, type(teacher.model).__name__,
                                teacher, mesh)
  (path,) = glob.glob(os.path.join(config.teacher.cache_dir, "*", "train.npy"))
  logits = np.load(path)
  logits[rows] = np.nan
  np.save(path, logits)


def _params(workdir):
  return helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "best"), "model")[1]


def _registry_case(name):
  """Every vmappable registry entry: two cells that differ in each knob it
  reads (T, alpha, the CTKD schedule, its own sweepable fields) and seed,
  logit standardisation on where it applies."""
  m = methods.get(name)
  a, b = ["seed=0"], ["seed=1"]
  if m.temperature == "fixed":
    a, b = a + ["T=2"], b + ["T=4"]
  if m.alpha:
    a, b = a + ["alpha=0.5"], b + ["alpha=0.9"]
  if m.learns_temperature:
    a, b = a + ["schedule=cosine"], b + ["schedule=linear"]
  for f in m.fields:
    if f.sweep:
      a, b = a + [f"kd.{f.name}={f.default}"], b + [f"kd.{f.name}={f.default / 2}"]
  extra = {"kd.logit_standardization": True} if m.logit_standardization else {}
  if m.learns_temperature:  # the helper's T=2 would be a fixed T
    extra["kd.temperature"] = config_lib.DEFAULT_TEMPERATURE
  return (name, [",".join(a), ",".join(b)], 2, False, extra)


EXPLICIT = ("ctkd", "vanilla", "dkd", "none")


@pytest.mark.parametrize("method,cells,chunk,flip,extra", [
    # one cell per call (the CPU default), cached teacher logits
    ("ctkd", ["schedule=cosine,seed=0", "schedule=linear,seed=1"], 0, False,
     {"kd.temperature": 4.0}),
    # one cell per call with augmentation, no cache: one live teacher
    # forward per step shared by both calls
    ("vanilla", ["T=2,alpha=0.5,seed=0", "T=4,alpha=0.9,seed=1"], 1, True,
     {"teacher.cache_dir": ""}),
    # augmentation with the cache on: the augmented batches' cached logits
    ("vanilla", ["T=2,alpha=0.5,seed=0", "T=4,alpha=0.9,seed=1"], 1, True, {}),
    # bf16 compute in both, with the live teacher (also in bf16)
    ("vanilla", ["T=2,alpha=0.5,seed=0", "T=4,alpha=0.9,seed=1"], 2, True,
     {"mixed_precision": True, "teacher.cache_dir": ""}),
    ("dkd", ["T=2,seed=0", "T=4,seed=1"], 2, False, {"mixed_precision": True}),
    ("none", ["seed=0", "seed=1"], 2, False, {"mixed_precision": True}),
    # the non-finite guard: the teacher's cached logits are NaN for a few
    # training images, so the steps whose batch holds one are skipped
    ("vanilla", ["T=2,alpha=0.5,seed=0", "T=4,alpha=0.9,seed=1"], 2, False,
     {"nan_policy": "skip"}),
  # both cells in one vmap call (what GPUs run), for every vmappable method;
  # those the cases above already run vmapped are slow (the default budget)
] + [_registry_case(name) if name not in EXPLICIT else
     pytest.param(*_registry_case(name), marks=pytest.mark.slow)
     for name in methods.VMAPPABLE])
def test_vmapped_pair_equals_two_separate_runs(teacher_dir, tmp_path, method, cells,
                                               chunk, flip, extra):
  configs = _cells(teacher_dir, method, cells, **{
      "kd.lambda_min": 0.3, "dataset.random_flip": flip,
      "teacher.cache_dir": str(tmp_path / "cache"), **extra})
  if "nan_policy" in extra:
    _poison_teacher_cache(configs[0], teacher_dir, rows=[3, 70])
  separate = [train.train_and_evaluate(c, str(tmp_path / f"sep{i}"))
              for i, c in enumerate(configs)]
  vmapped = sweep.train_group(configs, [str(tmp_path / f"vm{i}") for i in range(2)],
                              vmap_chunk=chunk)
  skipped = [r["stages"]["student"]["skipped_nonfinite_steps"] for r in separate]
  assert skipped == [r["stages"]["student"]["skipped_nonfinite_steps"]
                     for r in vmapped]
  if "nan_policy" in extra:  # some steps skipped, not all
    assert 0 < skipped[0] < separate[0]["stages"]["student"]["steps"]
    assert skipped[0] == skipped[1]
  for i in range(2):
    a, b = _params(str(tmp_path / f"sep{i}")), _params(str(tmp_path / f"vm{i}"))
    assert jax.tree.structure(a) == jax.tree.structure(b)
    # DIST's Pearson terms (T^2-scaled), and a learned T on z-scored
    # logits, carry the vmapped program's other fusion-order rounding into
    # gradients near zero, which Adam normalises up to step size: a few
    # weights then differ by ~1e-5.
    loose = method == "dist" or (methods.get(method).learns_temperature and
                                 extra.get("kd.logit_standardization"))
    atol = 1e-4 if loose else 1e-5
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=atol)
    s_res, v_res = separate[i]["stages"]["student"], vmapped[i]["stages"]["student"]
    assert v_res["test"]["accuracy"] == pytest.approx(s_res["test"]["accuracy"], abs=1e-9)
    assert v_res["best_epoch"] == s_res["best_epoch"]
    assert v_res["vmapped_with"] == 2
    assert v_res["teacher_cache"] is (not flip and method != "none")
    if method == "ctkd":  # the learned T followed each cell's own schedule
      assert v_res["final_temperature"] == pytest.approx(
          s_res["final_temperature"], rel=1e-5)
    # Same files as a separate run, same config (with the group's data_seed).
    for name in ("config.json", "results.json", "student/results.json",
                 "student/logs/metrics.jsonl"):
      assert os.path.exists(tmp_path / f"vm{i}" / name), name
    assert helpers.read_json(tmp_path / f"vm{i}" / "config.json") == \
        helpers.read_json(tmp_path / f"sep{i}" / "config.json")
  views = glob.glob(str(tmp_path / "cache" / "views-*" / "epoch-*.npy"))
  assert bool(views) == (flip and "teacher.cache_dir" not in extra)
  if method == "ctkd":
    t = [r["final_temperature"] for r in (v["stages"]["student"] for v in vmapped)]
    assert t[0] != t[1]


def test_finished_group_is_skipped_and_bad_groups_refused(teacher_dir, tmp_path):
  configs = _cells(teacher_dir, "vanilla", ["T=2", "T=3"])
  dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
  first = sweep.train_group(configs, dirs)
  mtime = os.path.getmtime(os.path.join(dirs[0], "results.json"))
  assert sweep.train_group(configs, dirs) == first
  assert os.path.getmtime(os.path.join(dirs[0], "results.json")) == mtime
  with pytest.raises(UserError, match="may differ only in"):
    sweep.train_group(_cells(teacher_dir, "vanilla", ["T=2", "student=tiny_cnn"]),
                      [str(tmp_path / "c"), str(tmp_path / "d")])
  with pytest.raises(UserError, match="cannot be vmapped"):
    sweep.train_group(_cells(teacher_dir, "dml", ["seed=0", "seed=1"]),
                      [str(tmp_path / "e"), str(tmp_path / "f")])
  assert not os.path.exists(tmp_path / "c")  # nothing written when refused


def test_study_runs_vmapped_groups(tmp_path):
  s = study.Study(os.path.join(helpers.REPO, "configs", "quickstart_study.py"),
                  "runlocal", str(tmp_path / "study"))
  groups = study.vmap_groups(s, s.cells())
  # per student and method, the two seeds form one group
  assert sorted(len(g) for g in groups) == [2, 2, 2, 2]
  assert study.run(s, vmap=True) == 0
  for cell in s.cells():
    res = helpers.read_json(os.path.join(cell.workdir, "results.json"))
    assert res["stages"]["student"]["vmapped_with"] == 2
    assert res["config"]["data_seed"] == 0  # the group's data order
