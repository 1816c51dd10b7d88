"""DIST (Huang et al. 2022): CE + T^2 (beta inter-class + gamma intra-class
Pearson relation losses); the paper's CIFAR setting T=4, beta=gamma=2."""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "dist"
  c.kd.temperature = 4.0
  c.kd.dist_beta = 2.0
  c.kd.dist_gamma = 2.0
  return config_lib.apply_arg(c, arg)
