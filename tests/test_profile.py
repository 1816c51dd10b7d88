"""Model facts: params, MB, XLA FLOPs against hand-computed values; the CLI table."""
import subprocess
import sys

import pytest

from kd_jax import models
from kd_jax.models import profile
from tests import helpers


def test_mlp_small_facts_by_hand():
  r = profile.profile("mlp_small", num_classes=10, image_size=28, latency_runs=3,
                      throughput_batch=8, throughput_runs=2)
  d_in = 28 * 28 * 3
  params = d_in * 32 + 32 + 32 * 10 + 10
  assert r["params"] == params == models.count_params("mlp_small", 10, 28)
  assert r["size_mb_f32"] == pytest.approx(params * 4 / 1e6)
  assert r["size_mb_bf16"] == pytest.approx(params * 2 / 1e6)
  # Two matmuls dominate: 2 FLOPs per multiply-add (biases/ReLU add < 1%).
  assert r["gflops"] * 1e9 == pytest.approx(2 * (d_in * 32 + 32 * 10), rel=0.02)
  assert r["latency_ms"] > 0 and r["frames_per_s"] == pytest.approx(1e3 / r["latency_ms"])
  assert r["images_per_s"] > 0


def test_simple_cnn_flops_by_hand():
  r = profile.profile("simple_cnn", num_classes=10, image_size=32, timing=False)
  # conv1 3->88 at 32x32, conv2 88->176 at 16x16 (3x3, SAME), head 8*8*176 -> 10.
  # XLA counts only taps that land inside the image: along one axis of size n
  # a 3-tap SAME window has 3(n-2) + 2*2 valid taps over the n outputs.
  def taps(n):
    return (3 * (n - 2) + 4) ** 2
  macs = taps(32) * 3 * 88 + taps(16) * 88 * 176 + 8 * 8 * 176 * 10
  assert r["gflops"] * 1e9 == pytest.approx(2 * macs, rel=0.01)


def test_batchnorm_statistics_count_in_size_not_params():
  r = profile.profile("resnet18", num_classes=10, image_size=32, timing=False)
  shapes = models.init_shapes("resnet18", 10, 32)
  n_stats = sum(x.size for x in __import__("jax").tree.leaves(shapes["batch_stats"]))
  assert r["params"] == models.count_params("resnet18", 10, 32)
  assert r["size_mb_f32"] == pytest.approx((r["params"] + n_stats) * 4 / 1e6)


def test_cli_list_and_unknown_model():
  r = subprocess.run([sys.executable, "-m", "kd_jax.models", "--list",
                      "--models=mlp_small,tiny_cnn", "--image_size=32",
                      "--num_classes=10", "--runs=2"], cwd=helpers.REPO,
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  assert lines[1].split()[:3] == ["model", "params", "MB"]
  row = next(l for l in lines if l.startswith("tiny_cnn"))
  assert f"{models.count_params('tiny_cnn', 10, 32):,}" in row
  bad = subprocess.run([sys.executable, "-m", "kd_jax.models", "--list",
                        "--models=alexnet"], cwd=helpers.REPO, capture_output=True,
                       text=True, timeout=300)
  assert bad.returncode == 2 and "unknown model 'alexnet'" in bad.stderr
