"""Deep mutual learning (Zhang et al. 2018): a cohort of two
mobilenet_v3_small students trained together, no teacher. Each member
minimises CE + KL(peer || member) at T=1. Other cohorts:
--config.kd.peers=shufflenet_v2_x0_5,ghostnet_100 (student + 2 peers)."""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "dml"
  c.kd.temperature = 1.0
  c.kd.peers = "mobilenet_v3_small"
  return config_lib.apply_arg(c, arg)
