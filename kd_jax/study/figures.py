"""The figures of a study report (matplotlib, PNG):

  accuracy_per_student.png  test accuracy per student and method (best
                            setting, mean ± std over seeds), teacher as a line
  accuracy_vs_speedup.png   validation accuracy relative to the teacher vs
                            CPU speed-up, each student's best KD setting and
                            its scratch setting, point size = model MB
  settings_<student>.png    every setting of one student: validation
                            accuracy, mean ± std over seeds, the teacher's
                            as a line
  t_alpha_heatmap.png       mean test accuracy over T x alpha, per student
  training_curves.png       validation accuracy per epoch, mean over seeds
  roc.png                   binary tasks: test ROC curve of each method's
                            best setting, the teacher dashed
  confusion_best.png        test confusion matrix of the best student
                            setting, summed over seeds, row-normalised

Inputs are the tables of `kd_jax.report` (rows, settings, best settings) and
of `kd_jax.deployment`; matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from kd_jax.distill import methods


def method_label(method):
  """The method's display name: 'none' trains from scratch."""
  return methods.label(method)


def _save(fig, path):
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _bars(ax, best, students, names):
  """One bar group per student, one bar per method with std error bars."""
  width = 0.8 / max(len(names), 1)
  for j, m in enumerate(names):
    xs, ys, es = [], [], []
    for i, st in enumerate(students):
      if (st, m) in best:
        s = best[(st, m)]
        xs.append(i + (j - (len(names) - 1) / 2) * width)
        ys.append(s["test_accuracy_mean"])
        es.append(0 if math.isnan(s["test_accuracy_std"]) else s["test_accuracy_std"])
    ax.bar(xs, ys, width, yerr=es, capsize=3, label=method_label(m))


def plot_accuracy_per_student(best, teacher, path):
  """`best`: {(student, method): best setting}, in the summary's order."""
  import matplotlib.pyplot as plt
  students = list(dict.fromkeys(st for st, _ in best))
  names = list(dict.fromkeys(m for _, m in best))
  names.sort(key=lambda m: not methods.is_scratch(m))  # scratch first
  fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(students) * max(1, len(names) / 3)), 4))
  _bars(ax, best, students, names)
  if teacher is not None:
    ax.axhline(teacher["test"]["accuracy"], color="k", ls="--",
               label=f"teacher ({teacher['model']})")
  ax.set_xticks(range(len(students)), students, rotation=15)
  ax.set_ylabel("test accuracy (mean ± std over seeds)")
  ax.set_title("Best setting per method (picked on validation accuracy)",
               fontsize=10)
  ax.legend(fontsize=8)
  _save(fig, path)


def _relative_val(value, teacher):
  """Validation accuracy in % of the teacher's (the seeds' figure 7), or in
  % absolute when the teacher has no validation accuracy (imported)."""
  ref = (teacher or {}).get("best_val_accuracy")
  return 100 * value / ref if ref else 100 * value


def speedup_points(deploy, best, teacher):
  """[(label, x, y, MB, kind)]: the teacher at (1, 100) and, per student, its
  best KD setting and its scratch setting at the student's speed-up."""
  students = [d for d in deploy if d["role"] == "student"]
  timed = all(not math.isnan(d["speedup_vs_teacher"]) for d in students)
  xkey = "speedup_vs_teacher" if timed else "flops_ratio_vs_teacher"
  points = []
  if teacher is not None:
    points.append((teacher["model"], 1.0,
                   _relative_val(teacher.get("best_val_accuracy", 1.0) or 1.0,
                                 teacher), teacher["size_mb"], "teacher"))
  for d in students:
    kd = [s for (st, m), s in best.items()
          if st == d["model"] and not methods.is_scratch(m)]
    kinds = [("KD", max(kd, key=lambda s: s["val_selected_mean"]))] if kd else []
    if (d["model"], methods.SCRATCH) in best:
      kinds.append(("scratch", best[(d["model"], methods.SCRATCH)]))
    for kind, s in kinds:
      points.append((d["model"], d[xkey],
                     _relative_val(s["val_accuracy_mean"], teacher),
                     d["size_mb"], kind))
  return points, timed


def plot_accuracy_vs_speedup(deploy, best, teacher, path):
  """Every student trained with KD (its best setting) and from scratch:
  validation accuracy relative to the teacher vs CPU speed-up, point size =
  MB, as the seeds plot it. Falls back to the FLOPs ratio on the x axis
  when a student is untimed."""
  import matplotlib.pyplot as plt
  points, timed = speedup_points(deploy, best, teacher)
  fig, ax = plt.subplots(figsize=(6, 4.5))
  scale = 600 / max([p[3] for p in points] or [1])
  style = {"teacher": ("s", "k"), "KD": ("o", "tab:blue"),
           "scratch": ("X", "tab:orange")}
  for kind, (marker, color) in style.items():
    pts = [p for p in points if p[4] == kind and not math.isnan(p[1] + p[2])]
    ax.scatter([p[1] for p in pts], [p[2] for p in pts], alpha=0.5,
               s=[max(20, p[3] * scale) for p in pts], marker=marker,
               color=color, label=kind)
    for name, x, y, mb, _ in pts:
      ax.annotate(f"{name}\n{mb:.1f} MB", (x, y), fontsize=7, ha="center",
                  va="bottom")
  if any(p[1] > 0 for p in points if not math.isnan(p[1] + p[2])):
    ax.set_xscale("log")
  ax.set_xlabel("CPU inference speed-up vs teacher (batch 1)" if timed
                else "FLOPs ratio vs teacher (no timing run)")
  relative = bool((teacher or {}).get("best_val_accuracy"))
  ax.set_ylabel("validation accuracy relative to the teacher (%)" if relative
                else "validation accuracy (%)")
  ax.set_title("KD and scratch students: accuracy vs speed-up "
               "(point size = MB)", fontsize=10)
  ax.legend(fontsize=8, markerscale=0.5)
  ax.margins(0.2)
  _save(fig, path)


def plot_settings(summary, teacher, student, path):
  """One student's every setting: validation accuracy, mean ± std over
  seeds, scratch in orange, the teacher's as a dashed line (the seeds'
  figures 3-6, one per student)."""
  import matplotlib.pyplot as plt
  settings = [s for s in summary if s["student"] == student]
  fig, ax = plt.subplots(figsize=(6.5, 0.9 + 0.32 * len(settings)))
  ys = range(len(settings))
  vals = [100 * s["val_accuracy_mean"] for s in settings]
  stds = [0 if math.isnan(s.get("val_accuracy_std", math.nan))
          else 100 * s["val_accuracy_std"] for s in settings]
  colors = ["tab:orange" if methods.is_scratch(s["method"]) else "tab:blue"
            for s in settings]
  ax.barh(list(ys), vals, xerr=stds, color=colors, capsize=2, height=0.7)
  ax.set_yticks(list(ys), [s["setting"] for s in settings], fontsize=7)
  if teacher is not None and teacher.get("best_val_accuracy"):
    ax.axvline(100 * teacher["best_val_accuracy"], color="r", ls="--",
               label=f"teacher ({teacher['model']})")
    ax.legend(fontsize=7, loc="lower right")
  finite = [v for v in vals if not math.isnan(v)]
  if finite:  # zoom on the spread between settings, as the seeds' plots do
    lo, hi = min(finite), max(finite + [100 * (teacher or {}).get(
        "best_val_accuracy", 0)])
    ax.set_xlim(max(0, lo - 0.25 * (hi - lo) - 0.5), min(100, hi + 0.5))
  ax.set_xlabel("validation accuracy (%, mean ± std over seeds)")
  ax.set_title(f"Validation accuracy of {student}", fontsize=10)
  _save(fig, path)


def settings_figure_name(student: str) -> str:
  return f"settings_{student}.png"


def _heatmap_panel(fig, ax, student, method, settings):
  ts = sorted({float(s["temperature"]) for s in settings})
  als = sorted({float(s["alpha"]) for s in settings})
  grid = np.full((len(als), len(ts)), np.nan)
  for s in settings:
    grid[als.index(float(s["alpha"])), ts.index(float(s["temperature"]))] = (
        s["test_accuracy_mean"])
  im = ax.imshow(grid, origin="lower", cmap="viridis", aspect="auto")
  mid = (np.nanmin(grid) + np.nanmax(grid)) / 2
  for (i, j), v in np.ndenumerate(grid):
    if not np.isnan(v):  # dark text on the bright (high) cells
      ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7,
              color="k" if v > mid else "w")
  ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
  ax.set_yticks(range(len(als)), [f"{a:g}" for a in als])
  ax.set_xlabel("T")
  ax.set_ylabel("alpha")
  ax.set_title(f"{student} ({method})", fontsize=9)
  fig.colorbar(im, ax=ax, shrink=0.8)


def plot_t_alpha_heatmap(summary, path) -> bool:
  """Mean test accuracy over (T, alpha) per (student, method) for the
  methods that read a fixed T and alpha; False (no file) if no setting
  has them."""
  import matplotlib.pyplot as plt
  panels: dict = {}
  for s in summary:
    if methods.fixed_t_and_alpha(s["method"]) and s["temperature"] != "":
      panels.setdefault((s["student"], s["method"]), []).append(s)
  if not panels:
    return False
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8),
                           squeeze=False)
  for ax, ((student, method), settings) in zip(axes[0], panels.items()):
    _heatmap_panel(fig, ax, student, method, settings)
  fig.suptitle("Mean test accuracy over seeds")
  _save(fig, path)
  return True


def plot_training_curves(rows, path):
  import matplotlib.pyplot as plt
  students = list(dict.fromkeys(r["student"] for r in rows))
  fig, axes = plt.subplots(1, len(students), figsize=(5 * len(students), 3.8),
                           squeeze=False)
  for ax, student in zip(axes[0], students):
    curves: dict = {}
    for r in rows:
      if r["student"] == student:
        for h in r["history"]:
          curves.setdefault(r["setting"], {}).setdefault(h["epoch"], []).append(
              h["accuracy"])
    for setting, by_epoch in curves.items():
      epochs = sorted(by_epoch)
      ax.plot(epochs, [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
              marker="o", ms=3, label=setting, lw=1)
    ax.set_title(student, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (mean over seeds)")
    ax.legend(fontsize=6)
  _save(fig, path)


def roc_curve(labels_N, score_N):
  """(false positive rates, true positive rates) at every distinct score
  threshold, from (0, 0) to (1, 1)."""
  order = np.argsort(-np.asarray(score_N), kind="mergesort")
  s, y = np.asarray(score_N)[order], np.asarray(labels_N, bool)[order]
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
  tp, fp = np.cumsum(y)[last], np.cumsum(~y)[last]
  return (np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)])


def _load_predictions(path):
  if not path or not os.path.exists(path):
    return None
  with np.load(path) as f:
    return f["probs"], f["labels"]


def plot_roc_curves(rows, best, teacher, path) -> bool:
  """Binary tasks: the test ROC curve of each (student, method)'s best
  setting (its first seed's run), the teacher dashed."""
  import matplotlib.pyplot as plt
  curves = []
  for (student, method), s in best.items():
    run = next((r for r in rows if r["setting"] == s["setting"]), None)
    pred = _load_predictions(run and run.get("predictions"))
    if pred is not None and pred[0].shape[-1] == 2:
      curves.append((f"{student} {method_label(method)} (AUC "
                     f"{s['test_auc_mean']:.3f})", pred, "-"))
  t_pred = _load_predictions(teacher.get("predictions")) if teacher else None
  if t_pred is not None and t_pred[0].shape[-1] == 2:
    curves.append((f"teacher {teacher['model']}", t_pred, "--"))
  if not curves:
    return False
  fig, ax = plt.subplots(figsize=(5, 4.5))
  for label, (probs, labels), ls in curves:
    ax.plot(*roc_curve(labels == 1, probs[:, 1]), ls=ls, lw=1.2, label=label)
  ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title("Test ROC, best setting per method (first seed)", fontsize=10)
  ax.legend(fontsize=6)
  _save(fig, path)
  return True


def plot_confusion_best(rows, best, path) -> bool:
  """The confusion matrix of the best student setting (highest mean
  validation value of the selection metric), summed over its seeds and
  normalised per true class."""
  import matplotlib.pyplot as plt
  if not best:
    return False
  top = max(best.values(), key=lambda s: -math.inf if math.isnan(
      s["val_selected_mean"]) else s["val_selected_mean"])
  runs = [r for r in rows if r["setting"] == top["setting"] and r["confusion"]]
  if not runs:
    return False
  cm = np.sum([np.asarray(r["confusion"]) for r in runs], axis=0)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  names = runs[0]["class_names"] or [str(i) for i in range(len(cm))]
  fig, ax = plt.subplots(figsize=(1.2 * len(cm) + 2, 1.1 * len(cm) + 1.5))
  ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  for i in range(len(cm)):
    for j in range(len(cm)):
      ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.2f}", ha="center", va="center",
              fontsize=7, color="w" if norm[i, j] > 0.5 else "k")
  ax.set_xticks(range(len(cm)), names, rotation=30)
  ax.set_yticks(range(len(cm)), names)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(f"{top['setting']} (test, {len(runs)} seed(s))", fontsize=8)
  _save(fig, path)
  return True


def write_figures(out_dir, *, rows, summary, best, teacher, deploy) -> list:
  """Draws every figure into out_dir; returns the file names written, in
  the report's order (the heatmap only where a setting has T and alpha)."""
  import matplotlib
  if "matplotlib.pyplot" not in sys.modules:  # headless unless already set up
    matplotlib.use("Agg")
  figures = ["accuracy_per_student.png", "accuracy_vs_speedup.png"]
  plot_accuracy_per_student(best, teacher, os.path.join(out_dir, figures[0]))
  plot_accuracy_vs_speedup(deploy, best, teacher,
                           os.path.join(out_dir, figures[1]))
  for student in dict.fromkeys(s["student"] for s in summary):
    name = settings_figure_name(student)
    plot_settings(summary, teacher, student, os.path.join(out_dir, name))
    figures.append(name)
  if plot_t_alpha_heatmap(summary,
                          os.path.join(out_dir, "t_alpha_heatmap.png")):
    figures.append("t_alpha_heatmap.png")
  plot_training_curves(rows, os.path.join(out_dir, "training_curves.png"))
  figures.append("training_curves.png")
  if plot_roc_curves(rows, best, teacher, os.path.join(out_dir, "roc.png")):
    figures.append("roc.png")
  if plot_confusion_best(rows, best, os.path.join(out_dir,
                                                   "confusion_best.png")):
    figures.append("confusion_best.png")
  return figures
