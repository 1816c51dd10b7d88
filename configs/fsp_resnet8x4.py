"""FSP, the flow of solution procedure (Yim et al. 2017), two stages as the
paper and RepDistiller: the student first trains 30 epochs on the FSP loss
alone (the mean squared difference of the FSP matrices of consecutive
layers, stem and stages, student's and teacher's), in workdir/pretrain/;
the student stage then starts from those weights and trains on CE alone
(RepDistiller adds no FSP term there). FSP needs as many channels in each
student layer as in the teacher's (resnet32x4 and resnet8x4 have).

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD to the student stage.
Pre-training epochs: `kd.fsp_init_epochs` (at the stage's learning rate;
RepDistiller's is constant there, as the step schedule here before epoch
150). In tiny mode the teacher is the student's architecture.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="fsp")
