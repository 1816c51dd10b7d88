"""Echo-study cell: mobilenet_v3_small student, KD method 'vanilla' .

The echo-view recipe: VGG16 teacher, 112 px, batch 256, 20 epochs with
early stopping. Point it at your frames with
  --config.dataset.name=folder --config.dataset.data_dir=/path/to/echo
and name a cell with the arg string, e.g. `configs/vanilla_kd_mobilenet_v3_small.py:T=2,alpha=0.5,seed=1`;
`:runlocal` is the tiny mode used by tests and Colab.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "vanilla"
  return config_lib.apply_arg(c, arg)
