"""The deployment check of a study: per model its size, FLOPs and batch-1
latency on this machine's CPU, the ratios against the teacher, and whether it
meets an edge budget (frames/s and MB).

Model profiles come from `kd_jax.models.profile` and are cached per machine in
`profile.json`, so the timing runs once per model and CPU.
"""
from __future__ import annotations

import json
import os
import platform

NAN = float("nan")


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
  import jax  # late: reading results needs no JAX
  from kd_jax.models import profile
  with jax.default_device(jax.devices("cpu")[0]):
    p = profile.profile(name, num_classes=num_classes, image_size=image_size,
                        timing=timing)
  return {k: p[k] for k in ("gflops", "latency_ms") if k in p}


def profiles(models, out_dir, timing, profile_fn=None):
  """{(name, classes, size): {'gflops', 'latency_ms'?}}, cached in
  out_dir/profile.json per machine. A given `profile_fn` bypasses the cache
  in both directions, so stand-in numbers never mix with measured ones."""
  path = os.path.join(out_dir, "profile.json")
  cache = {}
  if os.path.exists(path) and profile_fn is None:
    with open(path) as f:
      cache = json.load(f)
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
    from kd_jax import reporting
    reporting.write_json(path, cache)
  return out


def _ratio(num, den):
  return num / den if num and den else NAN


def model_row(role, name, prof, t_prof, *, params, size_mb, accuracy,
              accuracy_setting, teacher, min_fps, max_mb):
  """One model's line of the check; `prof` / `t_prof` are its and the
  teacher's profiles ({} without a teacher)."""
  lat = prof.get("latency_ms")
  fps = 1e3 / lat if lat else NAN
  t_acc = teacher["test"]["accuracy"] if teacher else NAN
  return {
      "model": name, "role": role, "params": params, "size_mb": size_mb,
      "gflops": prof["gflops"], "latency_ms": lat if lat else NAN,
      "frames_per_s": fps,
      "speedup_vs_teacher": _ratio(t_prof.get("latency_ms"), lat),
      "flops_ratio_vs_teacher": (t_prof["gflops"] / prof["gflops"]
                                 if t_prof and prof["gflops"] else NAN),
      "size_ratio_vs_teacher": teacher["size_mb"] / size_mb if teacher else NAN,
      "test_accuracy": accuracy, "accuracy_setting": accuracy_setting,
      "relative_accuracy": (accuracy / t_acc if t_acc == t_acc and t_acc
                            else NAN),
      "meets_budget": ("not measured" if not lat else
                       "yes" if fps >= min_fps and size_mb < max_mb else "no"),
  }


def student_pick(best, student):
  """The student's setting to deploy: its best KD setting by validation
  accuracy, or its scratch setting if it has no KD one."""
  kd = [s for (st, m), s in best.items() if st == student and m != "none"]
  return max(kd or [s for (st, _), s in best.items() if st == student],
             key=lambda s: s["val_accuracy_mean"])


def check(best, teacher, rows, out_dir, *, min_fps, max_mb, timing,
          profile_fn=None):
  """A row per model: the teacher first, then each student. `best` maps
  (student, method) to its best setting (see `report.best_settings`)."""
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
  t_prof = prof[t_key] if t_key else {}
  budget = {"teacher": teacher, "min_fps": min_fps, "max_mb": max_mb}
  out = []
  if teacher is not None:
    out.append(model_row("teacher", teacher["model"], prof[t_key], t_prof,
                         params=teacher["params"], size_mb=teacher["size_mb"],
                         accuracy=teacher["test"]["accuracy"],
                         accuracy_setting="teacher", **budget))
  for name, r in first.items():
    pick = student_pick(best, name)
    out.append(model_row("student", name, prof[keys[name]], t_prof,
                         params=r["params"], size_mb=r["size_mb"],
                         accuracy=pick["test_accuracy_mean"],
                         accuracy_setting=pick["setting"], **budget))
  return out
