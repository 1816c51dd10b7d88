"""ImageNet ResNet34 -> ResNet18: the field's ImageNet distillation table
(Zhao et al. 2022, "Decoupled Knowledge Distillation", Table; mdistiller's
configs/imagenet/r34_r18), the teacher torchvision's ResNet34 weights.

  python -m kd_jax.study run configs/imagenet_resnet34_resnet18.py \\
      --arg=teacher.checkpoint=torchvision:/weights/resnet34-b627a593.pth,dataset.data_dir=/data/tfds \\
      --study_dir=studies/imagenet_r34_r18
  python -m kd_jax.report studies/imagenet_r34_r18 --no_timing

The data: TFDS `imagenet2012` prepared as ArrayRecord in `dataset.data_dir`
(streamed, never held in memory), or an ImageNet-layout folder
(`dataset.name=folder,dataset.data_dir=/data/imagenet`: train/<wnid>/*.JPEG
and val/<wnid>/*.JPEG; val/ is then the test split, as ImageNet reports its
validation set, and val_fraction of train is held out for selection).

Recipe (mdistiller's, every cell): SGD momentum 0.9, weight decay 1e-4,
100 epochs, lr x0.1 at epochs 30, 60 and 90, batch 512 at lr 0.2 (CRD and
ReviewKD: batch 256 at lr 0.1, as their configs), torchvision's
random-resized crop + flip at 224 px for training and resize 256 + centre
crop 224 for evaluation, ImageNet mean/std.
Cells: scratch; KD (T = 1, CE and KD weights 0.5 / 0.5); AT (CE + 1000 x
AT); DKD (T = 1, alpha 1, beta 0.5, 1 warm-up epoch); CRD (CE + 0.8 x CRD,
16,384 negatives); ReviewKD (CE + 1 x ReviewKD, 1 warm-up epoch).
Published top-1 (%) of the DKD paper's table: teacher 73.31, student
69.75, KD 70.66, AT 70.69, CRD 71.17, ReviewKD 71.61, DKD 71.70.

Reproducing them needs GPUs (1.28 M images x 100 epochs per cell); the tiny
mode (`runlocal`) runs in the slow tests on a generated ImageNet-layout
folder.
"""
from kd_jax import config_lib
from kd_jax.study import runner as study

SMALL_BATCH = "batch_size=256,learning_rate=0.1"  # mdistiller's CRD/ReviewKD
SETTINGS = (
    "method=none",
    "method=vanilla,T=1,kd.ce_weight=0.5,kd.kd_weight=0.5",
    "method=at",
    "method=dkd,T=1,kd.dkd_alpha=1,kd.dkd_beta=0.5,kd.dkd_warmup_epochs=1",
    "method=crd," + SMALL_BATCH,
    "method=reviewkd,kd.reviewkd_warmup_epochs=1," + SMALL_BATCH,
)


def get_config(arg=None):
  c = config_lib.base_config()
  c.dataset.name = "imagenet2012"
  c.dataset.image_size = 224
  c.dataset.train_transform = "random_resized_crop"
  c.dataset.random_flip = True
  c.dataset.eval_transform = "resize_center_crop"
  c.dataset.val_fraction = 0.01  # 12,811 training images for selection
  c.num_epochs = 100
  c.early_stopping_patience = 0
  c.batch_size = 512
  c.eval_batch_size = 500
  c.optimizer = "sgd"
  c.learning_rate = 0.2
  c.momentum = 0.9
  c.weight_decay = 1e-4
  c.lr_schedule = "step"
  c.lr_decay_epochs = "30,60,90"
  c.teacher.name = "resnet34"
  c.student.name = "resnet18"
  c.kd.method = "vanilla"  # the cells set each method's own weights
  c.kd.temperature = 1.0
  c.scratch_baseline = False
  return config_lib.apply_arg(c, arg)


def cells(arg=None):
  seeds, common = study.parse_study_arg(arg, seeds=1)
  return [study.join(f"{s},seed={seed}", common)
          for s in SETTINGS for seed in range(seeds)]
