"""Metrics: clu metric collections, macro-F1, and the run's metric writers.

Evaluation metrics are clu `Collection`s computed inside the jitted eval step
and merged on the host; training metrics are per-step scalars averaged over
the logging window. Writers: TensorBoard (clu `SummaryWriter`) plus a
`metrics.jsonl` file (one JSON object per write: easy to plot or cite).
"""

import json
import os

import flax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


@flax.struct.dataclass
class ConfusionMatrix(clu_metrics.Metric):
  """Counts [true class, predicted class]; padded rows are masked out."""
  matrix: jnp.ndarray

  @classmethod
  def from_model_output(cls, *, logits, labels, mask=None, **_):
    num_classes = logits.shape[-1]
    pred = jnp.argmax(logits, axis=-1)
    w = jnp.ones_like(labels, jnp.int32) if mask is None else mask.astype(jnp.int32)
    matrix = jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, pred].add(w)
    return cls(matrix=matrix)

  def merge(self, other):
    return type(self)(matrix=self.matrix + other.matrix)

  def compute(self):
    return self.matrix


@flax.struct.dataclass
class EvalMetrics(clu_metrics.Collection):
  loss: clu_metrics.Average.from_output("loss")
  accuracy: clu_metrics.Accuracy
  agreement: clu_metrics.Average.from_output("agree")
  confusion: ConfusionMatrix


def macro_f1(confusion_CxC) -> float:
  """Unweighted mean F1 over classes that occur in the labels or predictions
  (scikit-learn's f1_score(average='macro') with zero_division=0)."""
  cm = np.asarray(confusion_CxC, np.float64)
  tp = np.diag(cm)
  support, predicted = cm.sum(1), cm.sum(0)
  present = (support + predicted) > 0
  denom = support + predicted
  f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
  return float(f1[present].mean()) if present.any() else 0.0


def summarize(m: EvalMetrics, has_teacher: bool) -> dict:
  out = m.compute()
  res = {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]),
         "macro_f1": macro_f1(out["confusion"]),
         "confusion": np.asarray(out["confusion"]).tolist()}
  if has_teacher:
    res["agreement"] = float(out["agreement"])
  return res


class JsonlWriter:
  """Appends {'step': s, name: value, ...} lines to a JSONL file (clu's
  MetricWriter interface, duck-typed: clu.metric_writers imports TensorFlow,
  which kd_jax imports only when it writes TensorBoard files)."""

  def __init__(self, path):
    self._f = open(path, "a", encoding="utf-8")

  def write_scalars(self, step, scalars):
    self._f.write(json.dumps({"step": int(step), **{
        k: float(v) for k, v in scalars.items()}}) + "\n")

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_texts(self, step, texts):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def write_hparams(self, hparams):
    self._f.write(json.dumps({"hparams": {k: str(v) for k, v in hparams.items()}}) + "\n")

  def flush(self):
    self._f.flush()

  def close(self):
    self._f.close()


def create_writer(logdir: str, primary: bool):
  """TensorBoard + JSONL on the primary process; nothing elsewhere."""
  from clu import metric_writers  # late: it imports TensorFlow
  if not primary:
    return metric_writers.MultiWriter([])
  os.makedirs(logdir, exist_ok=True)
  return metric_writers.MultiWriter([
      metric_writers.SummaryWriter(logdir),
      JsonlWriter(os.path.join(logdir, "metrics.jsonl")),
  ])
