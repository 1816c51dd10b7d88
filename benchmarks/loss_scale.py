"""How large each method's distillation term is against the CE at the end of
training, per setting of a finished study.

  python benchmarks/loss_scale.py STUDY_DIR

A distillation term whose weight was tuned on another task (the CRD
benchmark's beta on CIFAR-100 ResNets) can outweigh the label term by an
order of magnitude on a new one; this is the check to read beside a method
that lands below scratch. From each cell's `results.json`: the student
stage's training metrics of its last logging window, `feature_loss` (the
term before its weight beta), `loss` (CE + beta x term for a feature
method run alone) and, for a learned temperature (CTKD), `temperature`.
Prints, per setting (mean over its seeds): beta, beta x term, CE = loss -
beta x term, and their ratio (a setting without a feature term: its total
loss only), and the learned T where there is one.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kd_jax.study.report import setting_of  # noqa: E402


def student_metrics(results_path):
  with open(results_path) as f:
    stage = json.load(f)["stages"]["student"]
  m = stage.get("final_train_metrics", {})
  return (stage.get("feature_weight"), m.get("feature_loss"), m.get("loss"),
          m.get("temperature"))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("study_dir")
  args = ap.parse_args()
  by_setting = {}
  for path in sorted(glob.glob(os.path.join(args.study_dir, "*",
                                            "results.json"))):
    cell = os.path.basename(os.path.dirname(path))
    if cell == "teacher":
      continue
    by_setting.setdefault(setting_of(cell), []).append(student_metrics(path))
  print("| setting | seeds | beta | beta x term | CE | beta x term / CE "
        "| total loss | learned T |")
  print("|---|---|---|---|---|---|---|---|")
  for setting, rows in sorted(by_setting.items()):
    beta = rows[0][0]
    total = np.mean([r[2] for r in rows])
    temps = [r[3] for r in rows if r[3] is not None]
    t = f"{np.mean(temps):.2f}" if temps else "–"
    if beta is None or rows[0][1] is None:
      print(f"| {setting} | {len(rows)} | – | – | – | – | {total:.3f} | {t} |")
      continue
    term = np.mean([r[0] * r[1] for r in rows])
    ce = np.mean([r[2] - r[0] * r[1] for r in rows])
    print(f"| {setting} | {len(rows)} | {beta:g} | {term:.3f} | {ce:.3f} | "
          f"{term / ce:.1f} | {total:.3f} | {t} |")


if __name__ == "__main__":
  main()
