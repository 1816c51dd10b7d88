"""Kill -9 and resume; 8 fake CPU devices give the params of 1 device."""
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
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh
sys.path.insert(0, {repo!r})
from tests import helpers
from kd_jax import config_lib
from kd_jax.train import model_init
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.train import sharding
from kd_jax.train import stage
from kd_jax.train import pipeline as train
from kd_jax.train import step as step_lib

# 1) A whole tiny run (teacher + vanilla KD student) on every device.
#    SGD keeps updates linear in the gradient (Adam's g/sqrt(v) turns float
#    noise in near-zero gradients into lr-sized steps).
c = helpers.tiny_config("dataset=digits,student=simple_cnn")
c.scratch_baseline = False
c.optimizer = "sgd"
c.learning_rate = 0.05
train.train_and_evaluate(c, {workdir!r})
_, state = helpers.restore_raw({workdir!r} + "/student/checkpoints/latest", "state")
flat = {{"/".join(str(k) for k in path): np.asarray(v) for path, v in
        jax.tree_util.tree_flatten_with_path(state["params"])[0]}}

# 2) One ResNet18 train step (BatchNorm) from the same state and batch: the
#    batch statistics must be global-batch, not per-device.
c = helpers.tiny_config("dataset=digits,student=resnet18,method=none")
c.optimizer = "sgd"
ds = data.load(c)
model = models.get_model("resnet18", num_classes=10)
tx = step_lib.make_optimizer(*config_lib.optimizer_and_kd(c), learning_rate=0.05, num_epochs=1,
                             steps_per_epoch=4, ctkd=False)
step = step_lib.make_train_step(
    step_lib.make_spec(config_lib.read_specs(c), model, "none", steps_per_epoch=4), tx)
host = next(data.train_batches(ds.train, global_batch=16, seed=0, epoch=0,
                               num_steps=1, image_size=28))
mesh = sharding.make_mesh()
p, bs = model_init.init_variables(model, c.dataset.image_size, mesh, jax.random.PRNGKey(0))
p, bs = {{"student": p}}, {{"student": bs}}
st = step_lib.new_train_state(tx, p, bs)
repl, bsh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
new, _ = jax.jit(step, in_shardings=(repl, bsh, repl, repl))(
    st, sharding.global_batch(host, mesh), step_lib.hyperparams(config_lib.read_specs(c)), None)
for path, v in jax.tree_util.tree_flatten_with_path(
    jax.device_get({{"params": new.params, "batch_stats": new.batch_stats}}))[0]:
  flat["bn_step/" + "/".join(str(k) for k in path)] = np.asarray(v)
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


# Slow (the default run's budget); tests/test_prefetch.py's four-device
# and tests/test_multiprocess.py's runs keep device counts in the default.
@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path):
  """Batch sharded over 8 devices (2 rows each) gives the params of 1 device:
  a whole KD run, and a ResNet18 step whose BatchNorm statistics would differ
  if they were per-device (2 rows) instead of global-batch (16 rows)."""
  one, eight = _run_with_devices(1, tmp_path), _run_with_devices(8, tmp_path)
  assert one.keys() == eight.keys()
  assert any("batch_stats" in k for k in one)
  for k in one:
    np.testing.assert_allclose(one[k], eight[k], rtol=1e-4, atol=1e-5, err_msg=k)
