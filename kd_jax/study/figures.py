"""The figures of a study report (matplotlib, PNG):

  accuracy_per_student.png  test accuracy per student and method (best
                            setting by validation, mean ± std over seeds),
                            the teacher's test accuracy as a line
  accuracy_vs_speedup.png   test accuracy vs CPU speed-up (the FLOPs ratio
                            when untimed): the teacher at its own test
                            accuracy, per student its best KD setting and
                            its scratch setting, point size = model MB
  settings_<student>.png    every setting of one student: test accuracy,
                            mean ± std over seeds, the teacher's as a line
  t_alpha_heatmap.png       mean test accuracy over T x alpha, per student
  training_curves.png       validation accuracy per epoch, mean over seeds
  roc.png                   binary tasks: test ROC curve of each method's
                            best setting, the teacher dashed
  confusion_best.png        test confusion matrix of the best student
                            setting, summed over seeds, row-normalised

Every point of a figure is on one basis (the same metric and split for the
teacher and the students); a teacher without that value is left out and a
legend entry says so. A method has one colour in every figure
(`METHOD_COLORS`). Each figure that compares methods has a pure function
that computes what it plots (`*_data`: points, error bars, axis limits,
colours, the teacher's line) and a `draw_*` that draws that dict; tests read
the dicts.

Inputs are the tables of `kd_jax.report` (rows, settings, best settings) and
of `kd_jax.deployment`; matplotlib is imported only when a figure is drawn.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from kd_jax.distill import methods

TEACHER_COLOR = "#000000"
SCRATCH_COLOR = "#7f7f7f"  # the baseline in neutral grey
OTHER_COLOR = "#333333"  # a method name the registry does not hold
# tab10 without its grey, then tab20b's dark shades, tab20's light ones,
# tab20b's middle and light ones and tab20c's dark ones: one distinct colour
# for each method of the registry.
_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
            "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31",
            "#843c39", "#7b4173", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#dbdb8d", "#5254a3", "#8ca252", "#bd9e39", "#ad494a",
            "#a55194", "#6b6ecf", "#b5cf6b", "#e7ba52", "#9c9ede", "#cedb9c",
            "#e7cb94", "#e7969c", "#de9ed6", "#3182bd", "#e6550d", "#31a354",
            "#756bb1", "#fd8d3c")


def _method_colors() -> dict:
  """{method: colour}, by the registry's order, so that a method keeps its
  colour in every figure and every study."""
  others = [m for m in methods.METHODS if not methods.is_scratch(m)]
  colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(others)}
  return colors | {methods.SCRATCH: SCRATCH_COLOR}


METHOD_COLORS = _method_colors()
# Line styles of a method's settings in one panel (the teacher's is '--').
_STYLES = ("-", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))


def method_color(method) -> str:
  return METHOD_COLORS.get(method, OTHER_COLOR)


def method_label(method):
  """The method's display name: 'none' trains from scratch."""
  return methods.label(method)


def teacher_accuracy(teacher):
  """The teacher's test accuracy (the split and metric the students are
  plotted with), or None where it has none."""
  acc = ((teacher or {}).get("test") or {}).get("accuracy")
  return None if acc is None or math.isnan(float(acc)) else float(acc)


def _teacher_line(teacher):
  """(line, notes): the teacher's test accuracy in % with its label, or
  None and a note that says why it is not drawn."""
  if teacher is None:
    return None, []
  acc = teacher_accuracy(teacher)
  if acc is None:
    return None, [f"teacher {teacher['model']}: no test accuracy, not drawn"]
  return {"model": teacher["model"], "y": 100 * acc,
          "label": f"teacher {teacher['model']}: {100 * acc:.2f} %"}, []


def _err(std) -> float:
  """An error bar in %: 0 where the std is NaN (one seed)."""
  return 0.0 if std is None or math.isnan(std) else 100 * float(std)


def span(lows, highs, *, pad=0.1, min_pad=0.5):
  """Axis limits that hold every value in [min(lows), max(highs)] (points
  minus and plus their error bars) with a margin of `pad` of the range (at
  least `min_pad`), not below 0 unless a value is."""
  if not lows:
    return (0.0, 100.0)
  lo, hi = min(lows), max(highs)
  margin = max(pad * (hi - lo), min_pad)
  return (max(lo - margin, 0.0) if lo >= 0 else lo - margin, hi + margin)


def _note_entries(ax, notes):
  """The figure's notes as text-only legend entries."""
  for note in notes:
    ax.plot([], [], " ", label=note)


def _legend(ax, *, fontsize=8):
  """The legend right of the axes, where it hides no point."""
  return ax.legend(fontsize=fontsize, loc="upper left",
                   bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _save(fig, path):
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ------------------------------------------------- best setting per student


def per_student_data(best, teacher) -> dict:
  """`best`: {(student, method): best setting}, in the summary's order. One
  bar group per student, one bar per method (scratch first): test accuracy
  in %, mean ± std over seeds."""
  students = list(dict.fromkeys(st for st, _ in best))
  names = sorted(dict.fromkeys(m for _, m in best),
                 key=lambda m: not methods.is_scratch(m))
  width = 0.8 / max(len(names), 1)
  bars = []
  for j, m in enumerate(names):
    for i, st in enumerate(students):
      if (st, m) in best:
        s = best[(st, m)]
        bars.append({"student": st, "method": m, "label": method_label(m),
                     "color": method_color(m), "setting": s["setting"],
                     "x": i + (j - (len(names) - 1) / 2) * width,
                     "y": 100 * s["test_accuracy_mean"],
                     "err": _err(s["test_accuracy_std"])})
  line, notes = _teacher_line(teacher)
  notes += [f"{b['setting']}: no test accuracy, not drawn"
            for b in bars if math.isnan(b["y"])]
  bars = [b for b in bars if not math.isnan(b["y"])]
  tops = [b["y"] + b["err"] for b in bars] + ([line["y"]] if line else [])
  # Bars start at 0: a bar's length is its value.
  return {"students": students, "bars": bars, "width": width,
          "teacher": line, "notes": notes, "ylim": span([0.0], tops),
          # 2 inches hold the legend right of the axes.
          "figsize": (2.0 + max(4.0, 1.6 * len(students)
                                * max(1, len(names) / 3)), 4.0),
          "ylabel": "test accuracy (%, mean ± std over seeds)"}


def draw_accuracy_per_student(data):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=data["figsize"])
  for label in dict.fromkeys(b["label"] for b in data["bars"]):
    bars = [b for b in data["bars"] if b["label"] == label]
    ax.bar([b["x"] for b in bars], [b["y"] for b in bars], data["width"],
           yerr=[b["err"] for b in bars], capsize=3, label=label,
           color=bars[0]["color"])
  if data["teacher"]:
    ax.axhline(data["teacher"]["y"], color=TEACHER_COLOR, ls="--",
               label=data["teacher"]["label"])
  _note_entries(ax, data["notes"])
  ax.set_xticks(range(len(data["students"])), data["students"], rotation=15)
  ax.set_ylim(*data["ylim"])
  ax.set_ylabel(data["ylabel"])
  ax.set_title("Best setting per method (picked on validation accuracy)",
               fontsize=10)
  _legend(ax)
  return fig


# ------------------------------------------------------- accuracy vs speed


def _selected(setting) -> float:
  """The setting's mean validation value of the selection metric; a NaN
  never wins."""
  v = setting["val_selected_mean"]
  return -math.inf if math.isnan(v) else v


def _student_points(d, best, xkey):
  """A student's best KD setting (by validation) and its scratch setting at
  the student's speed-up."""
  kd = [(m, s) for (st, m), s in best.items()
        if st == d["model"] and not methods.is_scratch(m)]
  picked = [max(kd, key=lambda ms: _selected(ms[1]))] if kd else []
  if (d["model"], methods.SCRATCH) in best:
    picked.append((methods.SCRATCH, best[(d["model"], methods.SCRATCH)]))
  return [{"model": d["model"], "method": m,
           "kind": "scratch" if methods.is_scratch(m) else "KD",
           "label": ("scratch" if methods.is_scratch(m)
                     else f"KD: {method_label(m)}"),
           "setting": s["setting"], "x": d[xkey],
           "y": 100 * s["test_accuracy_mean"],
           "err": _err(s["test_accuracy_std"]), "size_mb": d["size_mb"],
           "color": method_color(m),
           "marker": "X" if methods.is_scratch(m) else "o"}
          for m, s in picked]


def speedup_data(deploy, best, teacher) -> dict:
  """The teacher at speed-up 1 and its test accuracy, and per student its
  best KD setting and its scratch setting: test accuracy in %, mean ± std
  over seeds, at the student's CPU speed-up (its FLOPs ratio when a student
  is untimed). Points without a value are left out with a note."""
  students = [d for d in deploy if d["role"] == "student"]
  timed = all(not math.isnan(d["speedup_vs_teacher"]) for d in students)
  xkey = "speedup_vs_teacher" if timed else "flops_ratio_vs_teacher"
  line, notes = _teacher_line(teacher)
  # The deployment row's size: the int8 file's under --deploy_format=int8,
  # as the students' are.
  t_size = next((d["size_mb"] for d in deploy if d["role"] == "teacher"
                 and not math.isnan(d.get("size_mb", math.nan))),
                (teacher or {}).get("size_mb"))
  points = [] if line is None else [{
      "model": teacher["model"], "method": None, "kind": "teacher",
      "label": line["label"], "setting": "teacher", "x": 1.0, "y": line["y"],
      "err": 0.0, "size_mb": t_size, "color": TEACHER_COLOR,
      "marker": "s"}]
  for d in students:
    points += _student_points(d, best, xkey)
  drawn = [p for p in points if not math.isnan(p["x"] + p["y"])]
  notes += [f"{p['model']} ({p['label']}): no value, not drawn"
            for p in points if math.isnan(p["x"] + p["y"])]
  xs = [p["x"] for p in drawn]
  log = bool(xs) and min(xs) > 0
  return {"timed": timed, "points": drawn, "notes": notes,
          "xscale": "log" if log else "linear",
          "xlim": ((min(xs) / 1.8, max(xs) * 1.8) if log else
                   span(xs, xs, pad=0.15) if xs else (0.0, 2.0)),
          "ylim": span([p["y"] - p["err"] for p in drawn],
                       [p["y"] + p["err"] for p in drawn], pad=0.2),
          "xlabel": ("CPU inference speed-up vs teacher (batch 1)" if timed
                     else "FLOPs ratio vs teacher (no timing run)"),
          "ylabel": "test accuracy (%, mean ± std over seeds)"}


def draw_accuracy_vs_speedup(data):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7.5, 4.8))
  points = data["points"]
  # Area per MB from the largest known size (NaN or 0 MB: the smallest dot).
  scale = 600 / max([p["size_mb"] for p in points if p["size_mb"] > 0],
                    default=1)
  for label in dict.fromkeys(p["label"] for p in points):
    pts = [p for p in points if p["label"] == label]
    bars = [p for p in pts if p["err"] > 0]
    ax.errorbar([p["x"] for p in bars], [p["y"] for p in bars],
                yerr=[p["err"] for p in bars], fmt="none",
                ecolor=pts[0]["color"], capsize=3, lw=1)
    ax.scatter([p["x"] for p in pts], [p["y"] for p in pts], alpha=0.6,
               s=[max(20, p["size_mb"] * scale) for p in pts],
               marker=pts[0]["marker"], color=pts[0]["color"], label=label)
  for p in points:  # right of the marker: its radius is sqrt(area) / 2
    ax.annotate(f"{p['model']}, {p['size_mb']:.1f} MB", (p["x"], p["y"]),
                fontsize=7, ha="left", va="center", textcoords="offset points",
                xytext=(math.sqrt(max(20, p["size_mb"] * scale)) / 2 + 4, 0))
  _note_entries(ax, data["notes"])
  ax.set_xscale(data["xscale"])
  ax.set_xlim(*data["xlim"])
  ax.set_ylim(*data["ylim"])
  ax.set_xlabel(data["xlabel"])
  ax.set_ylabel(data["ylabel"])
  ax.set_title("Test accuracy vs speed-up (point size = MB)", fontsize=10)
  for handle in _legend(ax).legend_handles:  # one marker size in the legend
    if hasattr(handle, "set_sizes"):
      handle.set_sizes([40])
  return fig


# ------------------------------------------------------ a student's settings


def setting_label(setting: dict, student: str) -> str:
  """A setting's tick label: its method's display name, then the other
  parts of its name (T, alpha, ...) one a line; the student is the
  figure's."""
  parts = [p for p in setting["setting"].split("__")
           if p != f"student-{student}" and not p.startswith("method-")]
  return "\n".join([method_label(setting["method"])] + parts)


def settings_data(summary, teacher, student) -> dict:
  """Every setting of `student`: test accuracy in %, mean ± std over seeds,
  the teacher's test accuracy as a line, scratch first; the y axis holds
  every point, error bar and the line with a margin; the figure widens with
  the settings."""
  settings = sorted((s for s in summary if s["student"] == student),
                    key=lambda s: not methods.is_scratch(s["method"]))
  points = [{"setting": s["setting"], "method": s["method"],
             "label": setting_label(s, student),
             "color": method_color(s["method"]),
             "y": 100 * s["test_accuracy_mean"],
             "err": _err(s["test_accuracy_std"])}
            for s in settings if not math.isnan(s["test_accuracy_mean"])]
  line, notes = _teacher_line(teacher)
  notes += [f"{s['setting']}: no test accuracy, not drawn"
            for s in settings if math.isnan(s["test_accuracy_mean"])]
  ref = [line["y"]] if line else []
  lines = max([p["label"].count("\n") + 1 for p in points], default=1)
  return {"student": student, "points": points, "teacher": line,
          "notes": notes,
          "ylim": span([p["y"] - p["err"] for p in points] + ref,
                       [p["y"] + p["err"] for p in points] + ref),
          # 2.5 inches hold the legend right of the axes.
          "figsize": (max(6.5, 2.5 + 0.8 * len(points)), 3.6 + 0.3 * lines),
          "ylabel": "test accuracy (%, mean ± std over seeds)",
          "title": f"Every setting of {student}: test accuracy"}


def draw_settings(data):
  """Points with error bars, not bars: the y axis zooms on the data, where a
  bar's length would not be its value."""
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=data["figsize"])
  points = data["points"]
  for method in dict.fromkeys(p["method"] for p in points):
    xs = [i for i, p in enumerate(points) if p["method"] == method]
    ax.errorbar(xs, [points[i]["y"] for i in xs],
                yerr=[points[i]["err"] for i in xs], fmt="o", ms=6,
                capsize=4, color=points[xs[0]]["color"],
                label=method_label(method))
  if data["teacher"]:
    ax.axhline(data["teacher"]["y"], color=TEACHER_COLOR, ls="--", lw=1,
               label=data["teacher"]["label"])
  _note_entries(ax, data["notes"])
  ax.set_xticks(range(len(points)), [p["label"] for p in points], fontsize=8)
  ax.set_xlim(-0.6, len(points) - 0.4)
  ax.set_ylim(*data["ylim"])
  ax.grid(axis="y", alpha=0.3)
  ax.set_ylabel(data["ylabel"], fontsize=9)
  ax.set_title(data["title"], fontsize=10)
  _legend(ax)
  return fig


def settings_figure_name(student: str) -> str:
  return f"settings_{student}.png"


# ----------------------------------------------------------------- T x alpha


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
  ax.set_title(f"{student} ({method_label(method)})", fontsize=9)
  fig.colorbar(im, ax=ax, shrink=0.8)


def draw_t_alpha_heatmap(summary):
  """Mean test accuracy over (T, alpha) per (student, method) for the
  methods that read a fixed T and alpha; None if no setting has them."""
  import matplotlib.pyplot as plt
  panels: dict = {}
  for s in summary:
    if methods.fixed_t_and_alpha(s["method"]) and s["temperature"] != "":
      panels.setdefault((s["student"], s["method"]), []).append(s)
  if not panels:
    return None
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8),
                           squeeze=False)
  for ax, ((student, method), settings) in zip(axes[0], panels.items()):
    _heatmap_panel(fig, ax, student, method, settings)
  fig.suptitle("Mean test accuracy over seeds")
  return fig


# ----------------------------------------------------------- training curves


def _panel_lines(rows, student):
  """A student's settings: validation accuracy per epoch in %, mean over
  seeds; the k-th setting of a method gets the k-th line style and marker."""
  by_setting: dict = {}
  for r in rows:
    if r["student"] == student:
      entry = by_setting.setdefault(r["setting"], (r["method"], {}))
      for h in r["history"]:
        entry[1].setdefault(h["epoch"], []).append(h["accuracy"])
  lines, seen = [], {}
  for setting, (method, by_epoch) in by_setting.items():
    k = seen[method] = seen.get(method, -1) + 1
    epochs = sorted(by_epoch)
    lines.append({
        "setting": setting, "method": method, "color": method_color(method),
        "label": setting_label({"setting": setting, "method": method},
                               student).replace("\n", " "),
        "linestyle": _STYLES[k % len(_STYLES)], "marker": "os^vD"[k % 5],
        "epochs": epochs,
        "y": [100 * sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs]})
  return lines


def curves_data(rows) -> dict:
  """One panel per student; a setting's colour is its method's."""
  students = list(dict.fromkeys(r["student"] for r in rows))
  return {"panels": [{"student": st, "lines": _panel_lines(rows, st)}
                     for st in students],
          "figsize": (5 * len(students), 3.8),
          "ylabel": "validation accuracy (%, mean over seeds)"}


def draw_training_curves(data):
  import matplotlib.pyplot as plt
  from matplotlib.ticker import MaxNLocator
  fig, axes = plt.subplots(1, len(data["panels"]), figsize=data["figsize"],
                           squeeze=False)
  for ax, panel in zip(axes[0], data["panels"]):
    for line in panel["lines"]:
      ax.plot(line["epochs"], line["y"], color=line["color"],
              ls=line["linestyle"], marker=line["marker"], ms=3, lw=1,
              label=line["label"])
    ax.set_title(panel["student"], fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(data["ylabel"])
    ax.legend(fontsize=6)
  return fig


# ----------------------------------------------------------------------- ROC


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


def _roc_of(pred):
  """A binary prediction file's ROC curve; None for any other."""
  if pred is None or pred[0].shape[-1] != 2:
    return None
  return roc_curve(pred[1] == 1, pred[0][:, 1])


def roc_data(rows, best, teacher) -> dict:
  """Binary tasks: the test ROC curve of each (student, method)'s best
  setting (its first seed's run) in its method's colour, one line style per
  student; the teacher black and dashed."""
  curves, styles = [], {}
  for (student, method), s in best.items():
    run = next((r for r in rows if r["setting"] == s["setting"]), None)
    roc = _roc_of(_load_predictions(run and run.get("predictions")))
    if roc is not None:
      k = styles.setdefault(student, len(styles))
      curves.append({"student": student, "method": method,
                     "label": f"{student} {method_label(method)} (AUC "
                              f"{s['test_auc_mean']:.3f})",
                     "color": method_color(method),
                     "linestyle": _STYLES[k % len(_STYLES)],
                     "fpr": roc[0], "tpr": roc[1]})
  roc = _roc_of(_load_predictions(teacher.get("predictions"))
                if teacher else None)
  if roc is not None:
    curves.append({"student": None, "method": None,
                   "label": f"teacher {teacher['model']}",
                   "color": TEACHER_COLOR, "linestyle": "--",
                   "fpr": roc[0], "tpr": roc[1]})
  return {"curves": curves}


def draw_roc_curves(data):
  """None where no run has binary predictions."""
  import matplotlib.pyplot as plt
  if not data["curves"]:
    return None
  fig, ax = plt.subplots(figsize=(5, 4.5))
  for c in data["curves"]:
    ax.plot(c["fpr"], c["tpr"], color=c["color"], ls=c["linestyle"], lw=1.2,
            label=c["label"])
  ax.plot([0, 1], [0, 1], color="0.7", lw=0.8)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title("Test ROC, best setting per method (first seed)", fontsize=10)
  ax.legend(fontsize=6)
  return fig


# ----------------------------------------------------------------- confusion


def draw_confusion_best(rows, best):
  """The confusion matrix of the best student setting (highest mean
  validation value of the selection metric), summed over its seeds and
  normalised per true class; None without one."""
  import matplotlib.pyplot as plt
  if not best:
    return None
  top = max(best.values(), key=_selected)
  runs = [r for r in rows if r["setting"] == top["setting"] and r["confusion"]]
  if not runs:
    return None
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
  return fig


# ------------------------------------------------------------------- writing


def write_figures(out_dir, *, rows, summary, best, teacher, deploy) -> list:
  """Draws every figure into out_dir, each from its data; returns the file
  names written, in the report's order (the heatmap, ROC and confusion
  matrix only where the study has what they show)."""
  import matplotlib
  if "matplotlib.pyplot" not in sys.modules:  # headless unless already set up
    matplotlib.use("Agg")
  # Each figure is drawn and saved before the next, so one is open at a time.
  draws = [("accuracy_per_student.png",
            lambda: draw_accuracy_per_student(per_student_data(best, teacher))),
           ("accuracy_vs_speedup.png", lambda: draw_accuracy_vs_speedup(
               speedup_data(deploy, best, teacher)))]
  draws += [(settings_figure_name(st), lambda st=st: draw_settings(
      settings_data(summary, teacher, st)))
            for st in dict.fromkeys(s["student"] for s in summary)]
  draws += [("t_alpha_heatmap.png", lambda: draw_t_alpha_heatmap(summary)),
            ("training_curves.png",
             lambda: draw_training_curves(curves_data(rows))),
            ("roc.png",
             lambda: draw_roc_curves(roc_data(rows, best, teacher))),
            ("confusion_best.png", lambda: draw_confusion_best(rows, best))]
  names = []
  for name, draw in draws:
    fig = draw()
    if fig is not None:
      _save(fig, os.path.join(out_dir, name))
      names.append(name)
  return names
