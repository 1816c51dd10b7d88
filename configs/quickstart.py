"""Quickstart: teacher, KD student and scratch student on the embedded default.

Embedded default = Fashion-MNIST from the Debian package (else sklearn digits).
The teacher (Hinton et al.'s 2x1200 dropout MLP) trains on all 54,000
training images; both students (`mlp`, one hidden layer of 128 units) get a
transfer set of 1,000 of them (`dataset.transfer_limit`), the setting where
soft targets carry what the teacher learnt from data the student never sees
(Hinton et al. 2015, section 3). About 2 minutes on a 2-core CPU:
  python -m kd_jax.main --config=configs/quickstart.py --workdir=/tmp/kd_quickstart
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "default"
  c.dataset.image_size = 28
  c.dataset.train_limit = 0
  c.dataset.transfer_limit = 1000
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 30  # 7 steps each on the transfer set
  c.learning_rate = 2e-3
  c.early_stopping_patience = 0
  c.log_every_steps = 50
  c.teacher.name = "mlp_1200x2"
  c.teacher.num_epochs = 5
  c.student.name = "mlp"
  c.kd.method = "vanilla"
  c.kd.temperature = 2.0
  c.kd.alpha = 0.5
  c.scratch_baseline = True
  return config_lib.apply_arg(c, arg)
