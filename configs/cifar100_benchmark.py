"""The field's CIFAR-100 distillation table (Tian et al. 2020, "Contrastive
Representation Distillation", Tables 1-2; the protocol of RepDistiller and
mdistiller), one teacher/student pair per study (the pairs share no
teacher):

  python -m kd_jax.study run configs/cifar100_benchmark.py --arg=pair=resnet32x4-resnet8x4,dataset.data_dir=/data/tfds,seeds=3
  python -m kd_jax.report studies/cifar100_benchmark_... --no_timing
  python -m kd_jax.study list configs/cifar100_benchmark.py:pair=vgg13_cifar-mobilenet_v2_cifar

Pairs (`pair=TEACHER-STUDENT`): resnet56-resnet20, resnet110-resnet32,
resnet32x4-resnet8x4 (the default), wrn_40_2-wrn_16_2, wrn_40_2-wrn_40_1,
vgg13_cifar-vgg8_cifar, vgg13_cifar-mobilenet_v2_cifar,
resnet32x4-shufflenet_v2_cifar.
Cells: scratch, KD (T = 4, alpha = 0.9: RepDistiller's 0.1 CE + 0.9 KD), AT,
PKT, SP, RKD, VID, CRD, ReviewKD (CE + the method's default beta x its term),
DKD (alpha 1, beta 8, 20 warm-up epochs), DIST (beta = gamma = 2), CTKD,
CC and NST (CE + beta x term, as AT), FT (30 epochs of paraphraser, then
CE + 200 x FT), for the pairs whose layers have equal channels FSP (30
epochs on the FSP loss alone, then CE) and KDSVD, and for the CIFAR ResNet
pairs (pre-ReLU maps and their BatchNorms) AB (30 epochs on the AB loss
alone, then CE) and OFD; seeds 0.. (`seeds=N`, default 1).
Recipe: 240 epochs, SGD momentum 0.9, weight decay 5e-4, lr 0.05 (0.01 for
the MobileNetV2 and ShuffleNet students; their teacher keeps 0.05), x0.1 at
epochs 150, 180 and 210, batch 64, random crop (4 px padding) + flip, 32 px;
the teacher is trained by the study with the same recipe.

Reproducing the published numbers needs a GPU and a prepared TFDS `cifar100`
(`dataset.data_dir`); the tiny mode (`runlocal`) runs in the tests. Published
top-1 (%), scratch / KD / CRD / CC / NST / FSP from Tian et al. 2020 (Tables
1-2, RepDistiller's README), DKD from Zhao et al. 2022 ("Decoupled Knowledge
Distillation"):
  resnet56 -> resnet20       69.06 / 70.66 / 71.16 / 69.63 / 69.60 / 69.95 / 71.97
  resnet110 -> resnet32      71.14 / 73.08 / 73.48 / 71.48 / 71.96 / 71.89 / 74.11
  resnet32x4 -> resnet8x4    72.50 / 73.33 / 75.51 / 72.97 / 73.30 / 72.62 / 76.32
  wrn_40_2 -> wrn_16_2       73.26 / 74.92 / 75.48 / 73.56 / 73.68 / 72.91 / 76.24
  wrn_40_2 -> wrn_40_1       71.98 / 73.54 / 74.14 / 72.21 / 72.24 /   -   / 74.81
  vgg13 -> vgg8              70.36 / 72.98 / 73.94 / 70.71 / 71.53 / 70.23 / 74.68
  vgg13 -> MobileNetV2       64.60 / 67.37 / 69.73 / 64.86 / 58.16 /   -   / 69.71
  resnet32x4 -> ShuffleNetV2 71.82 / 74.45 / 75.65 / 71.29 / 74.68 /   -   / 77.07
resnet32x4 -> resnet8x4 also: AB 73.17 and FT 72.86 (Tian et al. 2020,
Table 1), OFD 74.95 (Chen et al. 2021, "Distilling knowledge via knowledge
review", Table 1); KDSVD has no published number for these pairs.
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

PAIRS = ("resnet56-resnet20", "resnet110-resnet32", "resnet32x4-resnet8x4",
         "wrn_40_2-wrn_16_2", "wrn_40_2-wrn_40_1", "vgg13_cifar-vgg8_cifar",
         "vgg13_cifar-mobilenet_v2_cifar", "resnet32x4-shufflenet_v2_cifar")
MOBILE_STUDENTS = ("mobilenet_v2_cifar", "shufflenet_v2_cifar")
SETTINGS = ("method=none", "method=vanilla", "method=at", "method=pkt",
            "method=sp", "method=rkd", "method=vid", "method=crd",
            "method=reviewkd", "method=dkd", "method=dist", "method=ctkd",
            "method=cc", "method=nst", "method=ft")
# FSP and KDSVD pair layers of equal channels: the pairs RepDistiller
# reports FSP for.
FSP_PAIRS = ("resnet56-resnet20", "resnet110-resnet32", "resnet32x4-resnet8x4",
             "wrn_40_2-wrn_16_2", "vgg13_cifar-vgg8_cifar")
# AB and OFD read pre-ReLU maps (OFD also their BatchNorm): the CIFAR
# ResNets sow them.
PREACT_PAIRS = ("resnet56-resnet20", "resnet110-resnet32",
                "resnet32x4-resnet8x4")


def _split_pair(arg):
  """(teacher, student, the arg without its pair= item)."""
  items = [a for a in (arg or "").split(",") if a]
  pairs = [a.split("=", 1)[1] for a in items if a.startswith("pair=")]
  pair = pairs[-1] if pairs else "resnet32x4-resnet8x4"
  if pair not in PAIRS:
    raise config_lib.UserError(
        f"pair={pair!r} is not a benchmark pair; allowed: {', '.join(PAIRS)}")
  teacher, student = pair.split("-")
  return teacher, student, ",".join(a for a in items if not a.startswith("pair="))


def get_config(arg=None):
  teacher, student, rest = _split_pair(arg)
  c = config_lib.base_config()
  c.dataset.name = "cifar100"
  c.dataset.image_size = 32
  c.dataset.random_crop = True
  c.dataset.random_flip = True
  c.num_epochs = 240
  c.early_stopping_patience = 0
  c.batch_size = 64
  c.optimizer = "sgd"
  c.learning_rate = 0.01 if student in MOBILE_STUDENTS else 0.05
  c.teacher.learning_rate = 0.05
  c.momentum = 0.9
  c.weight_decay = 5e-4
  c.lr_schedule = "step"
  c.lr_decay_epochs = "150,180,210"
  c.teacher.name = teacher
  c.student.name = student
  c.kd.method = "vanilla"
  c.kd.temperature = 4.0
  c.kd.alpha = 0.9
  c.kd.dkd_alpha, c.kd.dkd_beta, c.kd.dkd_warmup_epochs = 1.0, 8.0, 20
  c.kd.dist_beta, c.kd.dist_gamma = 2.0, 2.0
  c.scratch_baseline = False
  c = config_lib.apply_arg(c, rest)
  if c.runlocal and not (c.teacher.checkpoint or c.teacher.logits):
    # Tiny mode gives FSP, KDSVD, AB and OFD the student's architecture as
    # teacher (equal channels, pre-ReLU maps); a study shares one teacher.
    c.teacher.name = student
  return c


def cells(arg=None):
  teacher, student, _ = _split_pair(arg)  # a bad pair fails before any cell
  pair = f"{teacher}-{student}"
  settings = (SETTINGS
              + (("method=fsp", "method=kdsvd") if pair in FSP_PAIRS else ())
              + (("method=ab", "method=ofd") if pair in PREACT_PAIRS else ()))
  seeds, common = study.parse_study_arg(arg, seeds=1)
  return [study.join(f"{s},seed={seed}", common)
          for s in settings for seed in range(seeds)]
