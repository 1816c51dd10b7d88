"""AB, distillation of activation boundaries (Heo et al. AAAI 2019), two
stages as RepDistiller: the student first trains 30 epochs on the AB loss
alone (a margin-1 hinge that puts each student neuron's pre-ReLU response
on the teacher neuron's side of zero, at every stage's output; a conv-BN
connector where the shapes differ, none for this pair), in
workdir/pretrain/; the student stage then starts from those weights and
trains on CE alone (RepDistiller adds no AB term there).

resnet32x4 teacher -> resnet8x4 student on CIFAR-100 with the CRD
benchmark's recipe (configs/crd_resnet8x4.py, which documents it);
`:kd.feature_logit_method=vanilla` adds Hinton KD to the student stage.
Pre-training epochs: `kd.ab_init_epochs` (at the stage's learning rate;
RepDistiller's is constant there, as the step schedule here before epoch
150). In tiny mode the teacher is the student's architecture.
"""
from kd_jax import config_lib


def get_config(arg=None):
  recipe = config_lib.sibling_config(__file__, "crd_resnet8x4.py")
  return recipe.get_config(arg, method="ab")
