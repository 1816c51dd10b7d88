"""Echo-study cell: mobilenet_v3_small student, KD method 'reverse_kl'.

The reverse KL alpha T^2 KL(p_s || p_t) + (1 - alpha) CE: the student is
pulled to the teacher's modes instead of covering all of its mass. The
echo-view recipe: VGG16 teacher, 112 px, batch 256, 20 epochs with early
stopping. Name a cell with the arg string, e.g.
`configs/reverse_kl_mobilenet_v3_small.py:T=2,alpha=0.5,seed=1`; `:runlocal`
is the tiny mode used by tests and Colab.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "reverse_kl"
  return config_lib.apply_arg(c, arg)
