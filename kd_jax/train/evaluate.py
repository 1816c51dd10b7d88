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
from kd_jax.train import prefetch
from kd_jax.train import sharding


def host_array(x) -> np.ndarray:
  """`x` whole on this host (gathered from every process when sharded)."""
  if getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


PREDICTIONS = "test_predictions.npz"  # per stage: ROC curves in reports


def evaluate(eval_jit, variables, teacher_vars, split, data_spec, mesh,
             has_teacher, predictions_path=None):
  """The split's metrics (with its frames' videos and patients known, also
  per video and per patient: `metrics.unit_metrics`); with
  `predictions_path`, also writes every example's class probabilities and
  label there (.npz, with the videos and patients)."""
  host_batches = data.eval_batches(
      split, global_batch=data_spec.eval_batch_size,
      image_size=data_spec.image_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  fetch = lambda m: m.replace(scores=jax.tree.map(host_array, m.scores))
  acc = None
  with prefetch.Prefetcher(host_batches,
                           lambda b: sharding.global_batch(b, mesh),
                           data_spec.prefetch_depth) as placed:
    for m in prefetch.fetched_one_behind(
        (eval_jit(variables, teacher_vars, batch) for batch in placed), fetch):
      acc = m if acc is None else acc.merge(m)
  acc = jax.device_get(acc)
  units = {u: ids for u, ids in (("video", split.videos),
                                 ("patient", split.patients)) if ids is not None}
  scores = acc.scores.compute()
  keep = scores["mask"] > 0
  probs_NxC, labels_N = scores["probs"][keep], scores["labels"][keep]
  if predictions_path and jax.process_index() == 0:
    reporting.write_atomic(predictions_path, lambda f: np.savez(
        f, probs=probs_NxC.astype(np.float32),
        labels=labels_N.astype(np.int32), **units))
  out = metrics.summarize(acc, has_teacher)
  for unit, ids in units.items():  # frames in split order, as `ids`
    out |= metrics.unit_metrics(probs_NxC, labels_N, ids, unit)
  return out
