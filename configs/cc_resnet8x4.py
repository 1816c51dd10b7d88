"""CC, correlation congruence (Peng et al. 2019) in RepDistiller's form:
CE + 0.02 * the mean inner product of neighbouring examples' absolute
differences between the student's and the teacher's 128-d linear
embeddings of the penultimate feature (heads trained with the student).

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD. Layer pair, beta and
embedding size: `kd.feature_layers`, `kd.feature_weight`, `kd.cc_dim`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="cc")
