"""The T x alpha grid of vanilla KD on CIFAR-10 as a 2020 reproduction
report wrote it (Hinton et al. 2015's loss): T in {2, 4, ..., 14} x alpha in
{0.3, 0.5, 0.7, 0.9} = 28 vanilla-KD cells per seed, plus a scratch cell per
seed; teacher vgg_cifar (11 conv, 4 max-pool, 3 dense layers, ~12M
parameters), student simple_cnn (2 conv-max-pool blocks and a dense layer,
~250k), 32 px.

The report's recipe: SGD with Nesterov momentum (Adam did not converge for
its teacher), no data augmentation (so the study computes the teacher's
logits once: teacher_cache.py), and the objective
(1 - alpha) H(y, p_s) + alpha H(p_t^T, p_s^T) without Hinton's T^2 factor
(kd.t_squared=False). Learning rate, epochs and batch size are not in the
report; 0.01, 30 and 128 here. CIFAR comes from a prepared TFDS directory
(nothing downloads at run time):

  python -m kd_jax.study run configs/cifar_grid.py --arg=dataset.data_dir=/data/tfds
  python -m kd_jax.study run configs/cifar_grid.py --arg=dataset.data_dir=/data/tfds,dataset.name=cifar100,seeds=3

The same grid with Hinton's T^2: --arg=kd.t_squared=true; the report's hint
and teacher-assistant experiments: configs/repro/kd_hints_cifar.py.
"""
from kd_jax import config_lib
from kd_jax.distill import methods
from kd_jax.study import runner as study

TEMPERATURES = (2, 4, 6, 8, 10, 12, 14)
ALPHAS = (0.3, 0.5, 0.7, 0.9)


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.dataset.image_size = 32
  c.batch_size = 128
  c.num_epochs = 30
  c.optimizer = "sgd"
  c.learning_rate = 0.01
  c.momentum = 0.9
  c.nesterov = True
  c.teacher.name = "vgg_cifar"
  c.student.name = "simple_cnn"
  c.kd.method = "vanilla"
  c.kd.t_squared = False
  c = config_lib.apply_arg(c, arg)
  if not methods.get(c.kd.method).t_squared:
    c.kd.t_squared = True  # the scratch cells: no soft term to scale
  return c


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=1)
  out = []
  for seed in range(seeds):
    out.append(study.join(f"method=none,seed={seed}", common))
    out += [study.join(f"T={t},alpha={a},seed={seed}", common)
            for t in TEMPERATURES for a in ALPHAS]
  return out
