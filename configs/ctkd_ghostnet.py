"""Echo-study cell: ghostnet_100 student, KD method 'ctkd' .

The echo-view recipe: VGG16 teacher, 112 px, batch 256, 20 epochs with
early stopping. Point it at your frames with
  --config.dataset.name=folder --config.dataset.data_dir=/path/to/echo
and name a cell with the arg string, e.g. `configs/ctkd_ghostnet.py:schedule=linear,alpha=0.5,seed=1`
(the temperature is learned from kd.init_raw: a fixed T is refused);
`:runlocal` is the tiny mode used by tests and Colab.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "ghostnet_100"
  c.kd.method = "ctkd"
  return config_lib.apply_arg(c, arg)
