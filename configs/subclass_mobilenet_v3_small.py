"""Subclass distillation (Mueller, Kornblith, Hinton 2020).

The VGG16 teacher has num_classes * subclasses logits (class logit = log-sum-
exp of its group) and is trained with CE on the classes + the auxiliary
subclass loss; the student (same C*S head) distils the teacher's subclass
distribution at temperature T and is evaluated on the classes.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "subclass"
  c.kd.subclasses = 4
  c.kd.temperature = 4.0
  c.kd.alpha = 0.5
  c.kd.subclass_aux_weight = 1.0
  return config_lib.apply_arg(c, arg)
