"""Instance-wise CTKD: ghostnet_100 student, one learned temperature per example.

A 2-layer MLP over [teacher logits, student logits] predicts
T_i = t_start + t_end * sigmoid(.), trained with CTKD's gradient reversal and
lambda curriculum (`:schedule=linear` for the linear one).
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "ghostnet_100"
  c.kd.method = "ctkd_instance"
  return config_lib.apply_arg(c, arg)
