"""configs/cifar100_benchmark.py: every pair and cell is a valid config with
the benchmark's recipe; the tiny study of one pair runs end to end (slow)."""
import os

import pytest

from kd_jax import config_lib
from kd_jax.study import report
from kd_jax.study import runner as study
from tests import helpers

PATH = os.path.join(helpers.REPO, "configs", "cifar100_benchmark.py")


def test_every_pair_and_cell_is_the_benchmark_recipe():
  mod = study.load_module(PATH)
  assert len(mod.PAIRS) == 8
  for pair in mod.PAIRS:
    s = study.Study(PATH, f"pair={pair}")
    teacher, student = pair.split("-")
    methods = []
    for cfg in s.configs:
      config_lib.validate(cfg)
      assert (cfg.teacher.name, cfg.student.name) == (teacher, student)
      assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size,
              cfg.num_epochs, cfg.lr_schedule, cfg.lr_decay_epochs) == (
                  "sgd", 0.9, 5e-4, 64, 240, "step", "150,180,210")
      assert cfg.dataset.random_crop and cfg.dataset.random_flip
      assert cfg.learning_rate == (0.01 if "mobilenet" in student
                                   or "shufflenet" in student else 0.05)
      assert config_lib.teacher_lr(cfg) == 0.05
      methods.append(cfg.kd.method)
    fsp = ["fsp", "kdsvd"] if pair in mod.FSP_PAIRS else []
    preact = ["ab", "ofd"] if pair in mod.PREACT_PAIRS else []
    assert methods == ["none", "vanilla", "at", "pkt", "sp", "rkd", "vid",
                       "crd", "reviewkd", "dkd", "dist", "ctkd", "cc",
                       "nst", "ft"] + fsp + preact
  with pytest.raises(config_lib.UserError, match="not a benchmark pair"):
    study.Study(PATH, "pair=resnet8-resnet110")


@pytest.mark.slow
def test_tiny_benchmark_study_runs_every_method(tmp_path):
  # CIFAR-100 cannot be read offline: the embedded default data at 32 px.
  s = study.Study(PATH, "runlocal,dataset.name=default", str(tmp_path / "s"))
  assert study.run(s, in_process=True) == 0
  out = report.make_report(s.study_dir, timing=False)
  methods = {r["method"] for r in out["rows"]}
  assert methods == {"none", "vanilla", "at", "pkt", "sp", "rkd", "vid",
                     "crd", "reviewkd", "dkd", "dist", "ctkd", "cc", "nst",
                     "ft", "fsp", "kdsvd", "ab", "ofd"}
  assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in out["rows"])
