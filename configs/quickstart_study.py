"""A small study on the embedded default data: 2 students x {scratch, vanilla
KD} x 2 seeds, one shared mlp_1200x2 teacher (`--arg=runlocal` for the tiny
version the tests run; `--arg=seeds=5` for more seeds):

  python -m kd_jax.study run configs/quickstart_study.py --study_dir=/tmp/qs_study
  python -m kd_jax.report /tmp/qs_study
"""
from kd_jax import config_lib, study

STUDENTS = ("mlp_small", "tiny_cnn")


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "default"
  c.dataset.image_size = 28
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 3
  c.learning_rate = 2e-3
  c.early_stopping_patience = 0
  c.teacher.name = "mlp_1200x2"
  c.teacher.num_epochs = 5
  c.student.name = "mlp_small"
  c.kd.method = "vanilla"
  c.kd.temperature = 2.0
  c.kd.alpha = 0.5
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=2)
  return [study.join(f"student={s},method={m},seed={seed}", common)
          for s in STUDENTS for m in ("none", "vanilla") for seed in range(seeds)]
