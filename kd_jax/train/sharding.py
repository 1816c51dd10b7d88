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
    job's environment.
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
    jax.distributed.initialize()


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
