"""CRD (Tian et al. 2020): resnet32x4 teacher -> resnet8x4 student on
CIFAR-100, the CRD benchmark's recipe (RepDistiller).

loss = CE + 0.8 * CRD, the paper's 'CRD' row; `:kd.feature_logit_method=
vanilla` adds Hinton KD at T = 4 ('CRD+KD': kd_jax's vanilla weighs CE and
KD by 1 - alpha and alpha). CRD contrasts the 128-d embeddings of the
penultimate features against memory banks of every training example, 16384
negatives per example from the other classes (NCE temperature 0.07, bank
momentum 0.5); the banks are part of the train state and its checkpoints.
Recipe: 240 epochs, SGD momentum 0.9, lr 0.05, weight decay 5e-4, batch 64,
random crop + flip, 32 px, the lr x0.1 at epochs 150, 180 and 210
(`lr_schedule='step'`). The teacher is trained first with
the same recipe unless `teacher.checkpoint` names one. CIFAR comes from a
prepared TFDS directory:

  python -m kd_jax.main --config=configs/crd_resnet8x4.py:dataset.data_dir=/data/tfds --workdir=/tmp/crd

The other feature methods use this recipe too (configs/{at,pkt,sp,rkd,vid,
reviewkd,cc,nst,fsp,ab,ft,ofd,kdsvd}_resnet8x4.py); the whole table:
configs/cifar100_benchmark.py.
"""
from kd_jax import config_lib


def get_config(arg=None, method="crd"):
  c = config_lib.base_config()
  c.dataset.name = "cifar100"
  c.dataset.image_size = 32
  c.dataset.random_crop = True
  c.dataset.random_flip = True
  c.num_epochs = 240
  c.early_stopping_patience = 0
  c.batch_size = 64
  c.optimizer = "sgd"
  c.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = "step"
  c.lr_decay_epochs = "150,180,210"
  c.teacher.name = "resnet32x4"
  c.student.name = "resnet8x4"
  c.kd.method = method
  c.kd.temperature = 4.0
  c.kd.alpha = 0.5
  return config_lib.apply_arg(c, arg)
