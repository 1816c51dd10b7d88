"""Teacher-assistant KD (Mirzadeh et al. 2020), CIFAR ResNet chain: a
resnet110 teacher distilled into a resnet8 student directly (BLKD) or
through one assistant resnet56, resnet32, resnet20 or resnet14 (TAKD),
against the student from scratch (NOKD), on CIFAR-100
(`--arg=dataset.name=cifar10` for CIFAR-10).

Each TAKD cell trains its assistant from the shared teacher, then the
student from the assistant (`<cell>/assistant1_<model>/`). Recipe of the
authors' code: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128,
random crop + flip, 32 px; 200 epochs here. The paper searches T and
lambda per pair; T = 4 and alpha = 0.5 here. Seeds 0.. (`seeds=N`,
default 1). The plain CNN chain: configs/repro/takd_plain_cnn.py.

  python -m kd_jax.study run configs/repro/takd_resnet.py --arg=dataset.data_dir=/data/tfds,seeds=3
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

ASSISTANTS = ("resnet56", "resnet32", "resnet20", "resnet14")


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "cifar100"
  c.dataset.image_size = 32
  c.dataset.random_crop = True
  c.dataset.random_flip = True
  c.num_epochs = 200
  c.early_stopping_patience = 0
  c.batch_size = 128
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.teacher.name = "resnet110"
  c.student.name = "resnet8"
  c.kd.method = "vanilla"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.5
  c.scratch_baseline = False  # NOKD is a cell of its own
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=1)
  settings = ["method=none", "method=vanilla"] + [
      f"method=vanilla,assistants={a}" for a in ASSISTANTS]
  return [study.join(f"{s},seed={seed}", common)
          for s in settings for seed in range(seeds)]
