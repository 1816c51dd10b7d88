"""A small study on the embedded default data: 2 students x {scratch, vanilla
KD} x 2 seeds, one shared mlp_1200x2 teacher (`--arg=runlocal` for the tiny
version the tests run; `--arg=seeds=5` for more seeds):

  python -m kd_jax.study run configs/quickstart_study.py --study_dir=/tmp/qs_study
  python -m kd_jax.report /tmp/qs_study
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

STUDENTS = ("mlp_small", "tiny_cnn")


def get_config(arg=None):
  """The quickstart recipe (configs/quickstart.py), one cell at a time: the
  scratch students are cells of their own, so no per-cell scratch run."""
  c = config_lib.sibling_config(__file__, "quickstart.py").get_config(arg)
  c.scratch_baseline = False
  return c


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=2)
  return [study.join(f"student={s},method={m},seed={seed}", common)
          for s in STUDENTS for m in ("none", "vanilla") for seed in range(seeds)]
