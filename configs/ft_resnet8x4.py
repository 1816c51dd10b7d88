"""FT, factor transfer (Kim et al. NeurIPS 2018), two stages as
RepDistiller: a paraphraser (a 3-conv encoder to half the channels and a
3-conv decoder) first learns to reconstruct the teacher's last stage map,
30 epochs at lr 0.01 (RepDistiller's rate for the ResNet students), in
workdir/pretrain/; the student stage then trains from scratch on CE + 200 *
mean |Q_s - Q_t|, Q the normalised channel-mean squares of the frozen
paraphraser's factor of the teacher's map and of a trained translator's
factor of the student's.

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD to the student stage.
Pre-training: `kd.ft_init_epochs`, `kd.ft_init_lr`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="ft")
