"""Two-phase fine-tuning and starting a stage from earlier weights: the frozen
phase changes the head only, resuming across the phase boundary changes
nothing, a kd_jax run of any method is a teacher, and a head with another
class count is re-initialised."""
import os

import jax
import numpy as np
import pytest

from kd_jax import config_lib
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.train import pipeline as train
from kd_jax.train import preemption
from kd_jax.train import stage
from kd_jax.train import step
from tests import helpers

MESH = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))


def _stage(tmp_path, name="run", **overrides):
  c = helpers.tiny_config("dataset=digits,method=none,student=resnet18",
                          **{"finetune.frozen_epochs": 1, **overrides})
  ds = data.load(c)
  return c, ds, stage.Stage(config_lib.read_specs(c), role="student", model_name=c.student.name, method="none",
      stage_dir=str(tmp_path / name), num_epochs=2,
      learning_rate=c.learning_rate, ds=ds, mesh=MESH, frozen_epochs=1)


def _flat(tree):
  return {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_frozen_phase_trains_the_head_only(tmp_path):
  c, ds, run = _stage(tmp_path)
  _, state = run.init_state()
  before = jax.device_get(state)
  frozen_step, full_step = run.step_fns(run.spec(), jax.sharding.NamedSharding(
      MESH, jax.sharding.PartitionSpec()))
  batches = data.train_batches(ds.train, global_batch=c.batch_size, seed=0,
                               epoch=0, num_steps=3, image_size=32)
  hp = step.hyperparams(config_lib.read_specs(c))
  for batch in batches:
    state, m = frozen_step(state, batch, hp, None)
    assert float(m["finite"]) == 1.0
  after = jax.device_get(state)
  head = _flat(models.head_mask(c.student.name, ds.num_classes, 32)["params"])
  p0, p1 = _flat(before.params["student"]), _flat(after.params["student"])
  assert set(head) == set(p0) and sum(head.values()) == 2  # kernel and bias
  for k in p0:
    if head[k]:
      assert not np.array_equal(p0[k], p1[k]), k
    else:  # bit-identical, not merely close
      assert p0[k].tobytes() == p1[k].tobytes(), k
  s0, s1 = _flat(before.batch_stats), _flat(after.batch_stats)
  assert s0 and all(s0[k].tobytes() == s1[k].tobytes() for k in s0)
  # The full phase then moves the backbone and its BatchNorm statistics,
  # from a fresh optimizer state of its own.
  state, _ = full_step(state, next(iter(data.train_batches(
      ds.train, global_batch=c.batch_size, seed=0, epoch=1, num_steps=1,
      image_size=32))), hp, None)
  p2 = _flat(jax.device_get(state.params["student"]))
  assert all(not np.array_equal(p1[k], p2[k]) for k in p1 if not head[k])
  s2 = _flat(jax.device_get(state.batch_stats))
  assert any(not np.array_equal(s1[k], s2[k]) for k in s1)


def _params(stage_dir):
  _, state = helpers.restore_raw(os.path.join(stage_dir, "checkpoints",
                                              "latest"), "state")
  return _flat(state["params"])


@pytest.mark.slow
def test_resume_across_the_phase_boundary(tmp_path, monkeypatch):
  """Stopped in the frozen phase and again in the full phase, the resumed
  run ends with the uninterrupted run's parameters, bit for bit."""
  compiled = {}  # the runs share one config: compile their steps once
  step_fns = stage.Stage.step_fns
  monkeypatch.setattr(stage.Stage, "step_fns", lambda self, spec, repl: (
      compiled.setdefault("fns", step_fns(self, spec, repl))))
  _, _, ref = _stage(tmp_path, "ref")
  ref_res = ref.run()
  spe = ref.spe
  for stop_at in (1, spe + 1):  # in the frozen phase; just after it
    monkeypatch.setattr(preemption, "requested",
                        lambda step, every, at=stop_at: step == at)
    with pytest.raises(preemption.Preempted):
      _stage(tmp_path, "cut")[2].run()
  monkeypatch.setattr(preemption, "requested", lambda step, every: False)
  res = _stage(tmp_path, "cut")[2].run()
  assert res["steps"] == ref_res["steps"] == 2 * spe
  a, b = _params(str(tmp_path / "ref")), _params(str(tmp_path / "cut"))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_a_method_none_run_is_a_teacher_and_an_init_for_another_task(tmp_path):
  """A `kd.method=none` run's workdir (its student/ stage) is accepted as
  teacher.checkpoint; as student.init_from for data with fewer classes the
  head is re-initialised and every other leaf is the run's."""
  src = str(tmp_path / "src")
  r = helpers.run_cli("--config=configs/quickstart.py:runlocal,dataset=digits,"
                      "method=none,student=resnet18",
                      f"--workdir={src}")
  assert r.returncode == 0, r.stderr[-2000:]
  c = helpers.tiny_config("dataset=digits,method=vanilla",
                          **{"teacher.name": "resnet18",
                             "teacher.checkpoint": src})
  ds = data.load(c)
  teacher = train.load_frozen(config_lib.read_specs(c), ds, MESH, src)
  assert teacher.path == os.path.join(src, "student", "checkpoints", "best")
  saved = _flat(helpers.restore_raw(teacher.path, "model")[1])
  assert all(np.array_equal(saved[k], v) for k, v in
             _flat(jax.device_get(teacher.variables)).items())

  folder = str(tmp_path / "folder")
  helpers.write_image_folder(folder, classes=("A2C", "A4C", "PLAX"))
  c = helpers.tiny_config("dataset=folder,method=none,student=resnet18",
                          **{"dataset.data_dir": folder,
                             "student.init_from": src})
  ds = data.load(c)
  run = stage.Stage(config_lib.read_specs(c), role="student", model_name=c.student.name,
                    method="none", stage_dir=str(tmp_path / "new"),
                    num_epochs=1, learning_rate=1e-3, ds=ds, mesh=MESH,
                    init_from=src)
  _, state = run.init_state()
  new = _flat(jax.device_get({"params": state.params["student"],
                              "batch_stats": state.batch_stats["student"]}))
  head = _flat(models.head_mask(c.student.name, 3, c.dataset.image_size))
  for k, v in new.items():
    if head[k]:
      assert v.shape[-1] == 3, k
    else:
      assert np.array_equal(v, saved[k]), k
