"""Evaluation of a trained model on a split: the metrics of kd_jax.metrics
over every batch, gathered from every process, and optionally every
example's class probabilities (the report's ROC curves)."""
from __future__ import annotations

import jax
from jax.experimental import multihost_utils
import numpy as np

from kd_jax import metrics
from kd_jax import reporting
from kd_jax.data import datasets as data
from kd_jax.train import sharding


def host_array(x) -> np.ndarray:
  """`x` whole on this host (gathered from every process when sharded)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


PREDICTIONS = "test_predictions.npz"  # per stage: ROC curves in reports


def evaluate(eval_jit, variables, teacher_vars, split, data_spec, mesh,
             has_teacher, predictions_path=None):
  """The split's metrics; with `predictions_path`, also writes every
  example's class probabilities and label there (.npz)."""
  acc = None
  for batch in data.eval_batches(
      split, global_batch=data_spec.eval_batch_size,
      image_size=data_spec.image_size,
      process_index=jax.process_index(), process_count=jax.process_count()):
    m = eval_jit(variables, teacher_vars, sharding.global_batch(batch, mesh))
    m = m.replace(scores=jax.tree.map(host_array, m.scores))
    acc = m if acc is None else acc.merge(m)
  acc = jax.device_get(acc)
  if predictions_path and jax.process_index() == 0:
    scores = acc.scores.compute()
    keep = scores["mask"] > 0
    reporting.write_atomic(predictions_path, lambda f: np.savez(
        f, probs=scores["probs"][keep].astype(np.float32),
        labels=scores["labels"][keep].astype(np.int32)))
  return metrics.summarize(acc, has_teacher)
