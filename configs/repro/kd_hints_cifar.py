"""A 2020 reproduction report's hint and teacher-assistant experiments on
CIFAR-10 (KD, Hinton et al. 2015; hints with a 1x1 adaptation layer,
Romero et al. 2015 and Chen et al. 2017; assistants, Mirzadeh et al. 2020),
with the recipe of configs/cifar_grid.py: vgg_cifar teacher, SGD with
Nesterov momentum, no augmentation, the objective without the T^2 factor.

Cells (one shared teacher; seeds 0.. with `seeds=N`, default 1):
  student simple_cnn (~250k parameters):
    scratch; KD at the report's best grid setting (T = 12, alpha = 0.5;
    CIFAR-100: T = 10, `--arg=dataset.name=cifar100,T=10`); KD + hints:
    two-stage FitNets (the guided layer block2 trained on the teacher's
    block2 first, both 8x8 at 32 px; the report names no layers), then KD;
  student tiny_cnn (~130k: one conv, max-pool and dense layer):
    scratch; KD from the teacher; KD through the assistant simple_cnn; KD
    + hints through it: each link adds hint_weight * the hint loss, teacher
    block1 -> assistant block1 -> student block1 (16x16 maps; the
    assistant's layer is guided by the teacher's and hints the student's).

  python -m kd_jax.study run configs/repro/kd_hints_cifar.py --arg=dataset.data_dir=/data/tfds
  python -m kd_jax.report <study_dir> --no_timing
"""

from kd_jax import config_lib
from kd_jax.study import runner as study

HINTS = "kd.hint_student_layer={s},kd.hint_teacher_layer={t}"
SETTINGS = (
    "student=simple_cnn,method=none",
    "student=simple_cnn,method=vanilla",
    "student=simple_cnn,method=fitnets,hint_stages=2,"
    + HINTS.format(s="block2", t="block2"),
    "student=tiny_cnn,method=none",
    "student=tiny_cnn,method=vanilla",
    "student=tiny_cnn,method=vanilla,assistants=simple_cnn",
    "student=tiny_cnn,method=fitnets,assistants=simple_cnn,"
    "kd.hint_assistant_layers=block1," + HINTS.format(s="block1", t="block1"),
)


def get_config(arg=None):
  c = config_lib.sibling_config(__file__, "../cifar_grid.py").get_config()
  c.kd.temperature, c.kd.alpha = 12.0, 0.5
  c.kd.hint_weight = 1.0  # the report gives no weight for its hint terms
  c.scratch_baseline = False  # the scratch students are cells of their own
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=1)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
