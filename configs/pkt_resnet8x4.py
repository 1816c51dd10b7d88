"""PKT, probabilistic knowledge transfer (Passalis & Tefas 2018): CE + 30000
* KL between the teacher's and the student's cosine-similarity
distributions of the penultimate embeddings in a batch.

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD. Layer pairs and beta:
`kd.feature_layers`, `kd.feature_weight`.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="pkt")
