"""A binary, imbalanced study's report: AUC and balanced accuracy with mean ±
CI over seeds, the best setting chosen by the cells' selection metric, ROC
curves and the best student's confusion matrix."""
import json
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from kd_jax.study import figures
from kd_jax.study import report
from kd_jax.study import stats
from tests import helpers

# AUC per seed; validation AUC picks 'vanilla T=1' although 'vanilla T=4'
# has the higher validation accuracy.
CELLS = {"student-s__method-none": (0.70, 0.60, 0.80),
         "student-s__method-vanilla__T-1": (0.80, 0.90, 0.75),
         "student-s__method-vanilla__T-4": (0.78, 0.70, 0.85)}
AUCS = {"student-s__method-none": (0.71, 0.73, 0.72),
        "student-s__method-vanilla__T-1": (0.80, 0.84, 0.82),
        "student-s__method-vanilla__T-4": (0.75, 0.77, 0.76)}


@pytest.fixture
def binary_study(tmp_path):
  root = tmp_path / "study"
  for name, (acc, val_auc, val_acc) in CELLS.items():
    for seed in range(3):
      d = root / f"{name}__seed-{seed}"
      (d / "student").mkdir(parents=True)
      helpers.write_binary_predictions(
          str(d / "student" / "test_predictions.npz"), seed, 60, 0.3)
      method = "none" if "none" in name else "vanilla"
      config = {"seed": seed, "dataset": {"image_size": 32},
                "kd": {"temperature": 1.0, "alpha": 0.3, "schedule": "cosine"}}
      stage = {"model": "s", "method": method, "params": 10, "size_mb": 1.0,
               "image_size": 32, "num_classes": 2, "dataset": "mhist",
               "select_metric": "auc", "best_val": val_auc,
               "best_val_accuracy": val_acc,
               "test": {"accuracy": acc, "macro_f1": acc,
                        "balanced_accuracy": acc - 0.1,
                        "auc": AUCS[name][seed], "pr_auc": 0.5,
                        "confusion": [[30, 5], [8, 17]]},
               "history": [{"epoch": 1, "accuracy": val_acc}]}
      (d / "config.json").write_text(json.dumps(config))
      (d / "results.json").write_text(json.dumps(
          {"config": config, "class_names": ["HP", "SSA"],
           "stages": {"student": stage}}))
  return str(root)


def test_binary_study_report(binary_study):
  out = report.make_report(binary_study, timing=False, profile_fn=lambda *a: {
      "gflops": 0.1})
  summary = {s["setting"]: s for s in out["summary"]}
  for name, aucs in AUCS.items():
    want = stats.summarize(aucs)
    got = summary[name.replace("__", "__", 1)]
    assert got["test_auc_mean"] == pytest.approx(want.mean)
    assert got["test_auc_ci95_low"] == pytest.approx(want.ci_low)
  best = report.best_settings(out["summary"])
  assert best[("s", "vanilla")]["setting"] == "student-s__method-vanilla__T-1"
  assert "roc.png" in out["figures"] and "confusion_best.png" in out["figures"]
  assert "Selected on: auc" in out["markdown"]
  assert os.path.getsize(os.path.join(out["out_dir"], "roc.png")) > 1000


def test_roc_curve_points_match_sklearn():
  rng = np.random.default_rng(1)
  y = rng.integers(0, 2, 80)
  s = np.round(rng.uniform(size=80), 1)
  fpr, tpr = figures.roc_curve(y == 1, s)
  ref_fpr, ref_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, ref_fpr)
  np.testing.assert_allclose(tpr, ref_tpr)
  assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, s))
