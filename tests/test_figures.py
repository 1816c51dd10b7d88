"""The report's figures by their data: a synthetic binary study whose cells'
results.json carry an imported teacher (test metrics, no validation
accuracy) beside each KD student, read by `kd_jax.report` as a real study;
each figure's `*_data` is checked against the hand-picked numbers and each
`draw_*` against its data."""
import json
import math
import os

import matplotlib
import numpy as np
import pytest
from matplotlib import colors as mcolors

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after the backend)

from kd_jax.distill import methods
from kd_jax.study import figures
from kd_jax.study import report
from tests import helpers

TEACHER_ACC = 0.91  # the imported teacher's test accuracy
# (student, method, T) -> test accuracy per seed; validation accuracy.
SETTINGS = {
    ("small", "none", None): ((0.80, 0.82, 0.84), 0.80),
    ("small", "vanilla", 2.0): ((0.83, 0.86, 0.86), 0.86),
    ("small", "vanilla", 4.0): ((0.99, 0.70, 0.85), 0.84),  # a wide spread
    ("small", "dkd", 4.0): ((0.85, 0.85, 0.85), 0.83),
    ("tiny", "none", None): ((0.70, 0.72, 0.74), 0.70),
    ("tiny", "vanilla", 4.0): ((0.75, 0.77, 0.79), 0.78),
}
MB = {"small": 1.0, "tiny": 0.25, "resnet50": 94.0}


def _cell_name(student, method, T, seed):
  name = f"student-{student}__method-{method}"
  return name + (f"__T-{T:g}" if T is not None else "") + f"__seed-{seed}"


def _test_metrics(acc):
  return {"accuracy": acc, "macro_f1": acc - 0.01,
          "balanced_accuracy": acc - 0.02, "auc": acc, "pr_auc": 0.5,
          "confusion": [[20, 4], [5, 11]]}


def _imported_teacher():
  """What pipeline.evaluate_loaded_teacher writes: no validation accuracy."""
  return {"role": "teacher", "model": "resnet50",
          "method": "imported (torchvision)", "params": 23_500_000,
          "size_mb": MB["resnet50"], "test": _test_metrics(TEACHER_ACC),
          "checkpoint": "/weights/resnet50.pth"}


def _student(student, method, acc, val):
  """The fields of Stage.result that the report reads."""
  return {"role": "student", "model": student, "method": method,
          "dataset": "mhist", "num_classes": 2, "image_size": 32,
          "params": int(MB[student] * 250_000), "size_mb": MB[student],
          "test": _test_metrics(acc), "select_metric": "accuracy",
          "best_val": val, "best_val_accuracy": val, "best_epoch": 2,
          "epochs_run": 2,
          "history": [{"epoch": 1, "step": 5, "accuracy": val - 0.1},
                      {"epoch": 2, "step": 10, "accuracy": val}]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp("figures") / "study"
  for (student, method, T), (accs, val) in SETTINGS.items():
    for seed, acc in enumerate(accs):
      d = root / _cell_name(student, method, T, seed)
      (d / "student").mkdir(parents=True)
      helpers.write_binary_predictions(
          str(d / "student" / "test_predictions.npz"), seed, 40, 0.4)
      config = {"seed": seed, "dataset": {"image_size": 32},
                "kd": {"temperature": T or 1.0, "alpha": 0.5,
                       "schedule": "cosine"}}
      stages = {"student": _student(student, method, acc, val)}
      if method != methods.SCRATCH:
        stages = {"teacher": _imported_teacher(), **stages}
      (d / "config.json").write_text(json.dumps(config))
      (d / "results.json").write_text(json.dumps(
          {"config": config, "class_names": ["HP", "SSA"], "stages": stages,
           "rows": list(stages.values())}))
  return str(root)


def fake_profile(name, classes, size, timing):
  """resnet50 40 ms, small 4 ms, tiny 1 ms: speed-ups 10 and 40."""
  out = {"gflops": {"resnet50": 4.0, "small": 0.4, "tiny": 0.1}[name]}
  if timing:
    out["latency_ms"] = {"resnet50": 40.0, "small": 4.0, "tiny": 1.0}[name]
  return out


@pytest.fixture(scope="module")
def tables(study, tmp_path_factory):
  """What make_report hands write_figures, read back from the study."""
  out = report.make_report(study, str(tmp_path_factory.mktemp("report")),
                           profile_fn=fake_profile)
  rows, teacher, _ = report.gather(study)
  return {"out": out, "rows": rows, "teacher": teacher,
          "summary": out["summary"], "best": report.best_settings(
              out["summary"]), "deploy": out["deployment"]}


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plt.close("all")


def _mean_std(values):
  return 100 * np.mean(values), 100 * np.std(values, ddof=1)


def _hex(color):
  return mcolors.to_hex(color)


def test_report_draws_every_figure_with_an_imported_teacher(tables):
  out = tables["out"]
  assert tables["teacher"]["method"] == "imported (torchvision)"
  assert "best_val_accuracy" not in tables["teacher"]
  assert out["figures"] == [
      "accuracy_per_student.png", "accuracy_vs_speedup.png",
      "settings_small.png", "settings_tiny.png", "t_alpha_heatmap.png",
      "training_curves.png", "roc.png", "confusion_best.png"]
  for name in out["figures"]:
    with open(os.path.join(out["out_dir"], name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_speedup_plots_the_imported_teacher_at_its_test_accuracy(tables):
  data = figures.speedup_data(tables["deploy"], tables["best"],
                              tables["teacher"])
  assert data["timed"] and data["notes"] == []
  points = {(p["model"], p["kind"]): p for p in data["points"]}
  assert set(points) == {("resnet50", "teacher"), ("small", "KD"),
                         ("small", "scratch"), ("tiny", "KD"),
                         ("tiny", "scratch")}
  teacher = points[("resnet50", "teacher")]
  assert (teacher["x"], teacher["y"]) == pytest.approx((1.0, 91.0))
  # The students on the same basis: test accuracy in %, mean ± std.
  kd = points[("small", "KD")]  # vanilla T=2: the best KD setting on val
  assert (kd["method"], kd["setting"]) == (
      "vanilla", "student-small__method-vanilla__T-2")
  assert (kd["x"], kd["y"], kd["err"]) == pytest.approx(
      (10.0, *_mean_std([0.83, 0.86, 0.86])))
  scratch = points[("tiny", "scratch")]
  assert (scratch["x"], scratch["y"], scratch["err"]) == pytest.approx(
      (40.0, *_mean_std([0.70, 0.72, 0.74])))
  assert data["ylabel"].startswith("test accuracy (%")
  _assert_holds(data["ylim"], data["points"])
  assert data["xscale"] == "log"
  assert data["xlim"][0] < 1.0 and data["xlim"][1] > 40.0


def test_a_trained_teacher_is_plotted_on_test_not_validation_accuracy():
  teacher = {"model": "big", "size_mb": 40.0, "best_val_accuracy": 0.95,
             "test": {"accuracy": 0.90}}
  data = figures.speedup_data([], {}, teacher)
  assert [p["y"] for p in data["points"]] == pytest.approx([90.0])
  line = figures.settings_data([], teacher, "s")["teacher"]
  assert line["y"] == pytest.approx(90.0)
  assert line["label"] == "teacher big: 90.00 %"


@pytest.mark.parametrize("test", [{}, {"accuracy": None},
                                  {"accuracy": math.nan}])
def test_a_teacher_without_test_accuracy_is_left_out_with_a_note(
    tables, test):
  teacher = dict(tables["teacher"], test=test)
  note = "teacher resnet50: no test accuracy, not drawn"
  data = figures.speedup_data(tables["deploy"], tables["best"], teacher)
  assert [p["kind"] for p in data["points"]].count("teacher") == 0
  assert 100.0 not in [p["y"] for p in data["points"]]
  assert data["notes"] == [note]
  fig = figures.draw_accuracy_vs_speedup(data)
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert note in legend
  settings = figures.settings_data(tables["summary"], teacher, "small")
  assert settings["teacher"] is None and settings["notes"] == [note]
  bars = figures.per_student_data(tables["best"], teacher)
  assert bars["teacher"] is None and bars["notes"] == [note]


def _assert_holds(ylim, points):
  """Every point and its error bar lies inside the axis, with a margin."""
  lo, hi = ylim
  for p in points:
    assert lo < p["y"] - p["err"] and p["y"] + p["err"] < hi, (p, ylim)


def test_settings_figure_plots_every_setting_and_the_teacher_line(tables):
  data = figures.settings_data(tables["summary"], tables["teacher"], "small")
  points = data["points"]
  assert [p["setting"] for p in points] == [  # scratch first
      "student-small__method-none", "student-small__method-dkd__T-4",
      "student-small__method-vanilla__T-2",
      "student-small__method-vanilla__T-4"]
  assert [p["label"] for p in points] == [
      "scratch", "dkd\nT-4", "vanilla\nT-2", "vanilla\nT-4"]
  for p, accs in zip(points, ([0.80, 0.82, 0.84], [0.85] * 3,
                              [0.83, 0.86, 0.86], [0.99, 0.70, 0.85])):
    assert (p["y"], p["err"]) == pytest.approx(_mean_std(accs))
  assert data["teacher"]["y"] == pytest.approx(100 * TEACHER_ACC)
  assert data["teacher"]["label"] == "teacher resnet50: 91.00 %"
  # vanilla T=4: 84.67 ± 14.57, its bar reaches 99.2; the axis holds it.
  _assert_holds(data["ylim"], points)
  lo, hi = data["ylim"]
  assert lo < 100 * TEACHER_ACC < hi
  assert 60 < lo < 70.1 and 99.3 < hi < 104
  fig = figures.draw_settings(data)
  ax = fig.axes[0]
  assert ax.get_ylim() == pytest.approx(data["ylim"])
  assert tuple(fig.get_size_inches()) == pytest.approx(data["figsize"])
  assert [t.get_text() for t in ax.get_xticklabels()] == [
      p["label"] for p in points]
  assert [ln.get_ydata()[0] for ln in ax.get_lines()
          if ln.get_linestyle() == "--"] == pytest.approx([91.0])


def _summary(n):
  return [{"setting": f"student-s__method-vanilla__T-{t}", "student": "s",
           "method": "vanilla", "test_accuracy_mean": 0.8 + 0.001 * t,
           "test_accuracy_std": 0.01} for t in range(n)]


def test_settings_figure_widens_with_the_settings():
  widths = [figures.settings_data(_summary(n), None, "s")["figsize"][0]
            for n in (2, 8, 16, 32)]
  assert widths == sorted(widths) and widths[1] < widths[2] < widths[3]
  assert widths[0] >= 6.5  # a few settings are not squashed either
  # Without a teacher: no line, no note; a narrow spread gets a margin.
  data = figures.settings_data(_summary(2), None, "s")
  assert data["teacher"] is None and data["notes"] == []
  assert data["ylim"] == pytest.approx((79.0 - 0.5, 81.1 + 0.5))


def test_span_holds_the_values_with_a_margin():
  assert figures.span([80.0], [90.0]) == pytest.approx((79.0, 91.0))
  assert figures.span([0.5], [1.0]) == pytest.approx((0.0, 1.5))  # not < 0
  assert figures.span([-5.0], [15.0]) == pytest.approx((-7.0, 17.0))
  assert figures.span([], []) == (0.0, 100.0)


def test_per_student_bars_and_teacher_line(tables):
  data = figures.per_student_data(tables["best"], tables["teacher"])
  bars = {(b["student"], b["method"]): b for b in data["bars"]}
  assert list(bars)[:2] == [("small", "none"), ("tiny", "none")]
  assert (bars[("small", "dkd")]["y"], bars[("small", "dkd")]["err"]) == (
      pytest.approx((85.0, 0.0)))
  assert data["teacher"]["y"] == pytest.approx(91.0)
  assert data["ylim"][0] == 0.0
  assert data["ylim"][1] > max(b["y"] + b["err"] for b in data["bars"])
  fig = figures.draw_accuracy_per_student(data)
  assert fig.axes[0].get_ylim() == pytest.approx(data["ylim"])


def test_scratch_has_one_colour_in_every_figure(tables):
  t = tables
  scratch = figures.METHOD_COLORS[methods.SCRATCH]
  data = {
      "per_student": figures.per_student_data(t["best"], t["teacher"])["bars"],
      "speedup": figures.speedup_data(t["deploy"], t["best"],
                                      t["teacher"])["points"],
      "settings": figures.settings_data(t["summary"], t["teacher"],
                                        "small")["points"],
      "curves": [ln for panel in figures.curves_data(t["rows"])["panels"]
                 for ln in panel["lines"]],
      "roc": figures.roc_data(t["rows"], t["best"], t["teacher"])["curves"],
  }
  for name, items in data.items():
    by_method = {}
    for item in items:
      if item["method"] is not None:
        by_method.setdefault(item["method"], set()).add(item["color"])
    assert by_method[methods.SCRATCH] == {scratch}, name
    assert by_method["vanilla"] == {figures.METHOD_COLORS["vanilla"]}, name
  # The drawn figures use the data's colours.
  fig = figures.draw_accuracy_per_student(
      figures.per_student_data(t["best"], t["teacher"]))
  patches = {p.get_label(): p for p in fig.axes[0].containers}
  assert _hex(patches["scratch"].patches[0].get_facecolor()) == scratch
  fig = figures.draw_settings(figures.settings_data(
      t["summary"], t["teacher"], "small"))
  marks = {c.get_label(): c.lines[0] for c in fig.axes[0].containers}
  assert _hex(marks["scratch"].get_color()) == scratch


def test_method_colours_are_one_per_registry_method():
  colors = figures.METHOD_COLORS
  assert set(colors) == set(methods.METHODS)
  assert len(set(colors.values())) == len(colors)
  assert figures.TEACHER_COLOR not in colors.values()
  assert figures.method_color("not-a-method") == figures.OTHER_COLOR


def test_training_curves_and_roc_follow_the_rows(tables):
  panels = figures.curves_data(tables["rows"])["panels"]
  assert [p["student"] for p in panels] == ["small", "tiny"]
  line = next(ln for ln in panels[0]["lines"]
              if ln["setting"] == "student-small__method-vanilla__T-2")
  assert line["epochs"] == [1, 2]
  assert line["y"] == pytest.approx([76.0, 86.0])
  styles = [ln["linestyle"] for ln in panels[0]["lines"]
            if ln["method"] == "vanilla"]
  assert len(set(styles)) == 2  # two vanilla settings, told apart
  curves = figures.roc_data(tables["rows"], tables["best"],
                            tables["teacher"])["curves"]
  assert [(c["student"], c["method"]) for c in curves] == [
      ("small", "dkd"), ("small", "none"), ("small", "vanilla"),
      ("tiny", "none"), ("tiny", "vanilla")]
  assert {c["linestyle"] for c in curves if c["student"] == "tiny"} != {
      c["linestyle"] for c in curves if c["student"] == "small"}
