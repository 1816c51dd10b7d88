"""train/prefetch.py: the background prefetcher (order, bounds, errors,
clean stops), and runs with prefetching equal to runs without, bit for bit:
a stage with a resume in the middle of an epoch, a vmapped sweep, several
CPU devices in one process and two processes that each prefetch their own
rows."""
import os
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from kd_jax.errors import UserError
from kd_jax.train import loop as loop_lib
from kd_jax.train import pipeline as train
from kd_jax.train import preemption
from kd_jax.train import prefetch
from kd_jax.train import sharding
from kd_jax.train import sweep
from tests import helpers


def _prefetch_threads():
  return [t for t in threading.enumerate()
          if t.name == "kd_jax-prefetch" and t.is_alive()]


class _Source:
  """A host iterator that counts what it produced and whether it closed."""

  def __init__(self, n, fail_at=None):
    self.produced, self.closed = 0, False
    self.n, self.fail_at = n, fail_at

  def __iter__(self):
    try:
      for i in range(self.n):
        if i == self.fail_at:
          raise ValueError(f"bad batch {i}")
        self.produced += 1
        yield {"x": np.full((4, 3), i, np.float32)}
    finally:
      self.closed = True


def _wait_for(cond, timeout=10.0):
  deadline = time.time() + timeout
  while not cond() and time.time() < deadline:
    time.sleep(0.005)
  return cond()


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_order_and_values_kept(depth):
  mesh = sharding.make_mesh()
  src = _Source(12)
  with prefetch.Prefetcher(src, lambda b: sharding.global_batch(b, mesh),
                           depth) as placed:
    got = [float(np.asarray(b["x"])[0, 0]) for b in placed]
  assert got == list(map(float, range(12)))
  assert src.closed and not _prefetch_threads()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_producer_is_at_most_depth_plus_one_ahead(depth):
  src = _Source(20)
  with prefetch.Prefetcher(src, lambda b: b, depth) as placed:
    for consumed in range(1, 8):
      next(placed)
      # The producer fills up to the bound, and not beyond it.
      assert _wait_for(lambda: src.produced == consumed + depth + 1)
      time.sleep(0.05)
      assert src.produced == consumed + depth + 1
  assert not _prefetch_threads()


def test_depth_zero_is_synchronous():
  src = _Source(5)
  placed = prefetch.Prefetcher(src, lambda b: b, 0)
  assert src.produced == 0 and not _prefetch_threads()
  next(placed)
  assert src.produced == 1
  placed.close()
  assert src.closed


@pytest.mark.parametrize("depth", [0, 2])
def test_producer_exception_reaches_the_consumer_at_its_batch(depth):
  src = _Source(10, fail_at=4)
  got = []
  with pytest.raises(ValueError, match="bad batch 4"):
    with prefetch.Prefetcher(src, lambda b: b, depth) as placed:
      for b in placed:
        got.append(int(b["x"][0, 0]))
  assert got == [0, 1, 2, 3]
  assert src.closed and not _prefetch_threads()


def test_put_exception_propagates():
  def put(b):
    if b["x"][0, 0] == 2:
      raise RuntimeError("device full")
    return b
  with pytest.raises(RuntimeError, match="device full"):
    with prefetch.Prefetcher(_Source(10), put, 2) as placed:
      list(placed)
  assert not _prefetch_threads()


def test_early_stop_ends_the_thread_and_closes_the_source():
  src = _Source(1000)
  with prefetch.Prefetcher(src, lambda b: b, 2) as placed:
    next(placed)
    next(placed)
  assert src.closed and not _prefetch_threads()
  assert src.produced <= 2 + 2 + 1
  # An exception in the consumer's loop body stops it too.
  src = _Source(1000)
  with pytest.raises(KeyError):
    with prefetch.Prefetcher(src, lambda b: b, 3) as placed:
      for _ in placed:
        raise KeyError("stop")
  assert src.closed and not _prefetch_threads()


def test_memory_check_refuses_in_one_line(monkeypatch):
  prefetch.check_memory(10**6, 2, None)  # unknown: not checked
  prefetch.check_memory(10**6, 2, 10**7)
  with pytest.raises(UserError, match=r"config.prefetch_depth=4 holds 5 batches") as e:
    prefetch.check_memory(10**6, 4, 9 * 10**6)
  assert "\n" not in str(e.value)
  monkeypatch.setattr(prefetch, "available_bytes", lambda: 100)
  with pytest.raises(UserError, match="lower it"):
    with prefetch.Prefetcher(_Source(5), lambda b: b, 2) as placed:
      next(placed)
  assert not _prefetch_threads()
  assert prefetch.batch_bytes({"x": np.zeros((4, 3), np.float32),
                               "y": np.zeros(4, np.int32)}) == 64


def test_fetched_one_behind_fetches_after_the_next_dispatch():
  events = []

  def dispatched():
    for i in range(3):
      events.append(f"dispatch {i}")
      yield i
  out = list(prefetch.fetched_one_behind(
      dispatched(), lambda y: events.append(f"fetch {y}") or y * 10))
  assert out == [0, 10, 20]
  assert events == ["dispatch 0", "dispatch 1", "fetch 0", "dispatch 2",
                    "fetch 1", "fetch 2"]
  assert list(prefetch.fetched_one_behind(iter(()), lambda y: y)) == []


class _Stepper:
  """The stepper protocol of loop.run_epochs, recording what it is asked."""

  def __init__(self):
    self.loop = loop_lib.new_loop()
    self.steps, self.flushes, self.put_threads, self.saves = [], [], set(), []

  def finished(self, num_epochs):
    return self.loop["epoch"] >= num_epochs

  def begin_epoch(self):
    pass

  def put(self, host_batch):
    self.put_threads.add(threading.current_thread().name)
    return host_batch

  def step(self, batch, step):
    self.steps.append((step, batch))
    self.loop["step_in_epoch"] += 1
    return step  # device metrics, not fetched here

  def flush(self, pending, step):
    self.flushes.append((step, list(pending)))

  def add_seconds(self, seconds):
    pass

  def save_latest(self, step):
    self.saves.append(step)

  def wait(self):
    pass

  def preempted_message(self, step):
    return f"preempted at {step}"

  def end_epoch(self, step):
    self.loop.update(epoch=self.loop["epoch"] + 1, step_in_epoch=0)


@pytest.mark.parametrize("depth,thread", [(0, "MainThread"),
                                          (2, "kd_jax-prefetch")])
def test_loop_places_batches_ahead_and_fetches_at_the_flush(depth, thread):
  st = _Stepper()
  batches = lambda epoch, start, step: ((epoch, s) for s in range(start, 5))
  step = loop_lib.run_epochs(st, batches, step=0, num_epochs=2,
                             steps_per_epoch=5, log_every=2,
                             checkpoint_every=0, prefetch_depth=depth)
  assert step == 10
  assert [b for _, b in st.steps] == [(e, s) for e in range(2) for s in range(5)]
  assert [s for s, _ in st.steps] == list(range(10))
  # Metrics leave the device every log_every steps and at the epoch end.
  assert [(s, p) for s, p in st.flushes] == [
      (2, [0, 1]), (4, [2, 3]), (5, [4]), (7, [5, 6]), (9, [7, 8]), (10, [9])]
  assert st.put_threads == {thread} and not _prefetch_threads()


def test_preemption_save_stops_the_prefetcher(monkeypatch):
  st = _Stepper()
  helpers.preempt_at(monkeypatch, 3)
  batches = lambda epoch, start, step: iter(range(start, 1000))
  with pytest.raises(preemption.Preempted, match="preempted at 3"):
    loop_lib.run_epochs(st, batches, step=0, num_epochs=1,
                        steps_per_epoch=1000, log_every=2, checkpoint_every=0,
                        prefetch_depth=2)
  assert st.saves == [3] and st.flushes[-1] == (3, [2])
  assert not _prefetch_threads()


def test_config_field_is_validated():
  from kd_jax import config_lib
  c = helpers.tiny_config("dataset=digits,method=none", prefetch_depth=-1)
  with pytest.raises(UserError, match=r"config.prefetch_depth=-1 must be >= 0"):
    config_lib.validate(c)
  assert config_lib.read_specs(helpers.tiny_config()).data.prefetch_depth == 2


# ---------------------------------------------------------- whole runs

def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _assert_same_run(a, b, stages):
  """Two workdirs hold the same run, bit for bit: every stage's final train
  state and its results' metrics."""
  for stage in stages:
    ra = helpers.read_json(os.path.join(a, stage, "results.json"))
    rb = helpers.read_json(os.path.join(b, stage, "results.json"))
    for key in ("test", "history", "steps", "best_val", "best_epoch"):
      assert ra[key] == rb[key], (stage, key)
    sa = helpers.restore_raw(os.path.join(a, stage, "checkpoints", "latest"),
                             "state")[1]
    sb = helpers.restore_raw(os.path.join(b, stage, "checkpoints", "latest"),
                             "state")[1]
    for x, y in zip(_leaves(sa), _leaves(sb), strict=True):
      np.testing.assert_array_equal(x, y, err_msg=stage)


def test_prefetched_run_with_mid_epoch_resume_equals_synchronous_run(
    tmp_path, monkeypatch):
  """A KD run (teacher stage, cached teacher logits, student) with
  prefetch_depth=2, preempted in the middle of the teacher's second epoch
  and resumed, ends with the bits of an uninterrupted prefetch_depth=0 run."""
  def config(depth, name):
    return helpers.tiny_config(
        "dataset=digits,student=simple_cnn", scratch_baseline=False,
        prefetch_depth=depth,
        **{"teacher.cache_dir": str(tmp_path / f"cache_{name}")})
  ref = str(tmp_path / "sync")
  train.train_and_evaluate(config(0, "sync"), ref)

  wd = str(tmp_path / "prefetched")
  fired = helpers.preempt_at(monkeypatch, 6)  # epoch 1, batch 2 of 4
  with pytest.raises(preemption.Preempted):
    train.train_and_evaluate(config(2, "prefetched"), wd)
  assert fired == [6] and not _prefetch_threads()
  assert not os.path.exists(os.path.join(wd, "teacher", "results.json"))
  monkeypatch.undo()
  train.train_and_evaluate(config(2, "prefetched"), wd)
  assert not _prefetch_threads()
  _assert_same_run(ref, wd, ("teacher", "student"))


def test_vmapped_sweep_with_prefetch_equals_without(tmp_path):
  """Two vmapped cells with augmentation: the teacher's logits of the
  augmented batches are computed in the prefetch thread (AugmentedViews)."""
  teacher_dir = helpers.train_digits_teacher(tmp_path / "teacher")
  def cells(depth):
    return [helpers.tiny_config(
        f"dataset=digits,method=vanilla,{a}", scratch_baseline=False,
        prefetch_depth=depth,
        **{"teacher.checkpoint": teacher_dir, "teacher.name": "simple_cnn",
           "teacher.cache_dir": str(tmp_path / f"cache{depth}"),
           "dataset.random_flip": True, "data_seed": 0})
            for a in ("T=2,seed=0", "T=4,seed=1")]
  dirs = {d: [str(tmp_path / f"d{d}" / f"cell{i}") for i in range(2)]
          for d in (0, 2)}
  for depth in (0, 2):
    sweep.train_group(cells(depth), dirs[depth])
  assert os.listdir(tmp_path / "cache2")  # the views were cached
  for a, b in zip(dirs[0], dirs[2]):
    _assert_same_run(a, b, ("student",))


ROWS_SCRIPT = r"""
import json, sys
sys.path.insert(0, {repo!r})
import jax, jax.numpy as jnp, numpy as np
from kd_jax.data import datasets as data
from kd_jax.train import prefetch, sharding
sharding.maybe_initialize_distributed()
pi, pc = jax.process_index(), jax.process_count()
mesh = sharding.make_mesh()
rng = np.random.default_rng(0)
split = data.Split(rng.integers(0, 10, 64).astype(np.int32),
                   rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8))
GLOBAL = 16
total = jax.jit(lambda b: (jnp.sum(b["image"].astype(jnp.float32), axis=(1, 2, 3)),
                           b["label"]))
out = {{"process": pi, "processes": pc, "devices": jax.device_count(),
       "local_devices": jax.local_device_count()}}
for depth in (0, 2):
  host_rows, local_rows, sums = [], [], []
  def host():
    for b in data.train_batches(split, global_batch=GLOBAL, seed=0, epoch=0,
                                num_steps=4, image_size=8, process_index=pi,
                                process_count=pc):
      host_rows.append(b["label"].tolist())
      yield b
  with prefetch.Prefetcher(host(), lambda b: sharding.global_batch(b, mesh),
                           depth) as placed:
    for b in placed:
      assert b["image"].shape[0] == GLOBAL
      local_rows.append(np.concatenate([np.asarray(s.data) for s in sorted(
          b["label"].addressable_shards, key=lambda s: s.index[0].start or 0)]).tolist())
      s, labels = total(b)
      sums.append(np.asarray(jax.experimental.multihost_utils.process_allgather(
          s, tiled=True)).tolist())
  out[depth] = {{"host_rows": host_rows, "local_rows": local_rows, "sums": sums}}
order = data.epoch_order(split.labels, seed=0, epoch=0)
out["expected_sums"] = [split.images[order[i * GLOBAL:(i + 1) * GLOBAL]].astype(
    np.float32).sum(axis=(1, 2, 3)).tolist() for i in range(4)]
out["own_rows"] = [split.labels[order[i * GLOBAL:(i + 1) * GLOBAL]][
    pi * GLOBAL // pc:(pi + 1) * GLOBAL // pc].tolist() for i in range(4)]
print("RESULT " + json.dumps(out))
"""


def _result(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1]
  return __import__("json").loads(line[len("RESULT "):])


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _check_rows(res, n_local_devices):
  for depth in ("0", "2"):
    r = res[depth]
    assert r["host_rows"] == res["own_rows"]  # only this process's rows
    assert r["local_rows"] == res["own_rows"]  # on this process's devices
    assert r["sums"] == res["expected_sums"]  # the global batch, whole
  assert res["0"] == res["2"]
  assert res["local_devices"] == n_local_devices


def test_two_processes_each_prefetch_their_own_rows(tmp_path):
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=helpers.REPO,
             KD_JAX_COORDINATOR=f"127.0.0.1:{port}", KD_JAX_NUM_PROCESSES="2",
             KD_JAX_INIT_TIMEOUT="60", KD_JAX_HEARTBEAT_TIMEOUT="30",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  script = ROWS_SCRIPT.format(repo=helpers.REPO)
  procs = [subprocess.Popen(
      [sys.executable, "-c", script], cwd=helpers.REPO,
      env=dict(env, KD_JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  results = [_result(out) for out, _ in outs]
  assert [r["process"] for r in results] == [0, 1]
  for r in results:
    assert r["processes"] == 2 and r["devices"] == 4
    _check_rows(r, 2)
  assert results[0]["own_rows"] != results[1]["own_rows"]


DEVICES_SCRIPT = ROWS_SCRIPT + r"""
from kd_jax.train import pipeline as train
from tests import helpers
for depth in (0, 2):
  c = helpers.tiny_config("dataset=digits,student=simple_cnn,method=none",
                          prefetch_depth=depth)
  train.train_and_evaluate(c, {workdir!r} + f"/d{{depth}}")
"""


def test_four_cpu_devices_in_one_process(tmp_path):
  """Batches sharded over 4 forced CPU devices; a tiny run with prefetching
  equals one without, bit for bit."""
  script = DEVICES_SCRIPT.format(repo=helpers.REPO, workdir=str(tmp_path))
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=4")
  r = subprocess.run([sys.executable, "-c", script], cwd=helpers.REPO,
                     env=env, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  res = _result(r.stdout)
  assert res["devices"] == 4
  _check_rows(res, 4)
  _assert_same_run(str(tmp_path / "d0"), str(tmp_path / "d2"), ("student",))

