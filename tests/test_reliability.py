"""Preemption and faults: SIGTERM saves and exits, kills during saves never
leave a broken checkpoint, non-finite losses stop (or are skipped) with a
clear message, a dead peer process does not hang the other."""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from tests import helpers

BASE = ["--config=configs/quickstart.py:runlocal,dataset=digits,method=none",
        "--config.optimizer=sgd", "--config.learning_rate=0.05",
        "--config.num_epochs=3", "--config.max_steps_per_epoch=8",
        "--config.log_every_steps=1"]


def _popen(*args, env=None):
  full = dict(os.environ, PYTHONPATH=helpers.REPO, **(env or {}))
  return subprocess.Popen([sys.executable, "-m", "kd_jax.main", *args],
                          cwd=helpers.REPO, env=full, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, min_step, timeout=240):
  """Reads progress lines until training passed `min_step`."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    line = proc.stdout.readline()
    if not line:
      break
    if "] step " in line and int(line.split("] step ")[1].split("/")[0]) >= min_step:
      return
  raise AssertionError("training did not reach the step")


def _latest_params(workdir):
  step, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  return step, [np.asarray(x) for x in jax.tree.leaves(state["params"])]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ref"))
  r = helpers.run_cli(*BASE, f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-2000:]
  return _latest_params(workdir)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, reference):
  workdir = str(tmp_path / "run")
  proc = _popen(*BASE, f"--workdir={workdir}")
  _wait_for_step(proc, 5)
  t0 = time.time()
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert time.time() - t0 < 60
  assert proc.returncode == 143, err[-2000:]
  lines = [l for l in err.splitlines() if l.startswith("kd_jax: preempted:")]
  assert len(lines) == 1 and "rerun the same command to resume" in lines[0]
  assert "Traceback" not in err
  saved_step = int(lines[0].split("at step ")[1].split()[0])
  step, _ = _latest_params(workdir)
  assert step == saved_step >= 5
  # The same command resumes there and ends where an uninterrupted run ends.
  r = helpers.run_cli(*BASE, f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"resumed from step {saved_step}" in r.stdout
  ref_step, ref_params = reference
  step, params = _latest_params(workdir)
  assert step == ref_step
  for a, b in zip(params, ref_params):
    np.testing.assert_array_equal(a, b)


# Slow (the default run's budget); tests/test_resume_and_devices.py's
# kill -9 and this file's SIGTERM test stay in the default run.
@pytest.mark.slow
def test_kills_during_checkpoint_saves_never_break_the_latest(tmp_path, reference):
  """A checkpoint every step, SIGKILL at random moments: each time the
  latest checkpoint restores, and the resumed run ends bitwise like the
  uninterrupted one (Orbax writes a step to a temporary directory and
  renames it when complete)."""
  workdir = str(tmp_path / "run")
  args = [*BASE, "--config.checkpoint_every_steps=1", f"--workdir={workdir}"]
  rng = random.Random(0)
  for kill in range(3):
    proc = _popen(*args)
    _wait_for_step(proc, 2 + 6 * kill)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.kill()
    proc.communicate()
    step, params = _latest_params(workdir)  # restores: never half-written
    assert step >= 1 and all(np.all(np.isfinite(p)) for p in params)
  r = helpers.run_cli(*args)
  assert r.returncode == 0, r.stderr[-2000:]
  ref_step, ref_params = reference
  step, params = _latest_params(workdir)
  assert step == ref_step
  for a, b in zip(params, ref_params):
    np.testing.assert_array_equal(a, b)


def test_nonfinite_loss_stops_with_step_and_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  r = helpers.run_cli(*BASE, "--config.learning_rate=1e30",
                      "--config.checkpoint_every_steps=1", f"--workdir={workdir}")
  msg = helpers.one_error_line(r)
  assert "non-finite loss or gradient at step " in msg
  assert "config.nan_policy='skip'" in msg
  # The checkpoint the message names exists and holds finite parameters.
  if "none yet" not in msg:
    named = int(msg.split("last good checkpoint: step ")[1].split()[0])
    step, params = _latest_params(workdir)
    assert step == named
    assert all(np.all(np.isfinite(p)) for p in params)


def test_nonfinite_steps_can_be_skipped(tmp_path):
  workdir = str(tmp_path / "run")
  r = helpers.run_cli(*BASE, "--config.learning_rate=1e30",
                      "--config.nan_policy=skip", f"--workdir={workdir}")
  assert r.returncode == 0, r.stderr[-2000:]
  res = helpers.read_json(os.path.join(workdir, "student", "results.json"))
  assert res["skipped_nonfinite_steps"] > 0
  _, params = _latest_params(workdir)
  assert all(np.all(np.isfinite(p)) for p in params)


def test_ctkd_temperature_stays_in_range_under_a_huge_step(tmp_path):
  c = helpers.tiny_config("dataset=digits,method=ctkd",
                          **{"kd.temperature_lr": 1e6, "kd.lambda_min": 1.0,
                             "kd.temperature": 4.0})
  from kd_jax.train import pipeline as train
  train.train_and_evaluate(c, str(tmp_path))
  import json
  temps = [json.loads(l)["temperature"] for l in open(
      tmp_path / "student" / "logs" / "metrics.jsonl") if '"temperature"' in l]
  assert temps and all(
      c.kd.t_start <= t <= c.kd.t_start + c.kd.t_end for t in temps)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_dead_peer_process_does_not_hang_the_other(tmp_path):
  """Two processes train one cell; process 1 is killed: process 0 exits
  with an error within the heartbeat timeout instead of waiting forever."""
  port = _free_port()
  env = {"JAX_PLATFORMS": "cpu", "KD_JAX_COORDINATOR": f"127.0.0.1:{port}",
         "KD_JAX_NUM_PROCESSES": "2", "KD_JAX_INIT_TIMEOUT": "60",
         "KD_JAX_HEARTBEAT_TIMEOUT": "10"}
  args = [*BASE, "--config.num_epochs=20", f"--workdir={tmp_path / 'run'}"]
  procs = [_popen(*args, env=dict(env, KD_JAX_PROCESS_ID=str(i))) for i in range(2)]
  _wait_for_step(procs[0], 3)
  procs[1].kill()
  t0 = time.time()
  try:
    _, err = procs[0].communicate(timeout=120)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    raise AssertionError("the surviving process hung")
  assert procs[0].returncode == 1
  assert time.time() - t0 < 120
  lines = [l for l in err.splitlines() if l.startswith("kd_jax: error:")]
  assert len(lines) == 1, err[-3000:]
  assert "process 0 of 2 lost another process of this run" in lines[0]
  assert "Traceback" not in err
