"""ReviewKD, knowledge review (Chen et al. 2021): CE + 1 * the hierarchical
context loss between the teacher's stage outputs and embedding and the
student's, fused deep-to-shallow by attention-based fusion modules trained
with the student; the weight ramps up linearly over the first 20 epochs, as
the authors' (`kd.reviewkd_warmup_epochs`, 0: constant).

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD. Layer pairs and beta:
`kd.feature_layers`, `kd.feature_weight`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="reviewkd")
