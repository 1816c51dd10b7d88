"""Every method where distillation pays: the transfer-set regime of the
quickstart with a CNN teacher and a CNN student that has feature maps, so
logit, feature and relation methods run under one protocol.

Teacher: `cnn_mnist` (two conv blocks + 128-unit dense layer), 10 epochs
on all 54,000 training images of the embedded Fashion-MNIST. Student:
`tiny_cnn` (one 3x3 conv of 50 channels, 2x2 max-pool, linear head) on a
stratified transfer set of 2,000 of those images (`dataset.transfer_limit`),
20 epochs (300 steps), Adam 2e-3 with cosine decay, batch 128, no
augmentation (the teacher's logits are cached once). Each method at its
paper's defaults: T = 4 and alpha = 0.9 (RepDistiller's CE 0.1 + KD 0.9)
for the logit methods (logit standardisation: the authors' T = 2, 0.1 CE +
9 KD), the CRD benchmark's beta for the feature and relation methods
(CE + beta x term), DKD alpha 1 / beta 8, DIST beta = gamma = 1 (their
ImageNet setting); the map methods pair the student's conv block with the
teacher's last conv block (`block1:block2`, the larger map pooled to the
smaller), the relation methods the penultimate features (`pre_logits`);
FitNets (single stage) hints pre_logits on pre_logits through its
regressor (the conv maps differ in size: 14x14 and 11x11); the teacher
assistant is `simple_cnn`; FT pre-trains its paraphraser on the teacher's
block2 (30 epochs) before the student stage. Not applicable here: AB and
OFD read pre-ReLU maps (OFD also the teacher's BatchNorm), which these
CNNs do not have, KDSVD pairs layers of equal channels (50 and 64), FSP
equal channels too. Two extra DKD settings (CHECKS) test its recipe.
Seeds 0..4 by default (`--arg=seeds=N`).

  python -m kd_jax.study run configs/repro/fashion_transfer_methods.py --study_dir=studies/fashion_transfer --in_process
  python -m kd_jax.report studies/fashion_transfer --no_timing --reference=method-vanilla
  python benchmarks/loss_scale.py studies/fashion_transfer
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

# Sun et al. 2024 as the authors ran it (configs/logit_standardization_*):
# z-scored logits, T = 2, 0.1 CE + 9 KD.
LOGIT_STANDARDISATION = ("method=vanilla,ls=true,T=2,kd.ce_weight=0.1,"
                         "kd.kd_weight=9")
LOGIT = ("method=none", "method=vanilla", "method=reverse_kl",
         "method=conditional", "method=ctkd", "method=ctkd_instance",
         "method=dkd", "method=dist", LOGIT_STANDARDISATION, "method=dml",
         "method=vanilla,assistants=simple_cnn",
         "method=fitnets,kd.hint_student_layer=pre_logits,kd.hint_teacher_layer=pre_logits")
FEATURE = ("method=at", "method=pkt", "method=sp", "method=rkd", "method=vid",
           "method=crd", "method=reviewkd", "method=cc", "method=nst",
           "method=ft")
# The user-facing methods this protocol cannot run, and why (a test checks
# that every other one has a setting).
NOT_RUN = {
    "ab": "reads pre-ReLU maps; these CNNs' maps have no pre-ReLU output",
    "ofd": "reads pre-ReLU maps and the teacher's BatchNorm statistics",
    "kdsvd": "pairs layers of equal channels (student 50, teacher 64)",
    "fsp": "pairs layers of equal channels (student 50, teacher 64)",
    "subclass": "needs a teacher trained with a subclass head "
                "(configs/repro/mnist_subclass_kd.py), not the shared one",
}
# Checks of DKD, which lands below scratch at its CIFAR defaults here: the
# authors' warm-up of the DKD term (20 of 240 epochs -> 2 of 20) and their
# ImageNet beta (0.5), each alone.
CHECKS = ("method=dkd,kd.dkd_warmup_epochs=2", "method=dkd,kd.dkd_beta=0.5")
SETTINGS = LOGIT + FEATURE + CHECKS


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "default"
  c.dataset.image_size = 28
  c.dataset.transfer_limit = 2000
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_epochs = 20
  c.learning_rate = 2e-3
  c.early_stopping_patience = 0
  c.teacher.name = "cnn_mnist"
  c.teacher.num_epochs = 10
  c.student.name = "tiny_cnn"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.9
  c.kd.hint_weight = 1.0
  c.scratch_baseline = False
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=5)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
