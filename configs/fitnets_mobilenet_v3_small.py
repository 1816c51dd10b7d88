"""FitNets hints + KD: VGG16 teacher -> mobilenet_v3_small (Romero et al. 2015).

The student's guided layer `stage3` (14x14x24 at 112 px) is matched to the
teacher's hint layer `block3` (14x14x256) through a 1x1-conv adaptation layer
(Chen et al.). Single-stage by default: loss = KD + hint_weight * MSE.
Two-stage FitNets (hints first, then KD from those weights):
  configs/fitnets_mobilenet_v3_small.py:hint_stages=2
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "fitnets"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.5
  c.kd.hint_student_layer = "stage3"
  c.kd.hint_teacher_layer = "block3"
  c.kd.hint_weight = 100.0
  return config_lib.apply_arg(c, arg)
