"""NST, neuron selectivity transfer (Huang & Wang 2017): CE + 50 * the
squared MMD, under the polynomial kernel (x . y)^2, between the student's
and the teacher's channel distributions at each stage output.

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD. Layer pairs and beta:
`kd.feature_layers`, `kd.feature_weight`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="nst")
