"""Clinical metrics against scikit-learn on fixed arrays: ROC-AUC (binary and
one-vs-rest macro), PR-AUC, balanced accuracy, per-class recall; through the
eval step's metric collection (padded batches merged) too; the selection
metric picks the best epoch."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from kd_jax import metrics
from kd_jax.train import pipeline as train
from tests import helpers

RNG = np.random.default_rng(0)
# Scores rounded to one decimal: many ties, which ROC-AUC must count 1/2.
Y2 = RNG.integers(0, 2, 200)
S2 = np.round(np.clip(0.3 * Y2 + RNG.uniform(0, 0.8, 200), 0, 1), 1)
Y4 = RNG.integers(0, 4, 300)
P4 = RNG.dirichlet(np.ones(4), 300)
P4[np.arange(300), Y4] += 0.3
P4 /= P4.sum(1, keepdims=True)


def test_binary_auc_and_average_precision_equal_sklearn():
  assert metrics.roc_auc_binary(Y2 == 1, S2) == pytest.approx(
      skm.roc_auc_score(Y2, S2), abs=1e-12)
  assert metrics.average_precision(Y2 == 1, S2) == pytest.approx(
      skm.average_precision_score(Y2, S2), abs=1e-12)
  assert metrics.roc_auc_binary(np.zeros(5, bool), np.arange(5.0)) is None


def test_multiclass_auc_is_one_vs_rest_macro():
  got = metrics.ranking_metrics(P4, Y4)
  assert got["auc"] == pytest.approx(
      skm.roc_auc_score(Y4, P4, multi_class="ovr", average="macro"), abs=1e-12)
  assert "pr_auc" not in got


def test_recalls_equal_sklearn():
  pred = np.argmax(P4, -1)
  cm = skm.confusion_matrix(Y4, pred, labels=range(4))
  got = metrics.recall_metrics(cm)
  assert got["balanced_accuracy"] == pytest.approx(
      skm.balanced_accuracy_score(Y4, pred), abs=1e-12)
  assert got["per_class_recall"] == pytest.approx(
      list(skm.recall_score(Y4, pred, average=None)), abs=1e-12)


def test_eval_step_metrics_over_padded_batches_equal_sklearn():
  """Two eval batches, the second padded (mask 0), merged as train.evaluate.evaluate
  merges them: the padded rows count nowhere."""
  logits = np.log(P4).astype(np.float32)
  parts = []
  for lo, hi in ((0, 160), (160, 300)):
    pad = 160 - (hi - lo)
    lg = np.concatenate([logits[lo:hi], np.zeros((pad, 4), np.float32)])
    lb = np.concatenate([Y4[lo:hi], np.zeros(pad, np.int64)])
    mask = np.arange(160) < hi - lo
    parts.append(metrics.EvalMetrics.single_from_model_output(
        logits=jnp.asarray(lg), labels=jnp.asarray(lb),
        mask=jnp.asarray(mask), loss=jnp.zeros(160), agree=jnp.zeros(160),
        probs=jax.nn.softmax(jnp.asarray(lg), -1)))
  res = metrics.summarize(parts[0].merge(parts[1]), False)
  pred = np.argmax(P4, -1)
  assert res["accuracy"] == pytest.approx(skm.accuracy_score(Y4, pred))
  assert res["balanced_accuracy"] == pytest.approx(
      skm.balanced_accuracy_score(Y4, pred))
  assert res["auc"] == pytest.approx(
      skm.roc_auc_score(Y4, P4, multi_class="ovr", average="macro"), abs=1e-6)


def test_select_metric_picks_the_best_epoch_and_is_reported(tmp_path):
  folder = helpers.write_image_folder(str(tmp_path / "f"), classes=("HP", "SSA"))
  wd = str(tmp_path / "run")
  r = helpers.run_cli("--config=configs/quickstart.py:runlocal,dataset=folder,"
                      "method=none", f"--config.dataset.data_dir={folder}",
                      "--config.num_epochs=2", "--config.select_metric=auc",
                      f"--workdir={wd}")
  assert r.returncode == 0, r.stderr[-2000:]
  res = helpers.read_json(os.path.join(wd, "student", "results.json"))
  aucs = [h["auc"] for h in res["history"]]
  assert res["select_metric"] == "auc" and res["best_val"] == max(aucs)
  assert res["best_epoch"] == 1 + int(np.argmax(aucs))
  for key in ("auc", "pr_auc", "balanced_accuracy", "per_class_recall"):
    assert key in res["test"]
  assert " AUC " in r.stdout.splitlines()[-5] or "AUC" in r.stdout
  events = [json.loads(l) for l in open(os.path.join(
      wd, "student", "logs", "metrics.jsonl"))]
  assert any("val_auc" in e and "val_recall_SSA" in e for e in events)


def test_failure_warning_names_a_collapsed_class_or_chance():
  names = ("A2C", "A4C", "PLAX", "PSAX")
  collapsed = np.zeros((4, 4), int)
  collapsed[:, 2] = 10  # every image predicted PLAX
  assert metrics.failure_warning(collapsed, names) == (
      "predicts 'PLAX' for 100% of val images")
  chance = np.full((4, 4), 5)  # predictions spread, recall 0.25 per class
  assert metrics.failure_warning(chance, names) == (
      "val balanced accuracy 0.250 is at chance (1/4 = 0.250)")
  # Within two standard errors of chance (72 images: 0.25 + 0.102): a
  # guess; above them (88 images: 0.25 + 0.092): something learnt.
  near = np.full((4, 4), 4) + np.eye(4, dtype=int) * 2  # recall 6/18
  assert "0.333 is at chance" in metrics.failure_warning(near, names)
  above = np.full((4, 4), 4) + np.eye(4, dtype=int) * 6  # recall 10/22
  assert metrics.failure_warning(above, names) is None
  good = np.eye(4, dtype=int) * 10 + 1
  assert metrics.failure_warning(good, names) is None
  assert metrics.failure_warning(np.zeros((4, 4), int), names) is None


def test_a_run_that_learns_nothing_warns_in_one_line(tmp_path, capsys):
  """Four steps of a BatchNorm student: its running statistics still
  describe the initialisation, so in inference mode it answers one class
  (the echo pilot's failure, in seconds)."""
  c = helpers.tiny_config("dataset=digits,method=none,student=resnet8",
                          num_epochs=1, **{"dataset.eval_limit": 400})
  train.train_and_evaluate(c, str(tmp_path / "run"))
  lines = [l for l in capsys.readouterr().out.splitlines()
           if l.startswith("kd_jax: warning: [student]")]
  assert len(lines) == 1, lines
  assert "resnet8 predicts '3' for 98% of val images at epoch 1: it has " \
      "learnt nothing" in lines[0]
