"""OFD, a comprehensive overhaul of feature distillation (Heo et al. ICCV
2019), as mdistiller runs it: CE + 1e-3 * the partial L2 distance between
the student's pre-ReLU stage maps, through 1x1 conv-BN connectors, and the
teacher's, average-pooled to the student's size and clipped from below at
a per-channel margin: E[x | x < 0] of the Gaussian that the BatchNorm
before each teacher ReLU assumes (its gamma and beta). Shallower stages
weigh half the next.

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it; it is
mdistiller's too); `:kd.feature_logit_method=vanilla` adds Hinton KD.
Layer pairs and beta: `kd.feature_layers` (pre-ReLU maps, '<stage>_preact',
of a model that declares their BatchNorm: the CIFAR ResNets and plain
CNNs), `kd.feature_weight`. In tiny mode the teacher is the student's
architecture.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="ofd")
