"""The T x alpha grid of vanilla KD (Hinton et al. 2015) on CIFAR-10: T in {2, 4, ..., 14}
x alpha in {0.3, 0.5, 0.7, 0.9} = 28 vanilla-KD cells per seed, plus a
scratch cell per seed; teacher vgg_cifar, student simple_cnn, 32 px.
CIFAR comes from a prepared TFDS directory (nothing downloads at run time):

  python -m kd_jax.study run configs/cifar_grid.py --arg=dataset.data_dir=/data/tfds
  python -m kd_jax.study run configs/cifar_grid.py --arg=dataset.data_dir=/data/tfds,dataset.name=cifar100,seeds=3
"""
from kd_jax import config_lib, study

TEMPERATURES = (2, 4, 6, 8, 10, 12, 14)
ALPHAS = (0.3, 0.5, 0.7, 0.9)


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "cifar10"
  c.dataset.image_size = 32
  c.dataset.random_crop = True
  c.dataset.random_flip = True
  c.batch_size = 128
  c.num_epochs = 30
  c.teacher.name = "vgg_cifar"
  c.student.name = "simple_cnn"
  c.kd.method = "vanilla"
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=1)
  out = []
  for seed in range(seeds):
    out.append(study.join(f"method=none,seed={seed}", common))
    out += [study.join(f"T={t},alpha={a},seed={seed}", common)
            for t in TEMPERATURES for a in ALPHAS]
  return out
