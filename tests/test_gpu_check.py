"""benchmarks/gpu_check.py --cpu_smoke: the GPU session's five checks, tiny,
on the CPU, so the script a GPU machine runs stays runnable."""
import json
import os
import subprocess
import sys

import pytest

from tests import helpers

SCRIPT = os.path.join(helpers.REPO, "benchmarks", "gpu_check.py")


def _check(out, *args, timeout):
  r = subprocess.run([sys.executable, SCRIPT, f"--out={out}", "--cpu_smoke",
                      *args], cwd=helpers.REPO, capture_output=True, text=True,
                     timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  with open(os.path.join(out, "gpu_check.json")) as f:
    summary = json.load(f)
  assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
  return summary, open(os.path.join(out, "gpu_check.md")).read()


def _assert_throughput(summary, md):
  (tp,) = [s for s in summary["steps"] if s["step"] == "throughput"]
  rows = tp["details"]["rows"]
  assert {r["precision"] for r in rows} == {"f32", "bf16"}
  for r in rows:
    for k in ("images_per_s", "pipeline_images_per_s", "prefetch_images_per_s"):
      assert r[k] > 0, k
  assert "prefetch pipeline img/s" in md and "| smoke | 8 | f32 |" in md


@pytest.mark.slow
def test_throughput_step(tmp_path):
  """Step 5 alone (gpu_kd_step.py: device-resident, sync and prefetched
  pipelines, the PyTorch peer on the CPU), and the markdown and JSON."""
  summary, md = _check(str(tmp_path), "--steps=throughput", timeout=600)
  assert [s["step"] for s in summary["steps"]] == ["throughput"]
  _assert_throughput(summary, md)


@pytest.mark.slow
def test_all_five_steps(tmp_path):
  summary, md = _check(str(tmp_path), timeout=1500)
  steps = {s["step"]: s for s in summary["steps"]}
  assert list(steps) == ["quickstart", "study", "kill_resume", "export",
                         "throughput"]
  assert all(s["ok"] for s in steps.values()), md
  kr = steps["kill_resume"]["details"]
  assert kr["mid_epoch"] and kr["bitwise"]  # the CPU resumes bit for bit
  assert kr["test_acc"] == kr["uninterrupted_test_acc"]
  assert steps["study"]["details"]["vmapped_with"] == 4
  assert steps["export"]["details"]["agreement"] >= 0.95
  _assert_throughput(summary, md)
