"""Precise BatchNorm statistics (Wu & Johnson, "Rethinking 'Batch' in
BatchNorm", 2021, sec. 3; fvcore's `update_bn_stats`).

A model evaluates with the running averages of its BatchNorm layers. After a
short run those averages still carry the statistics of earlier weights (with
flax momentum 0.9, 20 % of the mean after 15 steps is the initial zero) and
an inference-mode model can predict one class for every image while the
same weights in training mode fit the data. `recalibrate` replaces the
averages by the mean over N training batches of each batch's statistics
under the current weights; the train state keeps its own averages.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kd_jax.train import sharding


def make_batch_stats_fn(model, preprocess):
  """jitted `(variables, images, fill) -> batch_stats`: the model's
  BatchNorm update from averages all equal to `fill`, i.e.
  `m * fill + (1 - m) * batch statistic` with each layer's momentum m."""
  def fn(variables, images, fill):
    start = jax.tree.map(lambda a: jnp.full_like(a, fill),
                         variables["batch_stats"])
    _, updates = model.apply(
        {"params": variables["params"], "batch_stats": start},
        preprocess(images), train=True, mutable=["batch_stats"],
        rngs={"dropout": jax.random.PRNGKey(0)})
    return updates["batch_stats"]
  return jax.jit(fn)


def recalibrate(stats_fn, variables, image_batches, mesh) -> dict:
  """`variables` with every BatchNorm layer's running mean and variance set
  to the mean of the per-batch statistics over `image_batches` (an iterable
  of host uint8 arrays); unchanged without BatchNorm or batches."""
  if "batch_stats" not in variables:
    return variables
  total, keep, n = None, None, 0
  for images in image_batches:
    x = sharding.global_batch(images, mesh)
    scaled = stats_fn(variables, x, 0.0)
    if keep is None:
      # Each layer's momentum, read from the model itself (flax-, Keras- and
      # torchvision-style layers use 0.9, 0.99 and 0.999).
      keep = jax.tree.map(jnp.subtract, stats_fn(variables, x, 1.0), scaled)
    total = scaled if total is None else jax.tree.map(jnp.add, total, scaled)
    n += 1
  if not n:
    return variables
  stats = jax.tree.map(
      lambda s, m, old: jnp.where(m < 1.0, s / (n * (1.0 - m)), old),
      total, keep, variables["batch_stats"])
  return {**variables, "batch_stats": stats}
