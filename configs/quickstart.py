"""Quickstart: teacher, KD student and scratch student on the embedded default.

Embedded default = Fashion-MNIST from the Debian package (else sklearn digits).
Finishes in a few minutes on a 2-core CPU:
  python -m kd_jax.main --config=configs/quickstart.py --workdir=/tmp/kd_quickstart
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "default"
  c.dataset.image_size = 28
  c.dataset.train_limit = 0
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 3
  c.learning_rate = 2e-3
  c.early_stopping_patience = 0
  c.log_every_steps = 50
  c.teacher.name = "mlp_1200x2"
  c.teacher.num_epochs = 5
  c.student.name = "mlp_small"
  c.kd.method = "vanilla"
  c.kd.temperature = 2.0
  c.kd.alpha = 0.5
  c.scratch_baseline = True
  return config_lib.apply_arg(c, arg)
