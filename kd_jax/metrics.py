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
  # Every example's class probabilities, gathered on the host: ranking
  # metrics (ROC-AUC, PR-AUC) are not sums over batches.
  scores: clu_metrics.CollectingMetric.from_outputs(("probs", "labels", "mask"))



def roc_auc_binary(y_N, score_N) -> float | None:
  """Area under the ROC curve: the probability that a random positive
  scores above a random negative, ties counting one half (the
  Mann-Whitney U statistic); None when one class is absent."""
  y = np.asarray(y_N, bool)
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return None
  order = np.argsort(score_N, kind="mergesort")
  s = np.asarray(score_N, np.float64)[order]
  # Average ranks over runs of tied scores: every member of a run starting
  # at sorted position st with c members has rank st + (c + 1) / 2.
  _, start, counts = np.unique(s, return_index=True, return_counts=True)
  ranks = np.repeat(start + (counts + 1) / 2.0, counts)
  rank_sum = ranks[y[order]].sum()
  return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(y_N, score_N) -> float | None:
  """PR-AUC as average precision: sum over score thresholds of precision
  times the recall gained there (scikit-learn's average_precision_score)."""
  y = np.asarray(y_N, bool)
  if not y.any():
    return None
  order = np.argsort(-np.asarray(score_N, np.float64), kind="mergesort")
  s, t = np.asarray(score_N, np.float64)[order], y[order]
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # end of each tie run
  tp = np.cumsum(t)[last]
  precision = tp / (last + 1)
  recall = tp / y.sum()
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ranking_metrics(probs_NxC, labels_N) -> dict:
  """ROC-AUC (binary: of class 1; more classes: one-vs-rest macro over the
  classes present) and, binary only, PR-AUC."""
  probs, labels = np.asarray(probs_NxC), np.asarray(labels_N)
  c = probs.shape[-1]
  if c == 2:
    return {"auc": roc_auc_binary(labels == 1, probs[:, 1]),
            "pr_auc": average_precision(labels == 1, probs[:, 1])}
  per_class = [roc_auc_binary(labels == k, probs[:, k]) for k in range(c)]
  per_class = [a for a in per_class if a is not None]
  return {"auc": float(np.mean(per_class)) if per_class else None}


def recall_metrics(confusion_CxC) -> dict:
  """Per-class recall and their mean over the classes present in the
  labels (balanced accuracy, as scikit-learn's balanced_accuracy_score)."""
  cm = np.asarray(confusion_CxC, np.float64)
  support = cm.sum(1)
  recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
  present = support > 0
  return {"balanced_accuracy": float(recall[present].mean()) if present.any()
          else 0.0,
          "per_class_recall": [None if np.isnan(r) else float(r)
                               for r in recall]}


def failure_warning(confusion_CxC, class_names, *,
                    collapse_share=0.9) -> str | None:
  """Why a split's predictions show a model that has learnt nothing, or
  None: at least `collapse_share` of them are one class, or the balanced
  accuracy is no more than two standard errors above chance (p = 1/C on n
  images: p + 2 sqrt(p (1 - p) / n)), where a model that guesses lands.
  Short runs and BatchNorm statistics that do not describe the data end
  like this while the training metrics look fine."""
  cm = np.asarray(confusion_CxC, np.float64)
  n, classes = cm.sum(), cm.shape[0]
  if n == 0 or classes < 2:
    return None
  predicted = cm.sum(0) / n
  top = int(np.argmax(predicted))
  if predicted[top] >= collapse_share:
    return (f"predicts {class_names[top]!r} for {100 * predicted[top]:.0f}% "
            "of val images")
  balanced = recall_metrics(cm)["balanced_accuracy"]
  p = 1.0 / classes
  if balanced <= p + 2.0 * np.sqrt(p * (1.0 - p) / n):
    return (f"val balanced accuracy {balanced:.3f} is at chance "
            f"(1/{classes} = {1.0 / classes:.3f})")
  return None


def unit_metrics(probs_NxC, labels_N, units_N, unit: str) -> dict:
  """Accuracy over units of several frames (a video, a patient): a unit's
  class is the argmax of its frames' mean probability (`<unit>_accuracy`)
  or its frames' majority vote, a tie to the tied class of higher mean
  probability, as `kd_jax.predict` breaks it (`<unit>_vote_accuracy`); its
  label is its frames' most common one.
  `<unit>s`: how many units."""
  probs = np.asarray(probs_NxC, np.float64)
  labels, units = np.asarray(labels_N), np.asarray(units_N)
  names, inverse = np.unique(units, return_inverse=True)
  classes = probs.shape[1]
  mean = np.zeros((len(names), classes))
  np.add.at(mean, inverse, probs)
  votes = np.zeros((len(names), classes))
  np.add.at(votes, (inverse, probs.argmax(1)), 1)
  truth = np.zeros((len(names), classes))
  np.add.at(truth, (inverse, labels), 1)
  label_U = truth.argmax(1)
  mean /= np.bincount(inverse)[:, None]
  # Whole votes first; the mean probability (< 1) only breaks their ties.
  vote_U = (votes + 0.5 * mean).argmax(1)
  return {f"{unit}_accuracy": float((mean.argmax(1) == label_U).mean()),
          f"{unit}_vote_accuracy": float((vote_U == label_U).mean()),
          f"{unit}s": int(len(names))}


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
  scores = out["scores"]
  keep = np.asarray(scores["mask"]) > 0
  res = {"loss": float(out["loss"]), "accuracy": float(out["accuracy"]),
         "macro_f1": macro_f1(out["confusion"]),
         **recall_metrics(out["confusion"]),
         **ranking_metrics(np.asarray(scores["probs"])[keep],
                           np.asarray(scores["labels"])[keep]),
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
