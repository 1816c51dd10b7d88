"""Reporting: progress lines, atomic JSON results, and the final table."""
from __future__ import annotations

import json
import os
import tempfile
import time

import jax


def log(msg: str):
  """Prints on the primary process only (stdout, flushed)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# The mode a plain open() would give (0644 under the usual umask 022):
# mkstemp's 0600 would keep results and exported models from the rest of
# a team.
FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: str, write):
  """Calls `write(f)` on a binary temp file in `path`'s directory, then
  renames it to `path`: readers see the old file or the whole new one,
  with the permissions open() would give."""
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_json(path: str, obj):
  """Writes atomically (write_atomic)."""
  write_atomic(path, lambda f: f.write(
      json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")))


def _hms(seconds):
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Steps/s and ETA over the logging window."""

  def __init__(self, role, model, total_steps, start_step, steps_per_epoch):
    self.role, self.model = role, model
    self.total, self.spe = total_steps, steps_per_epoch
    self.last_step, self.last_time = start_step, time.time()
    self.last_loss = 0.0

  def update(self, step, loss) -> float:
    now = time.time()
    rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
    self.last_step, self.last_time, self.rate = step, now, rate
    self.last_loss = loss
    return rate

  def print(self, step, mean):
    eta = (self.total - step) / max(self.rate, 1e-9)
    epoch = (step - 1) // self.spe + 1
    parts = [f"loss {mean['loss']:.4f}", f"acc {mean['accuracy']:.3f}"]
    if "temperature" in mean:
      parts.append(f"T {mean['temperature']:.3f}")
    log(f"[{self.role} {self.model}] step {step}/{self.total} "
        f"(epoch {epoch}) " + " ".join(parts)
        + f" | {self.rate:.1f} steps/s, ETA {_hms(eta)}")


# Per-video and per-patient test metrics (metrics.unit_metrics), where the
# data knows its frames' videos: a row key and its table column.
UNIT_KEYS = {"video_accuracy": "video acc", "video_vote_accuracy": "vote acc",
             "patient_accuracy": "patient acc"}


def summarize_run(config_json, ds, stages) -> dict:
  rows = []
  for r in stages:
    label = r["role"] if r["role"] != "student" else f"student ({r['method']})"
    rows.append({
        "stage": label, "model": r["model"], "params": r["params"],
        "size_mb": r["size_mb"], "test_accuracy": r["test"]["accuracy"],
        "test_macro_f1": r["test"]["macro_f1"],
        "test_balanced_accuracy": r["test"].get("balanced_accuracy"),
        "test_auc": r["test"].get("auc"),
        "teacher_agreement": r["test"].get("agreement"),
        **{f"test_{k}": r["test"].get(k) for k in UNIT_KEYS},
    })
    for i, peer in enumerate(r.get("cohort", [])[1:]):  # DML peers
      rows.append({
          "stage": f"peer{i + 1} ({r['method']})", "model": peer["model"],
          "params": peer["params"], "size_mb": peer["size_mb"],
          "test_accuracy": peer["test"]["accuracy"],
          "test_macro_f1": peer["test"]["macro_f1"],
          "test_balanced_accuracy": peer["test"].get("balanced_accuracy"),
          "test_auc": peer["test"].get("auc"), "teacher_agreement": None,
      })
  return {"dataset": ds.name, "num_classes": ds.num_classes,
          "class_names": list(ds.class_names),
          "config": config_json, "rows": rows,
          "stages": {r["role"]: r for r in stages}}


def fmt(value) -> str:
  """A metric in tables and log lines; '-' where it is undefined."""
  return "-" if value is None else f"{value:.4f}"


def format_table(rows) -> str:
  units = [k for k in UNIT_KEYS if any(r.get(f"test_{k}") is not None
                                       for r in rows)]
  head = ("stage", "model", "params", "MB", "test acc", "macro-F1", "bal acc",
          "AUC", "agree(T)", *(UNIT_KEYS[k] for k in units))
  lines = [[r["stage"], r["model"], f"{r['params']:,}", f"{r['size_mb']:.3f}",
            fmt(r["test_accuracy"]), fmt(r["test_macro_f1"]),
            fmt(r.get("test_balanced_accuracy")), fmt(r.get("test_auc")),
            fmt(r["teacher_agreement"]),
            *(fmt(r.get(f"test_{k}")) for k in units)]
           for r in rows]
  return text_table(head, lines, left=2)


def text_table(head, lines, left=1) -> str:
  """A fixed-width table: the first `left` columns left-aligned, the rest right."""
  widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)]
  fmt = lambda cells: "  ".join(c.ljust(w) if i < left else c.rjust(w)
                                for i, (c, w) in enumerate(zip(cells, widths)))
  return "\n".join([fmt(head), fmt(["-" * w for w in widths])]
                   + [fmt(l) for l in lines])
