"""The deployment check of a study: per model its size, FLOPs and batch-1
latency on this machine's CPU, the ratios against the teacher, and whether it
meets an edge budget (frames/s and MB).

Model profiles come from `kd_jax.models.profile` and are cached per machine in
`profile.json`, so the timing runs once per model and CPU.

With `tflite=True` each student also gets its TFLite figures (`measure_tflite`):
the float32 and int8 files of its trained cells (the deployed setting's, one
per seed), their batch-1 latency in the TFLite interpreter on 1 and on all
threads, and the int8 model's test accuracy; cached per cell and machine in
`tflite.json`. `deploy_format='int8'` judges every model by the int8 file
that is deployed: its MB, all-threads latency, frames/s, the ratios against
the teacher (whose int8 file is measured too, from the study's `teacher/`
run) and the budget; the float32 JAX model's MB and ms stay in `jax_size_mb`
and `jax_latency_ms`.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile

import jax
import numpy as np

from kd_jax import reporting
from kd_jax.deploy import export
from kd_jax.deploy import tflite_runtime
from kd_jax.distill import methods
from kd_jax.errors import UserError
from kd_jax.models import profile

NAN = float("nan")
TEACHER_DIR = "teacher"  # runner.TEACHER_DIR (the report imports no runner)
DEPLOY_FORMATS = ("float32", "int8")
# A student's TFLite figures (NaN where not measured): file MB, batch-1 ms on
# 1 thread and on all threads, float32 and int8, and the int8 test accuracy.
TFLITE_FIELDS = ("tflite_f32_mb", "tflite_f32_ms_1t", "tflite_f32_ms_all",
                 "tflite_int8_mb", "tflite_int8_ms_1t", "tflite_int8_ms_all",
                 "int8_test_accuracy")


def cpu_name() -> str:
  """This machine's CPU model and core count, for labelling timings."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
  except OSError:
    pass
  return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def default_profile(name, num_classes, image_size, timing):
  """{'gflops', 'latency_ms'?} of one model, measured on the CPU."""

  with jax.default_device(jax.devices("cpu")[0]):
    p = profile.profile(name, num_classes=num_classes, image_size=image_size,
                        timing=timing)
  return {k: p[k] for k in ("gflops", "latency_ms") if k in p}


def _read_cache(path):
  """A report's JSON cache of measurements, {} before the first."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def profiles(models, out_dir, timing, profile_fn=None):
  """{(name, classes, size): {'gflops', 'latency_ms'?}}, cached in
  out_dir/profile.json per machine. A given `profile_fn` bypasses the cache
  in both directions, so stand-in numbers never mix with measured ones."""
  path = os.path.join(out_dir, "profile.json")
  cache = _read_cache(path) if profile_fn is None else {}
  machine = cpu_name()
  out = {}
  for name, classes, size in models:
    key = f"{name}|{classes}|{size}|{machine}"
    hit = cache.get(key)
    if hit is None or (timing and "latency_ms" not in hit):
      hit = (profile_fn or default_profile)(name, classes, size, timing)
      cache[key] = hit
    out[(name, classes, size)] = hit
  if profile_fn is None:
    reporting.write_json(path, cache)
  return out


def _ratio(num, den):
  return num / den if num and den else NAN


def measure_tflite(cell_dir: str, stage: str = "student") -> dict:
  """TFLITE_FIELDS of one trained cell: its float32 and int8 (calibrated on
  its training images) TFLite exports, timed at batch 1 on 1 and on all
  threads, and the int8 model's accuracy on the cell's test split."""
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for kind, quantize in (("f32", "none"), ("int8", "int8")):
      path = os.path.join(tmp, f"{kind}.tflite")
      info = export.export_tflite(cell_dir, path, stage=stage, quantize=quantize)
      with open(path, "rb") as f:
        blob = f.read()
      out[f"tflite_{kind}_mb"] = info["bytes"] / 1e6
      out[f"tflite_{kind}_ms_1t"] = tflite_runtime.latency_ms(blob, 1)
      out[f"tflite_{kind}_ms_all"] = tflite_runtime.latency_ms(blob, tflite_runtime.all_threads())
  images, labels = export.split_images(cell_dir, "test", info["image_size"])
  probs = tflite_runtime.Model(blob).call(images)
  out["int8_test_accuracy"] = float(np.mean(probs.argmax(-1) == labels))
  return out


def tflite_figures(cells, out_dir, measure_fn=None):
  """{(cell_dir, stage): TFLITE_FIELDS}, cached in out_dir/tflite.json per
  cell, its results.json's time and machine. A given `measure_fn(cell_dir,
  stage)` bypasses the cache both ways (as `profiles`' profile_fn)."""
  path = os.path.join(out_dir, "tflite.json")
  cache = _read_cache(path) if measure_fn is None else {}
  machine = cpu_name()
  out = {}
  for cell_dir, stage in cells:
    results = os.path.join(cell_dir, "results.json")
    stamp = os.path.getmtime(results) if os.path.exists(results) else 0
    key = f"{os.path.abspath(cell_dir)}|{stage}|{stamp}|{machine}"
    if key not in cache:
      cache[key] = (measure_fn or measure_tflite)(cell_dir, stage)
    out[(cell_dir, stage)] = cache[key]
  if measure_fn is None:
    reporting.write_json(path, cache)
  return out


def mean_figures(figures) -> dict:
  """TFLITE_FIELDS averaged over cells (NaN for none)."""
  return {k: (sum(f[k] for f in figures) / len(figures) if figures else NAN)
          for k in TFLITE_FIELDS}


def meets(latency_ms, size_mb, *, min_fps, max_mb) -> str:
  if not latency_ms or latency_ms != latency_ms or size_mb != size_mb:
    return "not measured"
  return "yes" if 1e3 / latency_ms >= min_fps and size_mb < max_mb else "no"


def basis(prof, size_mb, tfl, deploy_format):
  """(ms, MB) a model is judged on: the float32 JAX model's batch-1 latency
  and weights, or the int8 TFLite file's (all threads) and size."""
  if deploy_format == "int8":
    return tfl["tflite_int8_ms_all"], tfl["tflite_int8_mb"]
  return prof.get("latency_ms") or NAN, size_mb


def model_row(role, name, prof, ref, *, params, size_mb, accuracy,
              accuracy_setting, min_fps, max_mb, tfl=None,
              deploy_format="float32"):
  """One model's line of the check. `prof` is its profile, `tfl` its mean
  TFLite figures, `ref` the teacher's {'latency_ms', 'size_mb', 'gflops',
  'test_accuracy'} on the same basis (None without a teacher). MB, ms,
  frames/s, the ratios and the budget are on the `deploy_format` basis."""
  tfl = tfl or dict.fromkeys(TFLITE_FIELDS, NAN)
  lat, mb = basis(prof, size_mb, tfl, deploy_format)
  ref = ref or {}
  return {
      "model": name, "role": role, "params": params, "size_mb": mb,
      "gflops": prof["gflops"], "latency_ms": lat,
      "frames_per_s": _ratio(1e3, lat),
      "speedup_vs_teacher": _ratio(ref.get("latency_ms"), lat),
      "flops_ratio_vs_teacher": _ratio(ref.get("gflops"), prof["gflops"]),
      "size_ratio_vs_teacher": _ratio(ref.get("size_mb"), mb),
      "test_accuracy": accuracy, "accuracy_setting": accuracy_setting,
      "relative_accuracy": (accuracy / ref["test_accuracy"]
                            if ref.get("test_accuracy") else NAN),
      "jax_size_mb": size_mb, "jax_latency_ms": prof.get("latency_ms") or NAN,
      **tfl, "int8_frames_per_s": _ratio(1e3, tfl["tflite_int8_ms_all"]),
      "deploy_format": deploy_format,
      "meets_budget": meets(lat, mb, min_fps=min_fps, max_mb=max_mb),
  }


def setting_cells(rows, setting, study_dir):
  """(cell_dir, stage) of each cell of `setting` (a scratch run inside a KD
  cell is that cell's 'scratch' stage)."""
  out = []
  for r in rows:
    if r["setting"] == setting:
      cell, _, sub = r["cell"].partition("/")
      out.append((os.path.join(study_dir, cell), sub or "student"))
  return out


def student_pick(best, student):
  """The student's setting to deploy: its best KD setting by validation
  accuracy, or its scratch setting if it has no KD one."""
  kd = [s for (st, m), s in best.items()
        if st == student and not methods.is_scratch(m)]
  return max(kd or [s for (st, _), s in best.items() if st == student],
             key=lambda s: s["val_accuracy_mean"])


def student_figures(rows, picks, study_dir, out_dir, tflite_fn):
  """{student: the mean TFLite figures of its deployed setting's cells}."""
  cells = {n: setting_cells(rows, p["setting"], study_dir)
           for n, p in picks.items()}
  figures = tflite_figures([c for cs in cells.values() for c in cs],
                           out_dir, tflite_fn)
  return {n: mean_figures([figures[c] for c in cs]) for n, cs in cells.items()}


def teacher_figures(study_dir, out_dir, tflite_fn):
  """The TFLite figures of the study's shared teacher run (`teacher/`), or
  None: a teacher from the cells' own stages has no run of its own, and
  one TFLite cannot take has no int8 file (the students' figures still
  count)."""
  cell = (os.path.join(study_dir or "", TEACHER_DIR), "student")
  if not os.path.exists(os.path.join(cell[0], "results.json")):
    return None
  try:
    return tflite_figures([cell], out_dir, tflite_fn)[cell]
  except UserError:
    return None


def reference(teacher, t_prof, t_tfl, deploy_format):
  """The teacher's figures the students' ratios divide (None without a
  teacher), on the `deploy_format` basis."""
  if teacher is None:
    return None
  lat, mb = basis(t_prof, teacher["size_mb"],
                  t_tfl or dict.fromkeys(TFLITE_FIELDS, NAN), deploy_format)
  return {"latency_ms": lat, "size_mb": mb, "gflops": t_prof["gflops"],
          "test_accuracy": teacher["test"]["accuracy"]}


def check(best, teacher, rows, out_dir, *, min_fps, max_mb, timing,
          profile_fn=None, study_dir=None, tflite=False, tflite_fn=None,
          deploy_format="float32"):
  """A row per model: the teacher first, then each student. `best` maps
  (student, method) to its best setting (see `report.best_settings`);
  `tflite` (implied by deploy_format='int8') measures the students' TFLite
  figures from their cells in `study_dir` (`tflite_fn` stands in for
  `measure_tflite`), and with 'int8' the shared teacher's as well."""
  first = {}
  for r in rows:
    first.setdefault(r["student"], r)
  keys = {name: (name, r["num_classes"], r["image_size"])
          for name, r in first.items()}
  t_key = None
  if teacher is not None:
    t_key = (teacher["model"], teacher.get("num_classes", rows[0]["num_classes"]),
             teacher.get("image_size", rows[0]["image_size"]))
  prof = profiles(([t_key] if t_key else []) + list(keys.values()), out_dir,
                  timing, profile_fn)
  budget = {"min_fps": min_fps, "max_mb": max_mb, "deploy_format": deploy_format}
  picks = {name: student_pick(best, name) for name in first}
  tfl, t_tfl = {}, None
  if tflite or deploy_format == "int8":
    tfl = student_figures(rows, picks, study_dir, out_dir, tflite_fn)
  if teacher is not None and deploy_format == "int8":
    t_tfl = teacher_figures(study_dir, out_dir, tflite_fn)
  ref = reference(teacher, prof.get(t_key), t_tfl, deploy_format)
  out = []
  if teacher is not None:
    out.append(model_row("teacher", teacher["model"], prof[t_key], ref,
                         params=teacher["params"], size_mb=teacher["size_mb"],
                         accuracy=teacher["test"]["accuracy"],
                         accuracy_setting="teacher", tfl=t_tfl, **budget))
  for name, r in first.items():
    out.append(model_row("student", name, prof[keys[name]], ref,
                         params=r["params"], size_mb=r["size_mb"],
                         accuracy=picks[name]["test_accuracy_mean"],
                         accuracy_setting=picks[name]["setting"],
                         tfl=tfl.get(name), **budget))
  return out
