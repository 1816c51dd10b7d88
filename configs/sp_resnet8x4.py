"""SP, similarity-preserving KD (Tung & Mori 2019): CE + 3000 * the distance
of the row-normalised batch similarity matrices of the last stage outputs.

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD. Layer pairs and beta:
`kd.feature_layers`, `kd.feature_weight`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="sp")
