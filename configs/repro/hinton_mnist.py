"""Hinton, Vinyals & Dean (2015), MNIST: a 2x1200 teacher (dropout, +-2 px
jitter) distilled into a 2x800 student at T = 20, against the same student
trained from scratch without regularisation (the paper: 67 / 146 / 74 test
errors for teacher / scratch student / distilled student).

A study: 2 methods x seeds (default 3), one shared teacher. MNIST's IDX
files come from `dataset.data_dir` or $KD_JAX_MNIST_DIR
(`benchmarks/mnist_idx_from_pickle.py` writes them from the classic pickle):

  python -m kd_jax.study run configs/repro/hinton_mnist.py --arg=dataset.data_dir=/data/mnist --study_dir=studies/hinton
  python -m kd_jax.report studies/hinton --no_timing

Differences from the paper, stated: 20 epochs of Adam (1e-3, cosine) instead
of the paper's long SGD training; dropout 0.2 on the teacher's hidden layers
(the paper also drops input pixels); jitter = reflect-padded random crops of
+-2 px; the greyscale image is repeated to 3 channels, so the first layers
have 3x the paper's input weights (the same function class).
"""
from kd_jax import config_lib
from kd_jax.study import runner as study


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "mnist_local"
  c.dataset.image_size = 28
  c.dataset.random_crop = True  # the teacher's and the distilled net's jitter
  c.dataset.crop_padding = 2
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 20
  c.learning_rate = 1e-3
  c.early_stopping_patience = 0
  c.teacher.name = "mlp_1200x2"
  c.student.name = "mlp_800x2"
  c.kd.method = "vanilla"
  c.kd.temperature = 20.0
  c.kd.alpha = 0.9  # most weight on the soft targets, as the paper advises
  c.scratch_baseline = False
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=3)
  # Scratch: no regularisation (no jitter); the study's teacher and the
  # distilled student see jittered images (the config's default).
  settings = ("method=none,dataset.random_crop=false", "method=vanilla")
  return [study.join(f"{s},seed={seed}", common)
          for s in settings for seed in range(seeds)]
