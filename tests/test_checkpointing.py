"""The 'latest' checkpoint's packed train state: exact round trip, one array
per dtype on disk, and a stage fingerprint that refuses another stage's
checkpoint."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kd_jax.train import checkpointing


def _state():
  rng = np.random.default_rng(0)
  return {
      "step": jnp.int32(7),
      "params": {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
                 "b": jnp.asarray(rng.normal(size=(4,)), jnp.float32),
                 "half": jnp.asarray(rng.normal(size=(2, 2)), jnp.bfloat16)},
      "opt": [jnp.asarray(rng.integers(0, 9, size=(5,)), jnp.int32),
              jnp.asarray(rng.normal(size=(1, 1, 3)), jnp.float32)],
  }


def _zeros_like(tree):
  return jax.tree.map(jnp.zeros_like, tree)


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x, np.float64),
                                  np.asarray(y, np.float64))


def test_packed_latest_round_trip_is_exact(tmp_path):
  state = _state()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  ck.save_latest(3, state, {"epoch": 1})
  step_dir = tmp_path / "student" / "checkpoints" / "latest" / "3"
  assert sorted(os.listdir(step_dir / "packed_state")) != []
  restored, meta = ck.restore_latest(_zeros_like(state), None)
  _assert_equal(restored, state)
  assert meta == {"epoch": 1}
  ck.close()


def test_pack_makes_one_flat_array_per_dtype():
  state = _state()
  packed = checkpointing._pack(jax.tree.leaves(state))
  # float32: 12 + 4 + 3 values; int32: the step and 5 counters; bfloat16: 4.
  assert {k: v.shape for k, v in packed.items()} == {
      "float32": (19,), "int32": (6,), "bfloat16": (4,)}


def test_a_matching_fingerprint_restores_and_is_not_in_meta(tmp_path):
  state = _state()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  ck.save_latest(5, state, {"epoch": 2, "fingerprint": "abc123"})
  ck.close()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  restored, meta = ck.restore_latest(_zeros_like(state), None,
                                     fingerprint="abc123")
  _assert_equal(restored, state)
  assert meta == {"epoch": 2}
  ck.close()


def test_a_different_fingerprint_is_refused_in_one_line(tmp_path):
  state = _state()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  ck.save_latest(5, state, {"epoch": 2, "fingerprint": "abc123"})
  with pytest.raises(checkpointing.UserError) as e:
    ck.restore_latest(_zeros_like(state), None, fingerprint="def456")
  msg = str(e.value)
  assert "abc123" in msg and "def456" in msg and "\n" not in msg
  assert "--workdir" in msg
  assert str(tmp_path / "student" / "checkpoints" / "latest") in msg
  ck.close()


def test_a_checkpoint_without_a_fingerprint_restores(tmp_path):
  state = _state()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  ck.save_latest(5, state, {"epoch": 2})
  restored, meta = ck.restore_latest(_zeros_like(state), None,
                                     fingerprint="def456")
  _assert_equal(restored, state)
  assert meta == {"epoch": 2}
  # No fingerprint from the caller: a fingerprinted checkpoint restores too.
  ck.save_latest(6, state, {"epoch": 3, "fingerprint": "abc123"})
  restored, meta = ck.restore_latest(_zeros_like(state), None)
  _assert_equal(restored, state)
  assert meta == {"epoch": 3}
  ck.close()


def test_packed_state_reads_back_without_a_template(tmp_path):
  state = _state()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  ck.save_latest(4, state, {"epoch": 1})
  ck.close()
  step, tree = checkpointing.read_packed_state(
      str(tmp_path / "student" / "checkpoints" / "latest"))
  assert step == 4
  assert set(tree) == {"step", "params", "opt"}
  _assert_equal(tree["params"], state["params"])
  np.testing.assert_array_equal(tree["opt"][0], state["opt"][0])  # list index 0
  assert int(tree["step"]) == 7


def test_a_different_state_is_refused_in_one_line(tmp_path):
  state = _state()
  ck = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  ck.save_latest(4, state, {"epoch": 1})
  other = dict(state, params=dict(state["params"], w=jnp.zeros((4, 4))))
  try:
    ck.restore_latest(other, None)
    raise AssertionError("no error")
  except checkpointing.UserError as e:
    assert "step 4" in str(e) and "different train state" in str(e)
  ck.close()


def test_a_resumed_run_replaces_a_best_step_saved_before_a_kill(tmp_path):
  """'best' is saved just before 'latest': a kill between the two leaves
  best/<step> ahead of latest. The resumed run redoes that step and its
  save replaces the old one (Orbax refuses to write an existing step)."""
  params = _state()["params"]
  killed = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  killed.save_latest(12, _state(), {"epoch": 2})
  killed.save_best(16, {"params": params}, {"epoch": 3, "run": "killed"})
  # Process killed here: no latest/16. A new process resumes from step 12.
  resumed = checkpointing.StageCheckpoints(str(tmp_path / "student"))
  assert resumed.latest.latest_step() == 12
  redone = jax.tree.map(lambda x: x + 1, params)
  resumed.save_best(16, {"params": redone}, {"epoch": 3, "run": "resumed"})
  resumed.save_latest(16, _state(), {"epoch": 3})
  got, meta = resumed.restore_best({"params": _zeros_like(params)}, None)
  _assert_equal(got["params"], redone)
  assert meta == {"epoch": 3, "run": "resumed"}
  assert resumed.best.all_steps() == [16]
  resumed.close()


def _older_kd_jax(monkeypatch, field):
  """The config as a kd_jax without `field` wrote it: config.json and the
  checkpoint fingerprints lack it."""
  from kd_jax import config_lib
  from kd_jax.config_lib import specs as specs_lib
  real = config_lib.as_json

  def older(c):
    d = real(c)
    del d[field]
    return d
  monkeypatch.setattr(config_lib, "as_json", older)
  monkeypatch.setattr(specs_lib, "as_json", older)


def test_a_run_from_before_a_new_config_field_resumes(tmp_path, monkeypatch):
  """A workdir written before a config field existed, interrupted: with the
  field at its default it resumes as written (config.json kept, checkpoint
  fingerprints accepted) and ends with the bits of an uninterrupted run;
  with the field set otherwise it is refused in one line."""
  from kd_jax.errors import UserError
  from kd_jax.train import pipeline as train
  from kd_jax.train import preemption
  from tests import helpers

  def config(**kw):
    return helpers.tiny_config("dataset=digits,method=none", **kw)
  ref = str(tmp_path / "ref")
  train.train_and_evaluate(config(), ref)
  wd = str(tmp_path / "older")
  _older_kd_jax(monkeypatch, "grad_clip_norm")
  helpers.preempt_at(monkeypatch, 3)
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(config(), wd)
  monkeypatch.undo()
  stored = helpers.read_json(os.path.join(wd, "config.json"))
  assert "grad_clip_norm" not in stored
  with pytest.raises(UserError, match=r"differs in grad_clip_norm\)"):
    train.train_and_evaluate(config(grad_clip_norm=1.0), wd)
  train.train_and_evaluate(config(), wd)
  assert helpers.read_json(os.path.join(wd, "config.json")) == stored
  want = helpers.restore_raw(os.path.join(ref, "student", "checkpoints",
                                          "latest"), "state")
  got = helpers.restore_raw(os.path.join(wd, "student", "checkpoints",
                                         "latest"), "state")
  assert want[0] == got[0]
  for x, y in zip(jax.tree.leaves(want[1]), jax.tree.leaves(got[1]),
                  strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
