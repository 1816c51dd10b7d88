"""Per-video and per-patient results: the frames `prepare` cut from videos
are scored per video (mean frame probability, majority vote) and per
patient, in results.json and the run table, checked against a plain-Python
re-computation from the saved test predictions and the manifest."""
import collections
import csv
import os

import numpy as np

from kd_jax import metrics
from kd_jax.train import pipeline as train
from tests import helpers


def _reference(probs, labels, units):
  """{unit: (label, mean-probability class, vote class)} with dicts and
  Counters: a unit's label is its frames' most common one, a vote tie goes
  to the tied class of higher mean probability."""
  frames = collections.defaultdict(list)
  for p, y, u in zip(probs, labels, units):
    frames[u].append((p, y))
  out = {}
  for u, rows in frames.items():
    mean = np.mean([p for p, _ in rows], axis=0)
    votes = collections.Counter(int(np.argmax(p)) for p, _ in rows)
    top = max(votes.values())
    truth = collections.Counter(y for _, y in rows).most_common(1)[0][0]
    out[u] = (truth, int(np.argmax(mean)),
              max((c for c, n in votes.items() if n == top),
                  key=lambda c: mean[c]))
  return out


def _accuracies(ref):
  n = len(ref)
  return (sum(t == m for t, m, _ in ref.values()) / n,
          sum(t == v for t, _, v in ref.values()) / n, n)


def test_unit_metrics_match_a_counter_reference():
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(3), size=60)
  probs[:3] = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3],
               [0.4, 0.4, 0.2]]  # unit 'a': frame votes 0, 1, 0
  probs[3:5] = [[0.6, 0.4, 0.0], [0.1, 0.9, 0.0]]  # unit 'b': a 1-1 tie
  units = np.asarray(["a"] * 3 + ["b"] * 2 + [f"v{i % 9}" for i in range(55)])
  labels = rng.integers(0, 3, 60)
  labels[:5] = 1
  got = metrics.unit_metrics(probs, labels, units, "video")
  mean_acc, vote_acc, n = _accuracies(_reference(probs, labels, units))
  assert got == {"video_accuracy": mean_acc, "video_vote_accuracy": vote_acc,
                 "videos": n}
  # Unit 'a' (label 1): its mean probability says 1, its vote 0.
  assert _reference(probs, labels, units)["a"] == (1, 1, 0)
  # Unit 'b': votes 0 and 1 tie; class 1's mean (0.65) breaks it.
  assert _reference(probs, labels, units)["b"] == (1, 1, 1)


def test_a_run_on_prepared_frames_reports_videos_and_patients(tmp_path,
                                                              capsys):
  videos, labels = helpers.write_echo_videos(str(tmp_path), patients=4,
                                             frames=6, size=32)
  frames = str(tmp_path / "frames")
  r = helpers.run_cli_module("kd_jax.prepare", "frames", f"--videos={videos}",
                             f"--labels={labels}", f"--out={frames}",
                             "--size=32", "--val_fraction=0.25",
                             "--test_fraction=0.25")
  assert r.returncode == 0, r.stderr
  c = helpers.tiny_config("method=none,student=tiny_cnn", num_epochs=1,
                          **{"dataset.name": "folder",
                             "dataset.data_dir": frames})
  workdir = str(tmp_path / "run")
  summary = train.train_and_evaluate(c, workdir)
  test = summary["stages"]["student"]["test"]
  saved = np.load(os.path.join(workdir, "student", "test_predictions.npz"))
  with open(os.path.join(frames, "manifest.csv")) as f:
    manifest = [row for row in csv.DictReader(f) if row["split"] == "test"]
  # The manifest, not the saved arrays, says which video a frame is of.
  order = sorted(manifest, key=lambda row: row["path"])
  assert list(saved["video"]) == [row["video"] for row in order]
  for unit, key in (("video", "video"), ("patient", "group")):
    ids = [row[key] for row in order]
    mean_acc, vote_acc, n = _accuracies(
        _reference(saved["probs"], saved["labels"], ids))
    assert test[f"{unit}_accuracy"] == mean_acc
    assert test[f"{unit}_vote_accuracy"] == vote_acc
    assert test[f"{unit}s"] == n == 4  # one test video/patient per view
  row = summary["rows"][-1]
  assert row["test_video_accuracy"] == test["video_accuracy"]
  assert "video acc" in capsys.readouterr().out
