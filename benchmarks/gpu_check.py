"""What a GPU machine's session checks, in one command (<= 8 minutes wall on
one H200, compilation included):

  python benchmarks/gpu_check.py --out=/tmp/gpu_check               # on the GPU
  python benchmarks/gpu_check.py --out=/tmp/gpu_check --cpu_smoke   # tiny, on a CPU

  1 quickstart   the README's quickstart end to end (configs/quickstart.py)
  2 study        a 4-cell vmapped study (configs/quickstart_study.py, tiny_cnn
                 vanilla KD, seeds 0-3: one vmapped group) and `kd_jax.report`
  3 kill_resume  the quickstart again, kill -9 in the middle of its KD
                 student, rerun: the resumed run's test accuracy against step
                 1's uninterrupted run, and whether the final weights are the
                 same bits
  4 export       step 1's student to StableHLO and TFLite, `kd_jax.predict`
                 with both on test images: their accuracy and agreement
  5 throughput   benchmarks/gpu_kd_step.py: device-resident vs input-pipeline
                 images/s (each batch placed when its step runs, and prefetched
                 as the training loop does) for the echo and CIFAR cases, f32
                 and bf16, and the tuned PyTorch peer's best variant

Writes OUT/gpu_check.md (the steps' table and the throughput table) and
OUT/gpu_check.json; each command's output goes to OUT/logs/. Exit status 0
when every step passed. `--cpu_smoke` runs the same steps, tiny, on the CPU
(tests/test_gpu_check.py), so the script cannot rot between GPU sessions.

Bitwise resume on a GPU: steps 1-4 run with XLA_FLAGS
`--xla_gpu_deterministic_ops=true` (`--xla_flags` changes it): XLA:GPU's
scatter and reductions then run deterministically and its autotuner picks
among deterministic algorithms only, so a resumed run repeats the
uninterrupted run's arithmetic. If step 3 still reports different bits, add
`--xla_gpu_autotune_level=0` (no timing-dependent algorithm choice). Without
these flags the accuracies agree within float tolerance, not bit for bit.
Step 5 runs without them (they slow some kernels). Steps 1-2 and 3-4 run two
at a time (the GPU memory is not preallocated: XLA_PYTHON_CLIENT_PREALLOCATE
=false), step 5 alone.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CHILD_ENV = dict(os.environ)  # the commands' environment: they may use the GPU
os.environ["JAX_PLATFORMS"] = "cpu"  # this process only reads files

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from kd_jax.data import datasets as data  # noqa: E402
from kd_jax.train import checkpointing  # noqa: E402

DETERMINISTIC = "--xla_gpu_deterministic_ops=true"
QUICKSTART = ["--config=configs/quickstart.py"]
# Tiny, but long enough (186 student steps) for step 3 to kill it mid-run;
# no mid-epoch saves (tiny mode's every 2 steps would dominate its time).
QUICKSTART_SMOKE = ["--config=configs/quickstart.py:runlocal,dataset=digits",
                    "--config.dataset.train_limit=0",
                    "--config.max_steps_per_epoch=0", "--config.num_epochs=3",
                    "--config.teacher.num_epochs=1",
                    "--config.checkpoint_every_steps=0"]
THROUGHPUT = ["--cases=echo,cifar", "--batch=256", "--steps=20",
              "--grid_cells=0", "--no_cost"]
THROUGHPUT_SMOKE = ["--cases=smoke", "--batch=8", "--steps=2", "--grid_cells=0",
                    "--ceiling_n=256", "--torch_cpu", "--torch_variants=eager"]
PREDICT_IMAGES = 64


class StepFailed(Exception):
  """A step's one-line reason."""


class Check:
  """The run's settings and where its files go."""

  def __init__(self, args):
    self.out, self.smoke = os.path.abspath(args.out), args.cpu_smoke
    self.logs = os.path.join(self.out, "logs")
    os.makedirs(self.logs, exist_ok=True)
    env = dict(CHILD_ENV, PYTHONPATH=REPO + os.pathsep
               + CHILD_ENV.get("PYTHONPATH", ""),
               XLA_PYTHON_CLIENT_PREALLOCATE="false")
    if self.smoke:
      env["JAX_PLATFORMS"] = "cpu"
    self.bench_env = dict(env)
    flags = args.xla_flags if args.xla_flags is not None else (
        "" if self.smoke else DETERMINISTIC)
    self.xla_flags = " ".join(filter(None, [env.get("XLA_FLAGS", ""), flags]))
    self.env = dict(env, XLA_FLAGS=self.xla_flags)
    self.quickstart = QUICKSTART_SMOKE if self.smoke else QUICKSTART
    self.torch_variants = args.torch_variants
    self.timeout = args.step_timeout

  def path(self, *parts):
    return os.path.join(self.out, *parts)

  def run(self, name, argv, env=None, timeout=None):
    """`python ARGV` from the repository root, its output in logs/NAME.log;
    raises StepFailed on a non-zero exit."""
    log = os.path.join(self.logs, name + ".log")
    with open(log, "w") as f:
      r = subprocess.run([sys.executable, *argv], cwd=REPO, env=env or self.env,
                         stdout=subprocess.PIPE, stderr=f, text=True,
                         timeout=timeout or self.timeout)
      f.write("\n--- stdout ---\n" + r.stdout)
    if r.returncode:
      raise StepFailed(f"{' '.join(argv[:3])} exited {r.returncode} "
                       f"(see logs/{name}.log)")
    return r.stdout


def stage_results(workdir, stage):
  with open(os.path.join(workdir, stage, "results.json")) as f:
    return json.load(f)


def final_params(workdir, stage="student"):
  _, state = checkpointing.read_packed_state(
      os.path.join(workdir, stage, "checkpoints", "latest"))
  return [np.asarray(x) for x in jax.tree.leaves(state["params"])]


def step_quickstart(ck: Check) -> dict:
  wd = ck.path("quickstart")
  shutil.rmtree(wd, ignore_errors=True)
  ck.run("quickstart", ["-m", "kd_jax.main", *ck.quickstart, f"--workdir={wd}"])
  out = {s: round(stage_results(wd, s)["test"]["accuracy"], 4)
         for s in ("teacher", "scratch", "student")}
  out["dataset"] = stage_results(wd, "student")["dataset"]
  return {f"{k}_test_acc" if k != "dataset" else k: v for k, v in out.items()}


def step_study(ck: Check) -> dict:
  study_dir = ck.path("study")
  shutil.rmtree(study_dir, ignore_errors=True)
  arg = "seeds=4" + (",runlocal" if ck.smoke else "")
  ck.run("study", ["-m", "kd_jax.study", "run", "configs/quickstart_study.py",
                   f"--study_dir={study_dir}", f"--arg={arg}",
                   "--only=student=tiny_cnn,method=vanilla", "--vmap"])
  cells = [d for d in sorted(os.listdir(study_dir)) if d != "teacher"
           and os.path.exists(os.path.join(study_dir, d, "student",
                                          "results.json"))]
  res = [stage_results(os.path.join(study_dir, d), "student") for d in cells]
  if len(res) != 4 or any(r.get("vmapped_with") != 4 for r in res):
    raise StepFailed(f"expected 4 cells trained as one vmapped group, got "
                     f"{[r.get('vmapped_with') for r in res]}")
  ck.run("report", ["-m", "kd_jax.report", study_dir]
         + (["--no_timing"] if ck.smoke else []))
  if not os.path.exists(os.path.join(study_dir, "report", "report.md")):
    raise StepFailed("kd_jax.report wrote no report.md")
  accs = [r["test"]["accuracy"] for r in res]
  return {"cells": len(res), "vmapped_with": 4,
          "test_acc_mean": round(float(np.mean(accs)), 4),
          "report": os.path.relpath(os.path.join(study_dir, "report",
                                                 "report.md"), ck.out)}


def _latest_steps(workdir):
  d = os.path.join(workdir, "student", "checkpoints", "latest")
  return [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []


def _kill_mid_student(ck: Check, argv, wd, at_step):
  """Starts `kd_jax.main ARGV`, kill -9s it once the student has saved a
  checkpoint at step >= `at_step`; returns that step."""
  with open(os.path.join(ck.logs, "kill_resume.killed.log"), "w") as f:
    proc = subprocess.Popen([sys.executable, "-m", "kd_jax.main", *argv],
                            cwd=REPO, env=ck.env, stdout=f, stderr=f)
    deadline = time.time() + ck.timeout
    while proc.poll() is None and time.time() < deadline:
      saved = [s for s in _latest_steps(wd) if s >= at_step]
      if saved:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return min(saved)
      time.sleep(0.005)
    proc.kill()
    proc.wait()
  raise StepFailed(f"the run ended (exit {proc.returncode}) before its "
                   f"student reached step {at_step}: nothing to kill")


def step_kill_resume(ck: Check) -> dict:
  ref = ck.path("quickstart")
  ref_res = stage_results(ref, "student")
  spe = ref_res["steps"] // max(1, ref_res["epochs_run"])
  wd = ck.path("killed")
  shutil.rmtree(wd, ignore_errors=True)
  # A save every half epoch; the kill follows the save in the middle of the
  # second epoch (or a later one).
  half = max(1, spe // 2)
  argv = [*ck.quickstart, f"--config.checkpoint_every_steps={half}",
          f"--workdir={wd}"]
  killed_at = _kill_mid_student(ck, argv, wd, spe + half)
  if os.path.exists(os.path.join(wd, "student", "results.json")):
    raise StepFailed("the killed run had finished its student")
  stdout = ck.run("kill_resume", ["-m", "kd_jax.main", *argv])
  m = re.search(r"\[student\] resumed from step (\d+)", stdout)
  if not m:
    raise StepFailed("the rerun did not resume the student")
  res = stage_results(wd, "student")
  a, b = final_params(ref), final_params(wd)
  diff = max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))
  acc, ref_acc = res["test"]["accuracy"], ref_res["test"]["accuracy"]
  out = {"killed_after_step": killed_at, "resumed_from": int(m.group(1)),
         "mid_epoch": int(m.group(1)) % spe != 0,
         "steps": res["steps"], "test_acc": acc, "uninterrupted_test_acc": ref_acc,
         "max_abs_param_diff": diff, "bitwise": diff == 0.0,
         "xla_flags": ck.xla_flags}
  # One test example's worth of accuracy is the float tolerance here.
  n_test = int(np.sum(ref_res["test"]["confusion"]))
  if abs(acc - ref_acc) > 1.0 / n_test + 1e-12 or res["steps"] != ref_res["steps"]:
    raise StepFailed(f"resumed test accuracy {acc:.4f} vs uninterrupted "
                     f"{ref_acc:.4f} (max weight difference {diff:.3g})")
  return out


def run_config(workdir) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, "config.json")) as f:
    return ml_collections.ConfigDict(json.load(f))


def _write_test_images(workdir, out_dir):
  """The first PREDICT_IMAGES test images of the run's data as PNGs;
  returns (paths, class names of their labels)."""
  ds = data.load(run_config(workdir))
  os.makedirs(out_dir, exist_ok=True)
  n = min(PREDICT_IMAGES, len(ds.test))
  paths = []
  for i in range(n):
    img = np.asarray(ds.test.images[i])
    img = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    paths.append(os.path.join(out_dir, f"test{i:03d}.png"))
    Image.fromarray(img.astype(np.uint8)).save(paths[-1])
  return paths, [ds.class_names[int(k)] for k in ds.test.labels[:n]]


def _predicted(stdout) -> list[str]:
  return [line.split("\t")[1] for line in stdout.splitlines() if "\t" in line]


def step_export(ck: Check) -> dict:
  run_dir, out = ck.path("quickstart"), ck.path("export")
  os.makedirs(out, exist_ok=True)
  platforms = "cpu" if ck.smoke else "cpu,cuda"
  files = {"stablehlo": os.path.join(out, "student.bin"),
           "tflite": os.path.join(out, "student.tflite")}
  ck.run("export_stablehlo", ["-m", "kd_jax.export", f"--workdir={run_dir}",
                              f"--out={files['stablehlo']}",
                              f"--platforms={platforms}"])
  ck.run("export_tflite", ["-m", "kd_jax.export", "--format=tflite",
                           f"--workdir={run_dir}", f"--out={files['tflite']}"])
  paths, labels = _write_test_images(run_dir, os.path.join(out, "images"))
  preds = {}
  for fmt, model in files.items():
    preds[fmt] = _predicted(ck.run(f"predict_{fmt}", [
        "-m", "kd_jax.predict", f"--model={model}", *paths]))
    if len(preds[fmt]) != len(paths):
      raise StepFailed(f"predict ({fmt}) printed {len(preds[fmt])} lines for "
                       f"{len(paths)} images")
  agree = np.mean([a == b for a, b in zip(preds["stablehlo"], preds["tflite"])])
  out_d = {f"{fmt}_acc": round(float(np.mean(
      [p == y for p, y in zip(preds[fmt], labels)])), 4) for fmt in files}
  out_d |= {"images": len(paths), "agreement": round(float(agree), 4),
            **{f"{fmt}_bytes": os.path.getsize(p) for fmt, p in files.items()}}
  if agree < 0.95:
    raise StepFailed(f"StableHLO and TFLite agree on {agree:.2%} of the images")
  return out_d


def step_throughput(ck: Check) -> dict:
  path = ck.path("gpu_kd_step.json")
  ck.run("throughput", ["benchmarks/gpu_kd_step.py",
                        f"--torch_variants={ck.torch_variants}",
                        *(THROUGHPUT_SMOKE if ck.smoke else THROUGHPUT),
                        f"--json={path}"], env=ck.bench_env)
  with open(path) as f:
    got = json.load(f)
  if not got["rows"]:
    raise StepFailed("gpu_kd_step.py measured nothing")
  return {"device": got["device"], "rows": got["rows"]}


# Phases run one after another; the steps of a phase run together.
NEEDS = {"kill_resume": "quickstart", "export": "quickstart"}  # step 1's run
PHASES = ((("quickstart", step_quickstart), ("study", step_study)),
          (("kill_resume", step_kill_resume), ("export", step_export)),
          (("throughput", step_throughput),))


def run_step(ck: Check, name, fn) -> dict:
  t0 = time.time()
  try:
    details, error = fn(ck), None
  except Exception as e:  # noqa: BLE001  (a failed step is a row, not a crash)
    details, error = {}, f"{type(e).__name__}: {e}".splitlines()[0][:300]
  row = {"step": name, "ok": error is None, "seconds": round(time.time() - t0, 1),
         "details": details, "error": error}
  print(f"[gpu_check] {name}: {'ok' if row['ok'] else 'FAILED'} in "
        f"{row['seconds']} s" + (f" ({error})" if error else ""), flush=True)
  return row


def run_phases(ck: Check, only, parallel) -> list[dict]:
  rows = []
  for phase in PHASES:
    todo = []
    for name, fn in phase:
      failed = [r for r in rows if r["step"] == NEEDS.get(name) and not r["ok"]]
      if failed:
        rows.append({"step": name, "ok": False, "seconds": 0.0, "details": {},
                     "error": f"skipped: needs {NEEDS[name]}"})
      elif name in only:
        todo.append((name, fn))
    with concurrent.futures.ThreadPoolExecutor(
        max(1, len(todo) if parallel else 1)) as pool:
      rows += list(pool.map(lambda s: run_step(ck, *s), todo))
  return rows


def _fmt(v):
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def throughput_table(rows) -> list[str]:
  """The throughput step's rows as markdown."""
  head = ["case", "batch", "precision", "device-resident img/s",
          "sync pipeline img/s", "prefetch pipeline img/s",
          "prefetch / resident", "PyTorch best img/s (variant)",
          "kd_jax / PyTorch"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    t = r.get("torch_images_per_s")
    lines.append("| " + " | ".join([
        r["case"], str(r["batch"]), r["precision"],
        f"{r['images_per_s']:,.0f}", f"{r['pipeline_images_per_s']:,.0f}",
        f"{r['prefetch_images_per_s']:,.0f}",
        f"{r['prefetch_images_per_s'] / r['images_per_s']:.2f}",
        f"{t:,.0f} ({r['torch_best']})" if t else "-",
        f"{r['images_per_s'] / t:.2f}" if t else "-"]) + " |")
  return lines


def markdown(summary) -> str:
  lines = [f"# gpu_check ({'cpu_smoke' if summary['cpu_smoke'] else 'GPU'})",
           "", f"machine: {summary['machine']}; XLA_FLAGS of steps 1-4: "
           f"`{summary['xla_flags'] or '(none)'}`; wall {summary['wall_s']} s", "",
           "| step | result | seconds | details |", "|---|---|---|---|"]
  for r in summary["steps"]:
    details = {k: v for k, v in r["details"].items() if k != "rows"}
    lines.append(f"| {r['step']} | {'ok' if r['ok'] else 'FAILED: ' + r['error']}"
                 f" | {r['seconds']} | "
                 + ", ".join(f"{k}={_fmt(v)}" for k, v in details.items()) + " |")
  rows = next((r["details"].get("rows") for r in summary["steps"]
               if r["step"] == "throughput" and r["ok"]), None)
  if rows:
    lines += ["", f"Throughput on {summary['device']}:", "",
              *throughput_table(rows)]
  return "\n".join(lines) + "\n"


def machine() -> str:
  try:
    gpus = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version",
                           "--format=csv,noheader"], capture_output=True,
                          text=True, timeout=30).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    gpus = ""
  return (f"{gpus or 'no GPU'}; {os.cpu_count()} CPUs; jax {jax.__version__}; "
          f"python {sys.version.split()[0]}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="directory for the results")
  p.add_argument("--cpu_smoke", action="store_true",
                 help="the same steps, tiny, on the CPU")
  p.add_argument("--steps", default=",".join(n for ph in PHASES for n, _ in ph),
                 help="comma list of the steps to run")
  p.add_argument("--xla_flags", default=None, help="steps 1-4's XLA_FLAGS "
                 f"(default: {DETERMINISTIC} on a GPU, none with --cpu_smoke)")
  p.add_argument("--torch_variants", default="eager,cl",
                 help="the PyTorch peer's variants (gpu_kd_step.py; "
                 "cl+compile adds torch.compile, minutes more)")
  p.add_argument("--serial", action="store_true", help="one step at a time")
  p.add_argument("--step_timeout", type=int, default=900)
  args = p.parse_args(argv)
  ck, t0 = Check(args), time.time()
  rows = run_phases(ck, set(args.steps.split(",")), not args.serial)
  tp = next((r for r in rows if r["step"] == "throughput" and r["ok"]), None)
  summary = {"cpu_smoke": ck.smoke, "machine": machine(),
             "device": tp["details"]["device"] if tp else "-",
             "xla_flags": ck.xla_flags, "wall_s": round(time.time() - t0, 1),
             "steps": rows}
  with open(ck.path("gpu_check.json"), "w") as f:
    json.dump(summary, f, indent=1)
  md = markdown(summary)
  with open(ck.path("gpu_check.md"), "w") as f:
    f.write(md)
  print(md)
  return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
