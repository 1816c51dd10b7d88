"""Vanilla KD with logit standardisation (Sun et al. 2024), the authors'
recipe: both logits z-scored per sample before the temperature softmax,
base temperature 2, loss = 0.1 CE + 9 T^2 KL (their `--logit-stand
--base-temp 2 --kd-weight 9` on mdistiller's KD, whose CE weight is 0.1;
kd.ce_weight / kd.kd_weight, so alpha is unused).

The same switch works on CTKD and DKD cells (`:ls=true`). For DKD the
authors' script scales the weights inside the KD part instead and keeps
CE at 1: alpha x 9 and beta = (the scaled alpha) x 9, i.e. 9 and 81 from
DKD's 1 and 8, at DKD's own T (4):
`:method=dkd,kd.ce_weight=-1,kd.kd_weight=-1,T=4,kd.dkd_alpha=9,kd.dkd_beta=81`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.student.name = "mobilenet_v3_small"
  c.kd.method = "vanilla"
  c.kd.logit_standardization = True
  c.kd.temperature = 2.0
  c.kd.ce_weight = 0.1
  c.kd.kd_weight = 9.0
  return config_lib.apply_arg(c, arg)
