"""The report of a study: tables, statistics over seeds, a deployment check
and figures, from every cell's `results.json`.

  python -m kd_jax.report STUDY_DIR [--out=DIR] [--min_fps=30] [--max_mb=50] [--no_timing]
                          [--tflite] [--deploy_format=float32|int8]

Writes into `STUDY_DIR/report/` (or `--out`):
  results.csv      one row per finished cell (student, method, its training
                   views' augmentation, T, alpha, schedule, seed,
                   accuracies, params, MB, ...)
  summary.csv      one row per setting (a cell without its seed): n seeds,
                   mean ± std and the 95% t confidence interval
  comparisons.csv  paired t-tests over the seeds both sides share: every KD
                   setting vs its student's scratch cells, and per student
                   the best setting of each method against every other,
                   and per method the best setting of each augmentation
                   against every other (best = highest mean validation
                   accuracy, so the test set is not used to choose);
                   p-values Holm-corrected over
                   the whole table, 'n.s.' where not significant
  deployment.csv   per model: params, MB, GFLOPs, batch-1 latency and
                   frames/s on this machine's CPU, speed-up and size ratio
                   vs the teacher, and whether it meets the edge budget;
                   with --tflite per student also its float32 and int8
                   TFLite files' MB, batch-1 ms on 1 and on all threads,
                   and the int8 model's test accuracy (--deploy_format=int8:
                   MB, ms, frames/s, the ratios and the budget are the int8
                   files', the teacher run's measured too; the float32 JAX
                   model's MB and ms stay in jax_size_mb, jax_latency_ms)
  report.md        all of the above as markdown tables, with the figures
  accuracy_per_student.png  test accuracy per student and method (best
                   setting, mean ± std over seeds), teacher as a line
  accuracy_vs_speedup.png   test accuracy (mean ± std over seeds) vs CPU
                   speed-up: the teacher at its test accuracy, KD and
                   scratch per student, size = MB
  settings_<student>.png    every setting of a student: test accuracy, mean
                   ± std over seeds, the teacher's as a line
  t_alpha_heatmap.png       mean test accuracy over T x alpha, per student
  training_curves.png       validation accuracy per epoch, mean over seeds
  roc.png, confusion_best.png  binary tasks' ROC curves; the best setting's
                   confusion matrix
  profile.json     the model profiles (cached: timing runs once per model)
  tflite.json      the TFLite figures (cached per cell)
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys

from kd_jax import reporting
from kd_jax.deploy import tflite_runtime
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.study import deployment
from kd_jax.study import figures
from kd_jax.study import stats

NOT_CELLS = {"teacher", "report", "logs", "teacher_cache"}
PREDICTIONS = "test_predictions.npz"  # stage.PREDICTIONS (report imports no JAX)


# ----------------------------------------------------------------- gather


def _read(path):
  with open(path) as f:
    return json.load(f)


def setting_of(cell: str) -> str:
  """The cell's name without its seed: cells differing only in seed are
  repeats of one setting."""
  s = re.sub(r"(^|__)seed-[^_]+", "", cell).strip("_")
  return s or "default"


def augmentation_label(dataset: dict) -> str:
  """A cell's training views from its config.dataset: 'none', or e.g.
  'crop+flip+mixup(α=1, folded, roll)' (ratio and partner named where they
  are not the defaults, Beta and a permutation); the crop is 'crop' (pad
  crop) or 'rrc' (random-resized crop)."""
  transform = dataset.get("train_transform") or (
      "pad_crop" if dataset.get("random_crop") else "none")
  crop = {"pad_crop": "crop", "random_resized_crop": "rrc"}.get(transform)
  parts = [crop] if crop else []
  if dataset.get("random_flip"):
    parts.append("flip")
  how = [v for v, default in ((dataset.get("mix_ratio", "beta"), "beta"),
                              (dataset.get("mix_partner", "permutation"),
                               "permutation")) if v != default]
  for key, name in (("mixup_alpha", "mixup"), ("cutmix_alpha", "cutmix")):
    if dataset.get(key):
      parts.append(f"{name}({', '.join([f'α={dataset[key]:g}'] + how)})")
  return "+".join(parts) or "none"


def _row(cell, setting, stage, config):
  method = stage["method"]
  kd = dict(config["kd"], method=method)  # a KD cell's scratch stage: none
  cols = methods.report_columns(kd)
  test = stage["test"]
  return {
      "cell": cell, "setting": setting, "student": stage["model"],
      "method": method,
      "augmentation": augmentation_label(config.get("dataset", {})),
      "temperature": _temperature(stage, kd, cols["temperature"]),
      "alpha": kd["alpha"] if cols["alpha"] else "",
      "schedule": kd["schedule"] if cols["schedule"] else "",
      "seed": config["seed"],
      "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
      "test_balanced_accuracy": _num(test.get("balanced_accuracy")),
      "test_auc": _num(test.get("auc")),
      "test_pr_auc": _num(test.get("pr_auc")),
      **{f"test_{k}": _num(test.get(k)) for k in reporting.UNIT_KEYS},
      "val_accuracy": stage.get("best_val_accuracy", float("nan")),
      # The validation value the stage selected its best epoch on.
      "select_metric": stage.get("select_metric", "accuracy"),
      "val_selected": _num(stage.get("best_val",
                                     stage.get("best_val_accuracy"))),
      "confusion": test.get("confusion"),
      "teacher_agreement": test.get("agreement", ""),
      "params": stage["params"], "size_mb": stage["size_mb"],
      "image_size": stage.get("image_size", config["dataset"]["image_size"]),
      "num_classes": stage["num_classes"], "dataset": stage["dataset"],
      "epochs": stage.get("epochs_run", ""),
      "train_seconds": stage.get("train_seconds", ""),
      "history": stage.get("history", []),
  }


def _temperature(stage, kd, kind):
  """The T a cell trained with: the config's for a fixed-T method; for a
  learned T (CTKD) the one at the end of training (its config's T is
  unused; the instance-wise variant: the mean over the last logged
  steps); '' where the method reads no T."""
  if kind == "learned":
    learned = stage.get("final_temperature", stage.get(
        "final_train_metrics", {}).get("temperature"))
    return "" if learned is None else round(float(learned), 3)
  return kd["temperature"] if kind == "fixed" else ""


def _setting_temperature(rows):
  """A setting's T: its cells' (fixed), or the mean of the learned ones."""
  learned = [r["temperature"] for r in rows
             if methods.learns_temperature(r["method"])
             and r["temperature"] != ""]
  return (round(sum(learned) / len(learned), 3) if learned
          else rows[0]["temperature"])


def _num(value) -> float:
  """A metric as a float; NaN where it is undefined (None)."""
  return float("nan") if value is None else float(value)


def gather(study_dir: str):
  """(rows, teacher, unfinished): a row per finished cell, the teacher's
  stage (from <study>/teacher, else from the cells), unfinished cell names."""
  if not os.path.isdir(study_dir):
    raise UserError(f"study directory {study_dir!r} does not exist")
  rows, unfinished, teacher = [], [], None
  cell_scratch = []
  for name in sorted(os.listdir(study_dir)):
    path = os.path.join(study_dir, name)
    if name in NOT_CELLS or name.startswith(".") or not os.path.isdir(path):
      continue
    if not os.path.exists(os.path.join(path, "config.json")):
      continue
    res_path = os.path.join(path, "results.json")
    if not os.path.exists(res_path):
      unfinished.append(name)
      continue
    res = _read(res_path)
    stages, config = res["stages"], res["config"]
    rows.append(_row(name, setting_of(name), stages["student"], config))
    rows[-1]["predictions"] = os.path.join(path, "student", PREDICTIONS)
    rows[-1]["class_names"] = res.get("class_names", [])
    if "scratch" in stages:  # a KD cell with scratch_baseline=True
      cell_scratch.append(_row(name + "/scratch", f"student-{stages['scratch']['model']}"
                               "__method-none", stages["scratch"], config))
    if teacher is None and "teacher" in stages and "test" in stages["teacher"]:
      teacher = stages["teacher"]
  # Scratch runs inside KD cells count only where the study has no scratch
  # cell of that student and seed.
  have = {(r["student"], r["seed"]) for r in rows
          if methods.is_scratch(r["method"])}
  rows += [r for r in cell_scratch if (r["student"], r["seed"]) not in have]
  shared = os.path.join(study_dir, "teacher", "results.json")
  if os.path.exists(shared):
    teacher = dict(_read(shared)["stages"]["student"], predictions=os.path.join(
        study_dir, "teacher", "student", PREDICTIONS))
  if not rows:
    raise UserError(f"no finished cell (results.json) in {study_dir!r}"
                    + (f"; {len(unfinished)} unfinished" if unfinished else ""))
  return rows, teacher, unfinished


# ------------------------------------------------------------ statistics


def summarize_settings(rows):
  """One dict per setting, in first-seen order."""
  groups: dict = {}
  for r in rows:
    groups.setdefault(r["setting"], []).append(r)
  out = []
  for setting, rs in groups.items():
    acc = stats.summarize([r["test_accuracy"] for r in rs])
    first = rs[0]
    extra = {}
    for key in ("test_auc", "test_balanced_accuracy", *(
        f"test_{k}" for k in reporting.UNIT_KEYS)):
      m = stats.summarize([r[key] for r in rs if not math.isnan(r[key])])
      extra |= {f"{key}_mean": m.mean, f"{key}_std": m.std,
                f"{key}_ci95_low": m.ci_low, f"{key}_ci95_high": m.ci_high}
    out.append({
        "setting": setting, **{k: first[k] for k in (
            "student", "method", "augmentation", "temperature", "alpha",
            "schedule")},
        "temperature": _setting_temperature(rs),
        "seeds": " ".join(str(r["seed"]) for r in rs), "n": acc.n,
        "test_accuracy_mean": acc.mean, "test_accuracy_std": acc.std,
        "test_accuracy_ci95_low": acc.ci_low,
        "test_accuracy_ci95_high": acc.ci_high,
        "val_accuracy_mean": _mean(r["val_accuracy"] for r in rs),
        "val_accuracy_std": stats.summarize(
            [r["val_accuracy"] for r in rs]).std,
        "select_metric": first["select_metric"],
        "val_selected_mean": _mean(r["val_selected"] for r in rs),
        **extra,
        "test_macro_f1_mean": _mean(r["test_macro_f1"] for r in rs),
        "teacher_agreement_mean": _mean(r["teacher_agreement"] for r in rs
                                        if r["teacher_agreement"] != ""),
        "params": first["params"], "size_mb": first["size_mb"],
        "by_seed": {r["seed"]: r["test_accuracy"] for r in rs},
    })
  return out


def _mean(values):
  v = [float(x) for x in values]
  return sum(v) / len(v) if v else float("nan")


def best_settings(summary, keys=("student", "method")):
  """{(student, method): the setting with the highest mean validation value
  of the cells' `select_metric` (accuracy unless configured)} (ties: the
  first; a NaN never wins); `keys`: the summary fields a choice is per."""
  best = {}
  for s in summary:
    key = tuple(s[k] for k in keys)
    if key not in best or s["val_selected_mean"] > best[key]["val_selected_mean"]:
      best[key] = s
  return best


def best_per_augmentation(summary):
  """{(student, method, augmentation): best setting}: a method trained on
  other views (crop, flip, mixup, ...) is another recipe."""
  return best_settings(summary, ("student", "method", "augmentation"))


def compare(summary):
  """Paired comparisons: every KD setting vs scratch of its student, and
  per student the best setting of each method vs every other."""
  out = []

  def add(kind, a, b):
    p = stats.paired(a["by_seed"], b["by_seed"])
    out.append({"kind": kind, "student": a["student"], "a": a["setting"],
                "b": b["setting"], "n_pairs": p.n, "mean_a": p.mean_a,
                "mean_b": p.mean_b, "diff": p.diff, "diff_ci95_low": p.ci_low,
                "diff_ci95_high": p.ci_high, "t": p.t, "p": p.p})

  scratch = {}
  for s in summary:
    if methods.is_scratch(s["method"]):
      scratch.setdefault(s["student"], s)
  for s in summary:
    if not methods.is_scratch(s["method"]) and s["student"] in scratch:
      add("kd_vs_scratch", s, scratch[s["student"]])
  best = best_settings(summary)
  students = list(dict.fromkeys(s["student"] for s in summary))
  for student in students:
    kd = [m for (st, m) in best
          if st == student and not methods.is_scratch(m)]
    for i, m1 in enumerate(kd):
      for m2 in kd[i + 1:]:
        add("method_vs_method", best[(student, m1)], best[(student, m2)])
  by_aug = best_per_augmentation(summary)
  for (student, method), _ in best.items():
    augs = [s for (st, m, _), s in by_aug.items()
            if (st, m) == (student, method)]
    for i, a in enumerate(augs):
      for b in augs[i + 1:]:
        add("augmentation_vs_augmentation", a, b)
  for row, p_holm in zip(out, stats.holm([r["p"] for r in out])):
    row["p_holm"] = p_holm
    row["significant"] = stats.significance(p_holm)
  return out


def against_reference(summary, reference: str):
  """Every setting of the reference's student against its scratch setting
  and against `reference` (a setting name, e.g. 'method-vanilla'), paired
  over seeds; Holm's correction over this family alone, so a study of many
  methods asks "better than scratch? than vanilla KD?" without paying for
  every method-vs-method pair."""
  by_name = {s["setting"]: s for s in summary}
  if reference not in by_name:
    raise UserError(f"--reference={reference!r} is not a setting of the "
                    f"study; settings: {', '.join(sorted(by_name))}")
  ref = by_name[reference]
  same = [s for s in summary if s["student"] == ref["student"]]
  scratch = next((s for s in same if methods.is_scratch(s["method"])), None)
  out = []
  for s in same:
    if s is ref or s is scratch:
      continue
    row = {"setting": s["setting"], "method": s["method"],
           "n": s["n"], "mean": s["test_accuracy_mean"],
           "ci95_low": s["test_accuracy_ci95_low"],
           "ci95_high": s["test_accuracy_ci95_high"]}
    for key, other in (("scratch", scratch), ("reference", ref)):
      p = stats.paired(s["by_seed"], other["by_seed"]) if other else None
      row |= {f"diff_{key}": p.diff if p else math.nan,
              f"diff_{key}_ci95_low": p.ci_low if p else math.nan,
              f"diff_{key}_ci95_high": p.ci_high if p else math.nan,
              f"p_{key}": p.p if p else math.nan}
    out.append(row)
  adjusted = stats.holm([r[f"p_{k}"] for r in out for k in ("scratch", "reference")])
  for i, r in enumerate(out):
    r["p_holm_scratch"], r["p_holm_reference"] = adjusted[2 * i:2 * i + 2]
  return sorted(out, key=lambda r: -r["mean"])


def _md_reference(table, reference):
  if table is None:
    return []
  def diff(r, k):
    if math.isnan(r[f"diff_{k}"]):
      return "–"
    if math.isnan(r[f"diff_{k}_ci95_low"]):  # one seed: no spread
      return f"{100 * r[f'diff_{k}']:+.2f}"
    return (f"{100 * r[f'diff_{k}']:+.2f} [{100 * r[f'diff_{k}_ci95_low']:+.2f},"
            f" {100 * r[f'diff_{k}_ci95_high']:+.2f}], p(Holm) "
            f"{_fmt(r[f'p_holm_{k}'], 3)}")
  return ["", f"## Against scratch and {reference}", "",
          "Test accuracy (%), mean [95% CI] over seeds; differences paired "
          "over seeds with their 95% CI and two-sided paired t-test, Holm-"
          "corrected over this table's comparisons.", "",
          md_table(("setting", "seeds", "test acc", "− scratch",
                    f"− {reference}"),
                   [(r["setting"], r["n"],
                     f"{100 * r['mean']:.2f}" + (
                         "" if math.isnan(r["ci95_low"]) else
                         f" [{100 * r['ci95_low']:.2f}, "
                         f"{100 * r['ci95_high']:.2f}]"),
                     diff(r, "scratch"), diff(r, "reference"))
                    for r in table])]


# ------------------------------------------------------------ writing


def _fmt(v, digits=4):
  if isinstance(v, float):
    return "–" if math.isnan(v) else f"{v:.{digits}f}"
  return str(v)


def md_table(head, lines) -> str:
  out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
  return "\n".join(out)


def write_csv(path, dicts, skip=("history", "by_seed", "confusion",
                                 "class_names")):
  keys = [k for k in dicts[0] if k not in skip] if dicts else []
  with open(path, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    w.writerows(dicts)


def _pm(s, key="test_accuracy"):
  mean, std = s[f"{key}_mean"], s[f"{key}_std"]
  if math.isnan(mean):
    return "–"
  return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _ci(s, key="test_accuracy"):
  low, high = s[f"{key}_ci95_low"], s[f"{key}_ci95_high"]
  return "–" if math.isnan(low) else f"[{low:.4f}, {high:.4f}]"


def _md_intro(study_dir, rows, teacher, unfinished):
  r0 = rows[0]
  lines = [f"# Study report: `{os.path.abspath(study_dir)}`", ""]
  lines.append(f"{len(rows)} finished cells"
               + (f", {len(unfinished)} unfinished ({', '.join(unfinished)})"
                  if unfinished else "")
               + f"; dataset `{r0['dataset']}`, {r0['num_classes']} classes, "
               f"{r0['image_size']} px.")
  if teacher is not None:
    lines.append(f"Teacher `{teacher['model']}`: test accuracy "
                 f"{teacher['test']['accuracy']:.4f}, {teacher['params']:,} "
                 f"parameters, {teacher['size_mb']:.2f} MB.")
  return lines


def _md_results(summary):
  units = [k for k in reporting.UNIT_KEYS
           if any(not math.isnan(s[f"test_{k}_mean"]) for s in summary)]
  lines = ["", "## Results per setting", "",
           "Test accuracy, balanced accuracy and ROC-AUC (one-vs-rest macro "
           "for more than 2 classes) as mean ± sample std over seeds, with "
           "the 95% t confidence interval of the mean (needs 2 or more "
           f"seeds). Selected on: {summary[0]['select_metric']} "
           "(validation). T of CTKD: the learned final temperature (mean "
           "over seeds)."
           + (" Per video / patient: the class of a video's (patient's) "
              "mean frame probability; vote: its frames' majority."
              if units else ""), ""]
  lines.append(md_table(
      ("setting", "student", "method", "augmentation", "T", "α", "schedule",
       "seeds",
       "test acc", "95% CI", "bal acc", "AUC", "AUC 95% CI", "val (selected)",
       "macro-F1", "agreement", *(reporting.UNIT_KEYS[k] for k in units)),
      [(s["setting"], s["student"], figures.method_label(s["method"]),
        s["augmentation"], s["temperature"], s["alpha"], s["schedule"], s["n"], _pm(s), _ci(s),
        _pm(s, "test_balanced_accuracy"), _pm(s, "test_auc"),
        _ci(s, "test_auc"), _fmt(s["val_selected_mean"]),
        _fmt(s["test_macro_f1_mean"]),
        _fmt(s["teacher_agreement_mean"]),
        *(_pm(s, f"test_{k}") for k in units)) for s in summary]))
  return lines


def _md_comparisons(comps):
  lines = ["", "## Paired comparisons", "",
           "Each comparison pairs the runs with the same seed (same data "
           "order and initial weights) and tests the mean difference A − B "
           "with a two-sided paired t-test. p (Holm) is corrected for all "
           "comparisons in this table; 'n.s.' = not significant at 0.05, "
           "'n/a' = fewer than 2 pairs. Method vs method uses each method's "
           "best setting by the mean validation value of the selection "
           "metric; augmentation vs augmentation, per method, the best "
           "setting of each augmentation.", ""]
  if not comps:
    return lines + ["No comparison: the study has no scratch cells and one method."]
  lines.append(md_table(
      ("kind", "student", "A", "B", "pairs", "mean A", "mean B", "A − B",
       "95% CI of A − B", "p", "p (Holm)", "significant"),
      [(c["kind"].replace("_", " "), c["student"], c["a"], c["b"],
        c["n_pairs"], _fmt(c["mean_a"]), _fmt(c["mean_b"]),
        _fmt(c["diff"], 4),
        "–" if math.isnan(c["diff_ci95_low"]) else
        f"[{c['diff_ci95_low']:.4f}, {c['diff_ci95_high']:.4f}]",
        _fmt(c["p"], 4), _fmt(c["p_holm"], 4), c["significant"])
       for c in comps]))
  return lines


def _md_deployment(deploy, *, min_fps, max_mb, timing):
  int8 = deploy[0]["deploy_format"] == "int8"
  # The int8 basis fills MB, ms and the ratios from the int8 files, so the
  # headers say so.
  tag = " (int8 TFLite)" if int8 else ""
  basis = "the int8 TFLite file, all threads" if int8 else "float32 weights"
  lines = ["", "## Deployment check", "",
           f"Budget: ≥ {min_fps:g} frames/s at batch 1 and < {max_mb:g} MB "
           f"({basis}). "
           + ("MB, ms/frame, frames/s, speed-up and size ratio are the int8 "
              f"files' ({tflite_runtime.all_threads()} threads), the "
              "teacher's too where the study has a teacher run. " if int8
              else "")
           + "Measured on this machine's CPU "
           f"({deployment.cpu_name()}); "
           "speed-up = teacher ms / student ms on the same machine. "
           "Accuracy: the student's best setting by the validation selection "
           "metric."
           + ("" if timing or int8 else " Timing was not run (--no_timing): "
              "FLOPs ratios only."), ""]
  lines.append(md_table(
      ("model", "role", "params", "MB" + tag, "GFLOPs", "ms/frame" + tag,
       "frames/s" + tag, "speed-up" + tag, "FLOPs ratio", "size ratio" + tag,
       "test acc", "rel. acc", "meets budget" + tag),
      [(d["model"], d["role"], f"{d['params']:,}", _fmt(d["size_mb"], 2),
        f"{d['gflops']:.3f}", _fmt(d["latency_ms"], 2), _fmt(d["frames_per_s"], 1),
        _fmt(d["speedup_vs_teacher"], 1) + ("" if math.isnan(d["speedup_vs_teacher"]) else "×"),
        _fmt(d["flops_ratio_vs_teacher"], 1), _fmt(d["size_ratio_vs_teacher"], 1),
        _fmt(d["test_accuracy"]),
        "–" if math.isnan(d["relative_accuracy"]) else f"{100 * d['relative_accuracy']:.1f}%",
        "–" if d["role"] == "teacher" and d["meets_budget"] == "no" else d["meets_budget"])
       for d in deploy]))
  return lines + _md_tflite(deploy)


def _md_tflite(deploy):
  """The TFLite figures, where they were measured: the students' (--tflite)
  and with --deploy_format=int8 the teacher run's."""
  rows = [d for d in deploy if not math.isnan(d["tflite_f32_mb"])]
  if not rows:
    return []
  n = f"{tflite_runtime.all_threads()} threads"
  lines = ["", "### TFLite (LiteRT) at batch 1", "",
           "Each student's deployed setting (and the teacher run, with "
           "--deploy_format=int8) exported with `python -m "
           "kd_jax.export --format=tflite` (float32; int8 calibrated on 200 "
           "training images), timed in the TFLite interpreter on this CPU "
           f"with 1 thread and with all ({n}); values are means over the "
           "setting's cells. int8 test acc: the int8 file on each cell's "
           "test split, next to the float model's.", ""]
  lines.append(md_table(
      ("model", "float32 MB", "int8 MB", "float32 ms (1 thread)",
       f"float32 ms ({n})", "int8 ms (1 thread)", f"int8 ms ({n})",
       f"int8 frames/s ({n})", "test acc", "int8 test acc"),
      [(d["model"], _fmt(d["tflite_f32_mb"], 2), _fmt(d["tflite_int8_mb"], 2),
        _fmt(d["tflite_f32_ms_1t"], 2), _fmt(d["tflite_f32_ms_all"], 2),
        _fmt(d["tflite_int8_ms_1t"], 2), _fmt(d["tflite_int8_ms_all"], 2),
        _fmt(d["int8_frames_per_s"], 1), _fmt(d["test_accuracy"]),
        _fmt(d["int8_test_accuracy"])) for d in rows]))
  return lines


def render_markdown(study_dir, rows, teacher, unfinished, summary, comps,
                    deploy, figure_names, *, min_fps, max_mb, timing,
                    reference=None):
  lines = _md_intro(study_dir, rows, teacher, unfinished)
  lines += _md_results(summary)
  lines += _md_comparisons(comps)
  lines += _md_reference(*(reference or (None, None)))
  lines += _md_deployment(deploy, min_fps=min_fps, max_mb=max_mb, timing=timing)
  lines += ["", "## Figures", ""]
  lines += [f"![{name}]({name})" for name in figure_names]
  return "\n".join(lines) + "\n"


def make_report(study_dir: str, out_dir: str | None = None, *,
                min_fps: float = 30.0, max_mb: float = 50.0,
                timing: bool = True, profile_fn=None, tflite: bool = False,
                deploy_format: str = "float32", tflite_fn=None,
                reference: str = "") -> dict:
  """Writes the report files; returns {'rows', 'summary', 'comparisons',
  'deployment', 'figures', 'out_dir', 'markdown'}. `profile_fn(name, classes,
  size, timing)` -> {'gflops', 'latency_ms'} replaces the model profiler
  and `tflite_fn(cell_dir, stage)` the TFLite measurement (tests);
  `reference`: a setting every other is also compared with
  (`against_reference`, reference.csv)."""
  if min_fps <= 0 or max_mb <= 0:
    raise UserError(f"min_fps and max_mb must be > 0, got {min_fps}, {max_mb}")
  if deploy_format not in deployment.DEPLOY_FORMATS:
    raise UserError(f"--deploy_format={deploy_format!r}; allowed: "
                    f"{', '.join(deployment.DEPLOY_FORMATS)}")
  rows, teacher, unfinished = gather(study_dir)
  out_dir = out_dir or os.path.join(study_dir, "report")
  os.makedirs(out_dir, exist_ok=True)
  summary = summarize_settings(rows)
  best = best_settings(summary)
  comps = compare(summary)
  versus = against_reference(summary, reference) if reference else None
  deploy = deployment.check(best, teacher, rows, out_dir, min_fps=min_fps,
                            max_mb=max_mb, timing=timing, profile_fn=profile_fn,
                            study_dir=study_dir, tflite=tflite,
                            tflite_fn=tflite_fn, deploy_format=deploy_format)
  for name, table in (("results", rows), ("summary", summary),
                      ("comparisons", comps), ("deployment", deploy),
                      ("reference", versus)):
    if table is None:
      continue
    write_csv(os.path.join(out_dir, f"{name}.csv"), table)
  names = figures.write_figures(out_dir, rows=rows, summary=summary, best=best,
                                teacher=teacher, deploy=deploy)
  md = render_markdown(study_dir, rows, teacher, unfinished, summary, comps,
                       deploy, names, min_fps=min_fps, max_mb=max_mb,
                       timing=timing,
                       reference=(versus, reference) if versus else None)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(md)
  return {"rows": rows, "summary": summary, "comparisons": comps,
          "deployment": deploy, "figures": names, "out_dir": out_dir,
          "markdown": md, "reference": versus}


def main(argv=None):
  p = argparse.ArgumentParser(prog="python -m kd_jax.report",
                              description=__doc__.split("\n")[0])
  p.add_argument("study_dir")
  p.add_argument("--out", default=None, help="default: STUDY_DIR/report")
  p.add_argument("--min_fps", type=float, default=30.0)
  p.add_argument("--max_mb", type=float, default=50.0)
  p.add_argument("--no_timing", action="store_true",
                 help="skip the latency runs (FLOPs ratios only)")
  p.add_argument("--tflite", action="store_true",
                 help="also export each student to TFLite (float32, int8) "
                 "and time it in the TFLite interpreter")
  p.add_argument("--deploy_format", default="float32",
                 help="the budget's figures: float32 (the JAX model) or int8 "
                 "(the int8 TFLite file; implies --tflite)")
  p.add_argument("--reference", default="",
                 help="a setting (e.g. method-vanilla) every setting is also "
                 "compared with, beside scratch (reference.csv)")
  args = p.parse_args(argv)
  try:
    out = make_report(args.study_dir, args.out, min_fps=args.min_fps,
                      max_mb=args.max_mb, timing=not args.no_timing,
                      tflite=args.tflite, deploy_format=args.deploy_format,
                      reference=args.reference)
  except UserError as e:
    print(f"kd_jax: error: {e}", file=sys.stderr)
    return 2
  print("\n".join(summary_lines(out)))
  return 0


def summary_lines(out) -> list[str]:
  """The console's digest of a report: each student's best setting per
  method (test accuracy, mean over seeds), then where the files are."""
  best = best_per_augmentation(out["summary"])
  lines = ["best setting per student and method (by validation; test "
           "accuracy, mean over seeds; one per augmentation):"]
  for (student, method, aug), s in best.items():
    views = "" if aug == "none" else f"{aug}, "
    lines.append(f"  {student:<20} {methods.label(method):<14} "
                 f"{s['test_accuracy_mean']:.4f}  ({views}{s['setting']}, "
                 f"{s['n']} seed(s))")
  lines.append(f"report written to {out['out_dir']} (report.md, "
               f"{len(out['figures'])} figures, CSV tables)")
  return lines

