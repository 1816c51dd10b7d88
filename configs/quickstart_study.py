"""A small study on the embedded default data: 2 students x {scratch, vanilla
KD} x 2 seeds, one shared mlp_1200x2 teacher (`--arg=runlocal` for the tiny
version the tests run; `--arg=seeds=5` for more seeds):

  python -m kd_jax.study run configs/quickstart_study.py --study_dir=/tmp/qs_study
  python -m kd_jax.report /tmp/qs_study
"""
import importlib.util
import os

from kd_jax import study

STUDENTS = ("mlp_small", "tiny_cnn")


def _quickstart():
  spec = importlib.util.spec_from_file_location(
      "kd_jax_quickstart_config",
      os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def get_config(arg=None):
  """The quickstart recipe (configs/quickstart.py), one cell at a time: the
  scratch students are cells of their own, so no per-cell scratch run."""
  c = _quickstart().get_config(arg)
  c.scratch_baseline = False
  return c


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=2)
  return [study.join(f"student={s},method={m},seed={seed}", common)
          for s in STUDENTS for m in ("none", "vanilla") for seed in range(seeds)]
