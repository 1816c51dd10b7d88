"""Vanilla KD with logit standardisation (Sun et al. 2024): both logits are
z-scored per sample before the temperature softmax (base temperature 2, KD
weight 0.9). The same switch works on CTKD and DKD cells: `:ls=true`."""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "vanilla"
  c.kd.logit_standardization = True
  c.kd.temperature = 2.0
  c.kd.alpha = 0.9
  return config_lib.apply_arg(c, arg)
