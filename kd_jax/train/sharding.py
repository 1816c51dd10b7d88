"""Data parallelism: one 1-D ('data',) mesh over every device of every process.

The batch is sharded along its leading axis (`P('data')`); the train state
and the frozen teacher are replicated (`P()`). `jax.jit` with these
shardings compiles one SPMD program; the gradient all-reduce and the
global-batch BatchNorm statistics come from XLA's partitioner.
"""
from __future__ import annotations

import os

import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from kd_jax.errors import UserError


def maybe_initialize_distributed():
  """Joins a multi-process run when launched as one (SLURM or explicit env).

  * SLURM with more than one task: `jax.distributed.initialize()` reads the
    job's environment; each task drives the GPUs of `slurm_local_devices`.
  * Explicit (e.g. several CPU processes on loopback): set
    KD_JAX_COORDINATOR=host:port, KD_JAX_NUM_PROCESSES, KD_JAX_PROCESS_ID.
  """
  if os.environ.get("KD_JAX_COORDINATOR"):
    # CPU devices need a collectives backend across processes (no effect on
    # GPU/TPU); must be set before the backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=os.environ["KD_JAX_COORDINATOR"],
        num_processes=int(os.environ["KD_JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["KD_JAX_PROCESS_ID"]),
        initialization_timeout=int(os.environ.get("KD_JAX_INIT_TIMEOUT", "120")),
        # A dead peer is detected after this many seconds without heartbeat;
        # the survivors then exit with an error instead of waiting forever.
        heartbeat_timeout_seconds=int(
            os.environ.get("KD_JAX_HEARTBEAT_TIMEOUT", "60")))
  elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    jax.distributed.initialize(local_device_ids=slurm_local_devices(os.environ))


def slurm_local_devices(env) -> list[int] | None:
  """The GPU ordinals (as this task sees them) a SLURM task drives, or None
  for JAX's default (GPU number SLURM_LOCALID: one task per GPU, every GPU
  of the node visible to every task; or JAX_LOCAL_DEVICE_IDS when set).

  With `--gpus-per-task=G` the task drives G GPUs: all it sees when SLURM
  binds them to it (CUDA_VISIBLE_DEVICES lists G), else its own G of the
  node's (the SLURM_LOCALID-th group of G).
  """
  per_task = env.get("SLURM_GPUS_PER_TASK", "")
  visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
  if env.get("JAX_LOCAL_DEVICE_IDS") or not per_task.isdigit() or not visible:
    return None
  g = int(per_task)
  if len(visible) <= g:
    return list(range(len(visible)))
  first = int(env.get("SLURM_LOCALID", "0")) * g
  return list(range(first, first + g)) if first + g <= len(visible) else None


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def batch_sharding(mesh):
  return NamedSharding(mesh, P("data"))


def replicated(mesh):
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, name: str, mesh: Mesh):
  n = mesh.size
  if batch_size % n or batch_size % jax.process_count():
    raise UserError(f"config.{name}={batch_size} is not divisible by the "
                    f"{n} devices of the mesh ({jax.process_count()} processes)")


def global_batch(local_arrays, mesh):
  """This process's rows -> global arrays sharded over ('data',)."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x),
      local_arrays)


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))
