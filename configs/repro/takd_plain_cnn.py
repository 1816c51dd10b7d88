"""Teacher-assistant KD (Mirzadeh et al. 2020), plain CNN chain: a 10-layer
teacher distilled into a 2-layer student directly (BLKD) or through one
assistant of 8, 6 or 4 layers (TAKD), against the student from scratch
(NOKD), on CIFAR-100 (`--arg=dataset.name=cifar10` switches to the
CIFAR-10 models, plain_cnn_N_c10).

Each TAKD cell trains its assistant from the shared teacher, then the
student from the assistant (`<cell>/assistant1_<model>/`). Recipe of the
authors' code: SGD momentum 0.9, lr 0.1, weight decay 1e-4, batch 128,
random crop + flip, 32 px; 150 epochs here. The paper searches T and
lambda per pair; T = 4 and alpha = 0.5 here. Seeds 0.. (`seeds=N`,
default 1). The ResNet chain: configs/repro/takd_resnet.py.

  python -m kd_jax.study run configs/repro/takd_plain_cnn.py --arg=dataset.data_dir=/data/tfds,seeds=3
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

ASSISTANTS = (8, 6, 4)


def book(arg) -> str:
  """The model-name suffix of the data: '_c10' for CIFAR-10."""
  return "_c10" if config_lib.parse_arg(arg).get("dataset.name") == "cifar10" else ""


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "cifar100"
  c.dataset.image_size = 32
  c.dataset.random_crop = True
  c.dataset.random_flip = True
  c.num_epochs = 150
  c.early_stopping_patience = 0
  c.batch_size = 128
  c.optimizer = "sgd"
  c.learning_rate = 0.1
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.teacher.name = "plain_cnn_10" + book(arg)
  c.student.name = "plain_cnn_2" + book(arg)
  c.kd.method = "vanilla"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.5
  c.scratch_baseline = False  # NOKD is a cell of its own
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=1)
  settings = ["method=none", "method=vanilla"] + [
      f"method=vanilla,assistants=plain_cnn_{n}{book(common)}"
      for n in ASSISTANTS]
  return [study.join(f"{s},seed={seed}", common)
          for s in settings for seed in range(seeds)]
