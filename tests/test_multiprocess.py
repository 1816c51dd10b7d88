"""Two CPU processes joined by jax.distributed on loopback train one cell and
end with the params of one process holding the same 2 devices; the GPUs a
SLURM task drives."""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from kd_jax.train import sharding
from tests import helpers

ARGS = ["--config=configs/quickstart.py:runlocal,dataset=digits,method=none",
        "--config.optimizer=sgd", "--config.learning_rate=0.05"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _params(workdir):
  _, state = helpers.restore_raw(
      os.path.join(workdir, "student", "checkpoints", "latest"), "state")
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def test_two_processes_match_one_process_with_two_devices(tmp_path):
  """The two processes prefetch their own rows (the default
  prefetch_depth); the one process places each batch when its step runs."""
  one = str(tmp_path / "one")
  r = helpers.run_cli(*ARGS, "--config.prefetch_depth=0", f"--workdir={one}", env={
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
  assert r.returncode == 0, r.stderr[-2000:]

  two = str(tmp_path / "two")
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=helpers.REPO,
             KD_JAX_COORDINATOR=f"127.0.0.1:{port}", KD_JAX_NUM_PROCESSES="2",
             KD_JAX_INIT_TIMEOUT="60")
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen(
      [sys.executable, "-m", "kd_jax.main", *ARGS, f"--workdir={two}"],
      cwd=helpers.REPO, env=dict(env, KD_JAX_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=400) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
  assert "devices: 2 (cpu, 2 process(es))" in outs[0][0]
  # Only process 0 prints progress (gloo's own connection line aside).
  assert "[student" in outs[0][0] and "[student" not in outs[1][0]
  res_one = helpers.read_json(os.path.join(one, "student", "results.json"))
  res_two = helpers.read_json(os.path.join(two, "student", "results.json"))
  assert res_two["steps"] == res_one["steps"]
  for a, b in zip(_params(one), _params(two)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert res_two["test"]["accuracy"] == res_one["test"]["accuracy"]


@pytest.mark.parametrize("env,ids", [
    ({}, None),  # not SLURM's GPU binding: JAX's default
    ({"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "3"}, [0]),
    ({"SLURM_GPUS_PER_TASK": "8", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
     list(range(8))),  # one task per node drives its 8 GPUs
    ({"SLURM_GPUS_PER_TASK": "2", "SLURM_LOCALID": "1",
      "CUDA_VISIBLE_DEVICES": "0,1,2,3"}, [2, 3]),  # unbound: its own pair
    ({"SLURM_GPUS_PER_TASK": "1", "CUDA_VISIBLE_DEVICES": "0",
      "JAX_LOCAL_DEVICE_IDS": "0"}, None),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "SLURM_LOCALID": "5"}, None),
])
def test_slurm_local_devices(env, ids):
  assert sharding.slurm_local_devices(env) == ids
