"""KDSVD, self-supervised knowledge distillation using singular value
decomposition (Lee et al. ECCV 2018): CE + the squared difference of the
RBF kernels between consecutive stages' leading right singular vectors
(over channels; the teacher's k = 1, the student's k + 3 aligned to it,
both scaled by the teacher's normalised singular values), summed and
divided by the batch size; beta 1, as the authors and mdistiller. The
pairs need equal channels (resnet32x4 and resnet8x4 have).

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it; it is
mdistiller's too); `:kd.feature_logit_method=vanilla` adds Hinton KD.
Vectors per layer: `kd.kdsvd_k`. In tiny mode the teacher is the
student's architecture.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="kdsvd")
