"""Decoupled KD (Zhao et al. 2022): CE + T^2 (alpha' TCKD + beta' NCKD).

Paper defaults alpha'=1, beta'=8, T=4; the KD part is warmed up linearly
(20 of 240 epochs in the paper, 2 of 20 here). `:ls=true` adds logit
standardisation.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "dkd"
  c.kd.temperature = 4.0
  c.kd.dkd_alpha = 1.0
  c.kd.dkd_beta = 8.0
  c.kd.dkd_warmup_epochs = 2
  return config_lib.apply_arg(c, arg)
