"""MHIST with transfer learning: Keras ImageNet weights, fine-tuned in two
phases, then distilled (ResNet50V2 teacher -> MobileNetV2 student).

MHIST (Wei et al. 2021, "A Petri Dish for Histopathology Image Analysis";
https://bmirds.github.io/MHIST/, free after a data-use form) is 3,152
colorectal-polyp images of 224x224 px, 2 imbalanced classes (HP, SSA), with
an annotations CSV (`Image Name`, `Majority Vote Label`, `Partition`
train/test). Lay it out as an image folder:
  DATA/train/{HP,SSA}/*.png   DATA/test/{HP,SSA}/*.png   (val: held out of train)
The weights are Keras applications' ImageNet files without the top, as
`keras.applications.ResNet50V2(weights="imagenet", include_top=False)` and
`MobileNetV2(...)` leave them in ~/.keras/models:
  resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5
  mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5
(another directory: the arg `weights_dir=DIR`).

Recipe: both models start from ImageNet weights with a new 2-class head;
10 epochs train the head only (backbone and its BatchNorm frozen) at 1e-3,
then 25 epochs train everything at 1e-4 (Adam, constant rates as in Keras'
compile/fit), 224 px, inputs in [-1, 1] (Keras' preprocess_input, set by
the imported weights). The student is distilled with T = 1, alpha = 0.3;
the arg picks the cell: `method=vanilla` (default), `method=subclass`
(Mueller et al. 2020: 2 subclasses per class), or `method=none` (the
student with transfer learning, without KD).

  python -m kd_jax.main --config=configs/mhist_transfer.py:method=subclass \
      --config.dataset.data_dir=/data/mhist --workdir=workdirs/mhist_subclass
"""
import os

from kd_jax import config_lib

TEACHER_FILE = "resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5"
STUDENT_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
DEFAULT_WEIGHTS_DIR = "~/.keras/models"


def _split_weights_dir(arg):
  """(weights dir, the rest of the arg string)."""
  weights_dir, rest = DEFAULT_WEIGHTS_DIR, []
  for item in (arg or "").split(","):
    if item.strip().startswith("weights_dir="):
      weights_dir = item.split("=", 1)[1].strip()
    elif item.strip():
      rest.append(item.strip())
  return os.path.expanduser(weights_dir), ",".join(rest)


def get_config(arg=None):
  weights_dir, arg = _split_weights_dir(arg)
  c = config_lib.base_config()
  c.dataset.name = "folder"
  c.dataset.data_dir = os.path.expanduser("~/data/mhist")
  c.dataset.image_size = 224
  c.dataset.random_flip = True
  c.batch_size = 32
  c.eval_batch_size = 64
  c.teacher.name = "resnet50_v2"
  c.teacher.init_from = "keras:" + os.path.join(weights_dir, TEACHER_FILE)
  c.student.name = "mobilenet_v2_keras"
  c.student.init_from = "keras:" + os.path.join(weights_dir, STUDENT_FILE)
  c.scratch_baseline = False
  c.num_epochs = 35  # 10 head-only + 25 whole-model epochs
  c.finetune.frozen_epochs = 10
  c.finetune.frozen_lr = 1e-3
  c.learning_rate = 1e-4
  c.lr_schedule = "constant"
  c.early_stopping_patience = 0
  c.kd.method = "vanilla"
  c.kd.temperature = 1.0
  c.kd.alpha = 0.3
  c.kd.subclasses = 2
  return config_lib.apply_arg(c, arg)
