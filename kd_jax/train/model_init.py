"""A model's first variables: the compiled init (once per model, image size
and mesh in a process), the seeds every role starts from, and sizes."""
from __future__ import annotations

import jax
import numpy as np

from kd_jax import models
from kd_jax.train import sharding
from kd_jax.train import step as step_lib


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def size_mb(variables, bytes_per_value=4) -> float:
  """Saved inference variables (params + BN stats), float32, in MB (1e6 B)."""
  return param_count(variables) * bytes_per_value / 1e6


COMPILED_INITS = {}  # (model, image size, mesh) -> jitted init: compiled once per process


def make_init(model, image_size: int, mesh):
  """`rng -> (params, batch_stats)`, compiled once per model, image size and
  mesh in a process: a sweep's cells (and a study's in-process cells) share
  one compilation, which takes seconds for a mobile net on a CPU."""
  key = (repr(model), image_size, mesh)
  fn = COMPILED_INITS.get(key)
  if fn is None:
    fn = COMPILED_INITS[key] = jax.jit(lambda r: models.init(model, r, image_size),
                               out_shardings=sharding.replicated(mesh))

  def init(rng):
    variables = fn(rng)
    return variables["params"], variables.get("batch_stats", {})
  return init


def init_variables(model, image_size: int, mesh, rng):
  return make_init(model, image_size, mesh)(rng)


def init_rng(seed, role):
  """Scratch and KD students start from the same weights (a paired
  comparison: only the teacher's signal differs)."""
  role_key = {"teacher": 1, "student": 2, "scratch": 2, "hint": 2}.get(role, 3)
  return jax.random.fold_in(jax.random.PRNGKey(seed), role_key)


def inference_variables(state):
  return step_lib.model_variables(state.params["student"],
                                  state.batch_stats["student"])
