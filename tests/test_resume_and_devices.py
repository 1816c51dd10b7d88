"""Kill -9 and resume; 8 fake CPU devices give the params of 1 device."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import helpers

# digits ships inside scikit-learn, so a subprocess needs no mocking.
RESUME_ARGS = ["--config=configs/quickstart.py:runlocal,dataset=digits,method=none",
               "--config.max_steps_per_epoch=0", "--config.dataset.train_limit=0",
               "--config.num_epochs=3", "--config.checkpoint_every_steps=5",
               "--config.log_every_steps=10"]


def _latest_steps(workdir):
  d = os.path.join(workdir, "student", "checkpoints", "latest")
  return [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []


def _final_params(workdir):
  _, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  return state


def test_sigkill_then_rerun_resumes_at_the_right_step(tmp_path):
  ref = str(tmp_path / "ref")
  r = helpers.run_cli(*RESUME_ARGS, f"--workdir={ref}")
  assert r.returncode == 0, r.stderr[-2000:]
  ref_res = helpers.read_json(os.path.join(ref, "student", "results.json"))

  wd = str(tmp_path / "killed")
  env = dict(os.environ, PYTHONPATH=helpers.REPO)
  proc = subprocess.Popen([sys.executable, "-m", "kd_jax.main", *RESUME_ARGS,
                           f"--workdir={wd}"], cwd=helpers.REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if any(s >= 20 for s in _latest_steps(wd)):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.02)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "run ended before it could be killed"
  assert not os.path.exists(os.path.join(wd, "student", "results.json"))

  r = helpers.run_cli(*RESUME_ARGS, f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-2000:]
  m = re.search(r"resumed from step (\d+) \(epoch (\d+), batch (\d+)\)", r.stdout)
  assert m, r.stdout[-2000:]
  step, epoch, batch = map(int, m.groups())
  spe = ref_res["steps"] // 3
  assert 20 <= step < ref_res["steps"]
  assert (epoch - 1) * spe + batch == step  # loop position matches the step
  res = helpers.read_json(os.path.join(wd, "student", "results.json"))
  assert res["steps"] == ref_res["steps"]
  # Same data order and same updates: the resumed run ends where the
  # uninterrupted one did.
  a, b = _final_params(ref), _final_params(wd)
  for x, y in zip(_leaves(a["params"]), _leaves(b["params"])):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  assert res["test"]["accuracy"] == pytest.approx(ref_res["test"]["accuracy"], abs=1e-9)
  assert [h["accuracy"] for h in res["history"]] == pytest.approx(
      [h["accuracy"] for h in ref_res["history"]], abs=1e-9)


def _leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


DEVICE_SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, {repo!r})
from tests import helpers
from kd_jax import train
c = helpers.tiny_config("dataset=digits,student=resnet18")
c.scratch_baseline = False
train.train_and_evaluate(c, {workdir!r})
_, state = helpers.restore_raw({workdir!r} + "/student/checkpoints/latest", "state")
flat = {{"/".join(str(k) for k in path): np.asarray(v) for path, v in
        jax.tree_util.tree_flatten_with_path(state["params"])[0]}}
flat.update({{"bs/" + "/".join(str(k) for k in path): np.asarray(v) for path, v in
        jax.tree_util.tree_flatten_with_path(state["batch_stats"])[0]}})
np.savez({out!r}, **flat)
print("DEVICES", jax.device_count())
"""


def _run_with_devices(n, tmp_path):
  out = str(tmp_path / f"params_{n}.npz")
  script = DEVICE_SCRIPT.format(repo=helpers.REPO, workdir=str(tmp_path / f"wd{n}"),
                                out=out)
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}",
             JAX_PLATFORMS="cpu")
  r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                     text=True, timeout=600, cwd=helpers.REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"DEVICES {n}" in r.stdout
  return dict(np.load(out))


def test_eight_devices_match_one_device(tmp_path):
  """Batch sharded over 8 devices (2 rows each), BatchNorm (ResNet18) with
  global-batch statistics: the same params as 1 device within float noise."""
  one, eight = _run_with_devices(1, tmp_path), _run_with_devices(8, tmp_path)
  assert one.keys() == eight.keys() and any(k.startswith("bs/") for k in one)
  for k in one:
    np.testing.assert_allclose(one[k], eight[k], rtol=1e-3, atol=1e-4, err_msg=k)
