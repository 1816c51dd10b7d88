"""The study report on a synthetic study directory with hand-picked numbers:
statistics against hand-computed values (closed-form t distribution with
2 degrees of freedom), best-setting selection on validation accuracy, the
deployment check with a stand-in profiler, the files and the CLI's errors."""
import csv
import json
import math
import os
import subprocess
import sys

import pytest

from kd_jax.errors import UserError
from kd_jax.study import figures
from kd_jax.study import report
from kd_jax.study import stats
from tests import helpers

T975_DF2 = 4.302652729911275  # t quantile 0.975, 2 degrees of freedom


def _p_two_sided_df2(t):
  """P(|T| > |t|) for Student's t with 2 dof: cdf = 1/2 + t / (2 sqrt(2 + t^2))."""
  return 1 - abs(t) / math.sqrt(2 + t * t)


def test_summarize_matches_hand_computation():
  s = stats.summarize([0.80, 0.82, 0.84])
  assert s.n == 3
  assert s.mean == pytest.approx(0.82)
  assert s.std == pytest.approx(0.02)
  half = T975_DF2 * 0.02 / math.sqrt(3)
  assert (s.ci_low, s.ci_high) == pytest.approx((0.82 - half, 0.82 + half))
  one = stats.summarize([0.5])
  assert one.mean == 0.5 and math.isnan(one.std) and math.isnan(one.ci_low)


def test_paired_t_test_matches_closed_form():
  a = {0: 0.83, 1: 0.86, 2: 0.86, 7: 0.99}  # seed 7 has no partner: ignored
  b = {0: 0.80, 1: 0.82, 2: 0.84}
  p = stats.paired(a, b)
  # differences 0.03, 0.04, 0.02: mean 0.03, std 0.01, t = 0.03 / (0.01 / sqrt 3)
  t = 0.03 / (0.01 / math.sqrt(3))
  assert p.n == 3 and p.diff == pytest.approx(0.03)
  assert p.t == pytest.approx(t)
  assert p.p == pytest.approx(_p_two_sided_df2(t))  # 0.0351
  half = T975_DF2 * 0.01 / math.sqrt(3)
  assert (p.ci_low, p.ci_high) == pytest.approx((0.03 - half, 0.03 + half))
  # One pair, or identical differences: no test.
  assert math.isnan(stats.paired({0: 1.0}, {0: 0.5}).p)
  assert math.isnan(stats.paired({0: 0.6, 1: 0.7}, {0: 0.5, 1: 0.6}).p)


def test_holm_adjustment_and_marking():
  # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04, monotone)
  assert stats.holm([0.04, 0.01, float("nan"), 0.02]) == pytest.approx(
      [0.04, 0.03, float("nan"), 0.04], nan_ok=True)
  assert stats.holm([0.3, 0.01]) == pytest.approx([0.3, 0.02])
  assert [stats.significance(p) for p in (0.01, 0.05, float("nan"))] == [
      "yes", "n.s.", "n/a"]


def test_setting_drops_only_the_seed():
  assert report.setting_of("student-a__method-vanilla__T-4__seed-2") == (
      "student-a__method-vanilla__T-4")
  assert report.setting_of("seed-0__T-2") == "T-2"
  assert report.setting_of("method-none__seed-10") == "method-none"


# ------------------------------------------------------- synthetic study


def _stage(model, method, acc, val, *, params, mb, history=None):
  return {"model": model, "method": method, "best_val_accuracy": val,
          "params": params, "size_mb": mb, "image_size": 32, "num_classes": 4,
          "dataset": "synthetic", "epochs_run": 2,
          "test": {"accuracy": acc, "macro_f1": acc - 0.01, "agreement": 0.9},
          "history": history or [{"epoch": 1, "accuracy": val - 0.1},
                                 {"epoch": 2, "accuracy": val}]}


def _write_cell(root, name, stage, *, T=4.0, alpha=0.5, seed=0, done=True):
  d = os.path.join(root, name)
  os.makedirs(d)
  config = {"seed": seed, "dataset": {"image_size": 32},
            "kd": {"temperature": T, "alpha": alpha, "schedule": "cosine"}}
  with open(os.path.join(d, "config.json"), "w") as f:
    json.dump(config, f)
  if done:
    with open(os.path.join(d, "results.json"), "w") as f:
      json.dump({"config": config, "stages": {"student": stage}}, f)


SCRATCH = {0: 0.80, 1: 0.82, 2: 0.84}
KD_T4 = {0: 0.83, 1: 0.86, 2: 0.86}  # best vanilla by validation accuracy
KD_T8 = {0: 0.90, 1: 0.90, 2: 0.90}  # best by test accuracy, worse on val
CTKD = {0: 0.81, 1: 0.85, 2: 0.86}


@pytest.fixture
def synthetic_study(tmp_path):
  root = str(tmp_path / "study")
  os.makedirs(os.path.join(root, "teacher"))
  with open(os.path.join(root, "teacher", "results.json"), "w") as f:
    json.dump({"stages": {"student": _stage("big", "none", 0.88, 0.9,
                                            params=1000, mb=100.0)}}, f)
  for seed in range(3):
    _write_cell(root, f"student-small__method-none__seed-{seed}",
                _stage("small", "none", SCRATCH[seed], 0.80, params=10, mb=1.0),
                seed=seed)
    _write_cell(root, f"student-small__method-vanilla__T-4__seed-{seed}",
                _stage("small", "vanilla", KD_T4[seed], 0.86, params=10, mb=1.0),
                seed=seed)
    _write_cell(root, f"student-small__method-vanilla__T-8__seed-{seed}",
                _stage("small", "vanilla", KD_T8[seed], 0.70, params=10, mb=1.0),
                T=8.0, seed=seed)
    _write_cell(root, f"student-small__method-ctkd__seed-{seed}",
                _stage("small", "ctkd", CTKD[seed], 0.85, params=10, mb=1.0),
                seed=seed)
    _write_cell(root, f"student-wide__method-vanilla__T-4__seed-{seed}",
                _stage("wide", "vanilla", 0.87, 0.87, params=600, mb=60.0),
                seed=seed)
  _write_cell(root, "student-wide__method-vanilla__T-4__seed-3",
              _stage("wide", "vanilla", 0.0, 0.0, params=600, mb=60.0),
              seed=3, done=False)
  return root


def fake_profile(name, classes, size, timing):
  """Teacher 20 ms, small 2 ms (500 frames/s), wide 50 ms (20 frames/s)."""
  gflops = {"big": 4.0, "small": 0.1, "wide": 2.0}[name]
  out = {"gflops": gflops}
  if timing:
    out["latency_ms"] = {"big": 20.0, "small": 2.0, "wide": 50.0}[name]
  return out


def _csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_report_of_a_synthetic_study(synthetic_study):
  out = report.make_report(synthetic_study, profile_fn=fake_profile)
  rdir = os.path.join(synthetic_study, "report")
  assert out["out_dir"] == rdir
  results = _csv(os.path.join(rdir, "results.csv"))
  assert len(results) == 15  # the unfinished 16th cell is left out
  assert "1 unfinished (student-wide__method-vanilla__T-4__seed-3)" in out["markdown"]
  row = next(r for r in results if r["cell"] == "student-small__method-vanilla__T-8__seed-1")
  assert (row["student"], row["method"], float(row["temperature"]), row["seed"],
          float(row["test_accuracy"])) == ("small", "vanilla", 8.0, "1", 0.90)

  summary = {s["setting"]: s for s in _csv(os.path.join(rdir, "summary.csv"))}
  assert len(summary) == 5
  s = summary["student-small__method-none"]
  half = T975_DF2 * 0.02 / math.sqrt(3)
  assert (int(s["n"]), float(s["test_accuracy_mean"]), float(s["test_accuracy_std"]),
          float(s["test_accuracy_ci95_low"]),
          float(s["test_accuracy_ci95_high"])) == pytest.approx(
              (3, 0.82, 0.02, 0.82 - half, 0.82 + half))

  comps = _csv(os.path.join(rdir, "comparisons.csv"))
  kd = {(c["a"]): c for c in comps if c["kind"] == "kd_vs_scratch"}
  # every small KD setting against small's scratch; 'wide' has no scratch
  assert set(kd) == {"student-small__method-vanilla__T-4",
                     "student-small__method-vanilla__T-8",
                     "student-small__method-ctkd"}
  t4 = kd["student-small__method-vanilla__T-4"]
  t = 0.03 / (0.01 / math.sqrt(3))
  assert float(t4["diff"]) == pytest.approx(0.03)
  assert float(t4["p"]) == pytest.approx(_p_two_sided_df2(t))
  # T=8: the differences 0.10, 0.08, 0.06 -> t = 0.08 / (0.02 / sqrt 3)
  t8 = kd["student-small__method-vanilla__T-8"]
  assert float(t8["p"]) == pytest.approx(_p_two_sided_df2(0.08 / (0.02 / math.sqrt(3))))
  ps = [float(c["p"]) for c in comps]
  assert [float(c["p_holm"]) for c in comps] == pytest.approx(stats.holm(ps))
  for c in comps:
    assert c["significant"] == ("yes" if float(c["p_holm"]) < 0.05 else "n.s.")
  # Method vs method: vanilla's best setting is T=4 (validation), not T=8.
  mm = [c for c in comps if c["kind"] == "method_vs_method"]
  assert [(c["student"], c["a"], c["b"]) for c in mm] == [
      ("small", "student-small__method-ctkd", "student-small__method-vanilla__T-4")]
  diffs = [CTKD[s] - KD_T4[s] for s in range(3)]  # -0.02, -0.01, 0.00
  assert float(mm[0]["diff"]) == pytest.approx(sum(diffs) / 3)

  dep = {d["model"]: d for d in _csv(os.path.join(rdir, "deployment.csv"))}
  assert float(dep["small"]["frames_per_s"]) == pytest.approx(500)
  assert float(dep["small"]["speedup_vs_teacher"]) == pytest.approx(10)
  assert float(dep["small"]["flops_ratio_vs_teacher"]) == pytest.approx(40)
  assert float(dep["small"]["size_ratio_vs_teacher"]) == pytest.approx(100)
  # the student's accuracy is its best KD setting on validation: vanilla T=4
  assert float(dep["small"]["test_accuracy"]) == pytest.approx(sum(KD_T4.values()) / 3)
  assert float(dep["small"]["relative_accuracy"]) == pytest.approx(
      sum(KD_T4.values()) / 3 / 0.88)
  assert dep["small"]["meets_budget"] == "yes"
  assert dep["wide"]["meets_budget"] == "no"  # 20 frames/s and 60 MB
  assert float(dep["wide"]["frames_per_s"]) == pytest.approx(20)

  md = open(os.path.join(rdir, "report.md")).read()
  assert "| student-small__method-none | small | scratch |" in md
  assert "0.8200 ± 0.0200" in md
  assert "n.s." in md or "| yes |" in md
  assert "≥ 30 frames/s at batch 1 and < 50 MB" in md
  for name in ("accuracy_per_student.png", "accuracy_vs_speedup.png",
               "t_alpha_heatmap.png", "training_curves.png",
               "settings_small.png", "settings_wide.png"):
    with open(os.path.join(rdir, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name
    assert f"![{name}]({name})" in md


def test_budget_is_configurable_and_timing_optional(synthetic_study, tmp_path):
  out = report.make_report(synthetic_study, str(tmp_path / "r"), min_fps=600,
                           max_mb=100, profile_fn=fake_profile)
  dep = {d["model"]: d for d in out["deployment"]}
  assert dep["small"]["meets_budget"] == "no"  # 500 < 600 frames/s
  out = report.make_report(synthetic_study, str(tmp_path / "r2"), timing=False,
                           profile_fn=fake_profile)
  dep = {d["model"]: d for d in out["deployment"]}
  assert dep["small"]["meets_budget"] == "not measured"
  assert dep["small"]["flops_ratio_vs_teacher"] == pytest.approx(40)
  assert "Timing was not run" in out["markdown"]


def test_report_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    report.make_report(str(tmp_path / "nope"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(UserError, match="no finished cell"):
    report.make_report(str(tmp_path / "empty"))
  r = subprocess.run([sys.executable, "-m", "kd_jax.report", str(tmp_path / "nope")],
                     cwd=helpers.REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert r.returncode == 2
  assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
  assert "Traceback" not in r.stderr


def test_speedup_figure_has_kd_and_scratch_per_student():
  # Test accuracy of the teacher and, per student, of the best KD setting (by
  # validation) and of scratch, at the student's speed-up.
  teacher = {"model": "big", "test": {"accuracy": 0.8}, "size_mb": 40.0}
  deploy = [{"role": "teacher", "model": "big"},
            {"role": "student", "model": "small", "size_mb": 1.0,
             "speedup_vs_teacher": 10.0, "flops_ratio_vs_teacher": 40.0}]
  def setting(name, val, test):
    return {"setting": name, "val_selected_mean": val,
            "test_accuracy_mean": test, "test_accuracy_std": 0.01}
  best = {("small", "none"): setting("s-none", 0.70, 0.69),
          ("small", "vanilla"): setting("s-vanilla", 0.76, 0.74),
          ("small", "dkd"): setting("s-dkd", 0.74, 0.75)}
  data = figures.speedup_data(deploy, best, teacher)
  assert data["timed"] and data["xscale"] == "log"
  points = data["points"]
  assert [(p["model"], p["kind"], p["method"]) for p in points] == [
      ("big", "teacher", None), ("small", "KD", "vanilla"),
      ("small", "scratch", "none")]
  assert [p["x"] for p in points] == [1.0, 10.0, 10.0]
  assert [p["y"] for p in points] == pytest.approx([80.0, 74.0, 69.0])
  assert [p["err"] for p in points] == pytest.approx([0.0, 1.0, 1.0])


def test_against_a_reference_setting(synthetic_study):
  # Every setting of the reference's student vs its scratch and vs the
  # reference, paired over seeds; Holm over this family of 4 tests only.
  ref = "student-small__method-vanilla__T-4"
  out = report.make_report(synthetic_study, profile_fn=fake_profile,
                           timing=False, reference=ref)
  rows = {r["setting"]: r for r in out["reference"]}
  assert set(rows) == {"student-small__method-vanilla__T-8",
                       "student-small__method-ctkd"}
  ctkd = rows["student-small__method-ctkd"]
  d_scratch = [CTKD[s] - SCRATCH[s] for s in range(3)]   # .01 .03 .02
  d_ref = [CTKD[s] - KD_T4[s] for s in range(3)]         # -.02 -.01 0
  for key, d in (("scratch", d_scratch), ("reference", d_ref)):
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    assert ctkd[f"diff_{key}"] == pytest.approx(mean, abs=1e-12)
    assert ctkd[f"diff_{key}_ci95_low"] == pytest.approx(
        mean - T975_DF2 * sd / math.sqrt(3), abs=1e-9)
    assert ctkd[f"p_{key}"] == pytest.approx(_p_two_sided_df2(t), abs=1e-9)
  ps = [r[f"p_{k}"] for r in out["reference"] for k in ("scratch", "reference")]
  holm = stats.holm(ps)
  assert [r[f"p_holm_{k}"] for r in out["reference"]
          for k in ("scratch", "reference")] == holm
  assert "## Against scratch and " + ref in out["markdown"]
  assert os.path.exists(os.path.join(out["out_dir"], "reference.csv"))
  r = subprocess.run([sys.executable, "-m", "kd_jax.report", synthetic_study,
                      "--no_timing", "--reference=method-bogus"],
                     cwd=helpers.REPO, capture_output=True, text=True,
                     env=dict(os.environ, PYTHONPATH=helpers.REPO))
  assert r.returncode == 2 and "--reference='method-bogus'" in r.stderr
  assert r.stderr.strip().count("\n") == 0
