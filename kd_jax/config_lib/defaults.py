"""A config's fields at their defaults (`base_config`) and the values
some of them allow."""
from __future__ import annotations

import ml_collections

from kd_jax import weight_spec
from kd_jax.distill import methods

# The sources kd_jax names; any other TFDS dataset is allowed by its name
# (config.dataset.name; data/tfds_source.py).
DATASETS = ("default", "digits", "fashion_mnist_local", "mnist_local", "mnist",
            "fashion_mnist", "cifar10", "cifar100", "folder", "csv")


OPTIMIZERS = ("adam", "sgd")


LR_SCHEDULES = ("cosine", "constant", "step")


SELECT_METRICS = ("accuracy", "macro_f1", "balanced_accuracy", "auc")


NORMALIZATIONS = ("auto", "half", "imagenet")


WEIGHT_SOURCES = weight_spec.SOURCES


NAN_POLICIES = ("stop", "skip")


CORRUPT_IMAGES = ("refuse", "skip")


COMPUTE_DTYPES = ("float32", "bfloat16")


# config.dataset.mix_ratio and mix_partner (kd_jax/data/mixing.py).
MIX_RATIOS = ("beta", "folded")


MIX_PARTNERS = ("permutation", "roll")


# config.dataset.train_transform / eval_transform (kd_jax/data/transforms.py).
TRAIN_TRANSFORMS = ("", "none", "pad_crop", "random_resized_crop")
EVAL_TRANSFORMS = ("resize", "resize_center_crop")


# config.kd.temperature's default. A learned-temperature method (CTKD)
# refuses any other value: a fixed T given to it would be silently unused.
DEFAULT_TEMPERATURE = 4.0


def base_config() -> ml_collections.ConfigDict:
  """Every field a run reads, at its default (a cell overrides some)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Data order and augmentation follow data_seed (-1: seed); initial weights
  # and dropout follow seed. A vmapped sweep shares one data_seed.
  c.data_seed = -1
  c.num_epochs = 20
  c.batch_size = 256
  c.eval_batch_size = 512
  _add_optimizer_fields(c)
  c.early_stopping_patience = 5  # epochs without val improvement; 0 = off
  # The validation metric that picks the best checkpoint and drives early
  # stopping: accuracy | macro_f1 | balanced_accuracy | auc (ROC-AUC; one-vs-
  # rest macro for more than 2 classes).
  c.select_metric = "accuracy"
  c.checkpoint_every_steps = 500  # plus one at every epoch end
  c.log_every_steps = 50
  c.prefetch_depth = 2  # batches placed on the devices ahead (0: none; same bits)
  c.max_steps_per_epoch = 0  # 0 = full epoch (tiny mode caps it)
  c.scratch_baseline = False  # also train the student without a teacher
  c.mixed_precision = False  # bf16 compute in training (f32 params, loss)
  c.bn_recalibration_steps = 0  # precise BN before evaluations (precise_bn.py)
  # A non-finite loss or gradient: 'stop' (one-line error naming the step and
  # the last good checkpoint) or 'skip' (drop that step's update, count it).
  c.nan_policy = "stop"
  c.runlocal = False

  c.dataset = _dataset_config()
  c.teacher = _teacher_config()

  c.student = s = ml_collections.ConfigDict()
  s.name = "mobilenet_v3_small"
  s.init_from = ""  # weights the student (and scratch) start from

  # Two-phase fine-tuning of every stage that starts from `init_from`
  # weights: first `frozen_epochs` epochs train the classifier head only
  # (backbone frozen, its BatchNorm in inference mode) at `frozen_lr`, then
  # the remaining epochs train all layers at the stage's learning rate.
  c.finetune = f = ml_collections.ConfigDict()
  f.frozen_epochs = 0
  f.frozen_lr = 1e-3

  c.kd = _kd_config()

  c.loss = ml_collections.ConfigDict()
  # Weights of the hard-label cross-entropy term of every method (teacher,
  # scratch and student stages): 'none', 'balanced' (w_c = N / (C n_c) over
  # the training split, as scikit-learn) or a comma list of C positive
  # floats, e.g. '1,2.5'. The CE becomes the weighted mean (losses.py).
  c.loss.class_weights = "none"
  return c


def _add_optimizer_fields(c: ml_collections.ConfigDict) -> None:
  """The student's optimizer and its learning-rate schedule."""
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.momentum = 0.9  # sgd only
  c.nesterov = False  # sgd only: Nesterov momentum (Sutskever et al. 2013)
  c.weight_decay = 0.0
  c.warmup_epochs = 0.0
  # The warmup in steps instead (big_vision's configs give it so; 0: use
  # warmup_epochs): the same steps in every stage, whatever its epoch
  # length, at most half of a shorter stage.
  c.warmup_steps = 0
  # Clip the student's gradient to this global norm before the optimizer
  # (big_vision's grad_clip_norm; 0: off).
  c.grad_clip_norm = 0.0
  c.lr_schedule = "cosine"  # after the warmup: 'cosine' decay, 'constant' or 'step'
  c.lr_decay_epochs = ""  # 'step': comma list of epochs, e.g. '150,180,210'
  c.lr_decay_factor = 0.1  # 'step': the lr is multiplied by it at each


def _dataset_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = "default"
  # TFDS data_dir, the image-folder root ('folder'), or the directory the
  # CSV's file names are relative to ('csv').
  d.data_dir = ""
  # A TFDS dataset whose uint8 images (at their stored size) take at most
  # this many MiB is decoded into memory once; a larger one is read row by
  # row from its ArrayRecord files, batch by batch (data/tfds_source.py).
  d.in_memory_mb = 2048
  d.image_size = 112
  d.val_fraction = 0.1  # held out of train when the source has no val split
  # Use only N examples (0 = all): a fixed random sample, stratified by
  # class, in the split's order (data.limit).
  d.train_limit = 0
  d.eval_limit = 0
  # The transfer set (Hinton et al. 2015, section 3): the distilled stages
  # (student, scratch, assistants, hint) train on N of the training images
  # (0 = all; a fixed sample as above) while the teacher trains on all of
  # them, as a teacher trained on more data than the student gets does.
  d.transfer_limit = 0
  # 'auto': what imported weights were trained with (ImageNet mean/std for
  # torchvision/timm, [-1, 1] for Keras), else 'half' ([-1, 1]).
  d.normalization = "auto"
  _augmentation_fields(d)
  # A file of an image folder or CSV set that does not decode, found when a
  # batch reads it: 'refuse' (one error line naming it) or 'skip' (its rows
  # take a neighbouring image and its label; warned and counted in
  # results.json as corrupt_images_skipped).
  d.corrupt_images = "refuse"
  # Decode once: '' = off; a directory = each split of an image folder or
  # CSV set decoded once into a uint8 array there (data/decoded_cache.py)
  # and read as a memory map by later epochs and runs; refused when its
  # files changed since.
  d.decoded_cache = ""
  # name='csv': the images in data_dir, listed by an annotations CSV (one
  # row per image: file name, label, split); defaults fit MHIST's
  # annotations.csv.
  d.csv = ""
  d.csv_file_column = "Image Name"
  d.csv_label_column = "Majority Vote Label"
  d.csv_split_column = "Partition"
  # Each epoch draws its order with replacement by inverse class frequency,
  # so classes appear equally often in expectation (imbalanced data).
  d.balanced_sampling = False
  return d


def _augmentation_fields(d: ml_collections.ConfigDict):
  """config.dataset's crop, flip, stored geometry and mixing fields."""
  d.random_crop = False
  d.random_flip = False
  d.crop_padding = 4
  # The training crop: 'pad_crop' (reflect-pad crop_padding, random crop;
  # the same as random_crop=True), 'random_resized_crop' (torchvision's
  # RandomResizedCrop: area fraction U(rrc_min_scale, rrc_max_scale), log
  # aspect ratio uniform in [rrc_min_ratio, rrc_max_ratio], resized to
  # image_size), 'none', or '' = pad_crop if random_crop else none. With
  # random_resized_crop an image file is stored as the centre square of
  # side train_source_size (0: image_size / 0.875) and cropped on device.
  d.train_transform = ""
  d.rrc_min_scale = 0.08
  d.rrc_max_scale = 1.0
  d.rrc_min_ratio = 3 / 4
  d.rrc_max_ratio = 4 / 3
  d.train_source_size = 0
  # Evaluation images: 'resize' (squashed to image_size) or
  # 'resize_center_crop' (torchvision's: shorter side to eval_resize_size,
  # 0: image_size / 0.875, i.e. 256 for 224, then the centre crop).
  d.eval_transform = "resize"
  d.eval_resize_size = 0
  # Mixing after crop/flip, in training only (data/mixing.py): mixup and
  # CutMix with lam ~ Beta(alpha, alpha) (0 = off; both set: one of the two
  # per batch); the student and the teacher see the same mixed images and
  # the label term mixes the labels. mix_ratio 'folded' takes max(lam,
  # 1 - lam) and mix_partner 'roll' mixes example i with i - 1, as
  # big_vision's function-matching distillation (configs/function_matching.py).
  d.mixup_alpha = 0.0
  d.cutmix_alpha = 0.0
  d.mix_ratio = "beta"  # 'beta' | 'folded'
  d.mix_partner = "permutation"  # 'permutation' | 'roll'


def _teacher_config() -> ml_collections.ConfigDict:
  t = ml_collections.ConfigDict()
  t.name = "vgg16"
  # The frozen teacher, used as is: a kd_jax run (workdir, stage dir or
  # checkpoints/best) or a weight file 'torchvision:PATH' / 'timm:PATH' /
  # 'keras:PATH'; '' = train the teacher first (in workdir/teacher).
  t.checkpoint = ""
  # Weights the teacher's own training starts from (same forms as
  # checkpoint); a head with another class count is re-initialised.
  t.init_from = ""
  # Precomputed teacher logits (.npz: 'paths' or 'indices' and per split
  # '<split>_logits'): distil without any teacher forward pass.
  t.logits = ""
  t.num_epochs = -1  # -1: same as num_epochs
  t.learning_rate = -1.0  # -1: same as learning_rate
  # Teacher-output cache (teacher_cache.py): '' = off; a directory = compute
  # the teacher's logits once per split and reuse them (with augmentation:
  # once per augmented batch, shared by the runs of one data seed).
  t.cache_dir = ""
  # The frozen teacher's forward (live and cached): 'float32' or 'bfloat16'
  # (its variables and input cast to bf16, its outputs back to float32; for
  # accelerators; XLA:CPU runs bf16 convolutions at its float32 rate, see
  # benchmarks/RESULTS.md). The student stays float32.
  t.compute_dtype = "float32"
  # The label order of a teacher.checkpoint trained elsewhere, as a comma
  # list: its output i is class class_names[i] (e.g. 'A4C,A2C,PSAX,PLAX').
  # The run reorders that teacher's classifier to the data's class order
  # (sorted class folders, or the CSV's sorted labels), so every consumer
  # of its logits sees data-ordered outputs; the names must be the data's.
  # '' = its outputs already are in the data's class order.
  t.class_names = ""
  return t


def _kd_config() -> ml_collections.ConfigDict:
  """The distillation fields: the shared ones, hints' and assistants';
  then the feature methods' and every method's own (`_add_feature_kd_fields`)."""
  k = ml_collections.ConfigDict()
  k.method = "vanilla"
  k.temperature = DEFAULT_TEMPERATURE  # fixed-temperature methods only
  k.alpha = 0.5
  # The CE and soft-term weights, mdistiller's CE_WEIGHT and KD_WEIGHT:
  # loss = ce_weight CE + kd_weight KD for the methods whose registry entry
  # says loss_weights applies (alpha is then unused). Both -1: 1 - alpha and
  # alpha (DKD, DIST: 1 and 1).
  k.ce_weight = -1.0
  k.kd_weight = -1.0
  # The soft term of Hinton KD (the methods whose registry entry says
  # t_squared applies) is multiplied by T^2; false drops the factor (a
  # weighted average of the two cross-entropies, as some reproductions
  # write it).
  k.t_squared = True
  # CTKD: the curriculum schedule of its temperature's gradient weight.
  k.schedule = "cosine"
  # Logit standardisation (Sun et al. 2024): z-score both logits before the
  # temperature softmax (the methods whose registry entry says it applies).
  k.logit_standardization = False
  # FitNets hints: feature names (see `python -m kd_jax.models --list`).
  # Set for method 'fitnets' (or to add a hint term to another KD method).
  k.hint_student_layer = ""
  k.hint_teacher_layer = ""
  k.hint_weight = 100.0  # single-stage: loss = KD + hint_weight * MSE
  k.hint_stages = 1  # 2: first train up to the guided layer on hints only
  k.hint_epochs = -1  # stage-1 epochs of two-stage hints (-1: num_epochs)
  # Teacher assistants: comma list of models between teacher and student,
  # e.g. 'resnet18' -> teacher -> resnet18 -> student, each link distilled
  # with this config's method.
  k.assistants = ""
  # Hints with assistants: per assistant (comma list, or one name for all)
  # its layer that its teacher's hint guides and that gives the hint to the
  # next link; every link adds the hint term between its two layers.
  k.hint_assistant_layers = ""
  _add_feature_kd_fields(k)
  return k


def _add_feature_kd_fields(k: ml_collections.ConfigDict) -> None:
  # Feature and relation methods (at, pkt, sp, rkd, vid, crd, reviewkd, cc,
  # nst, fsp, ab, ft, ofd, kdsvd):
  # loss = the loss of `feature_logit_method` ('none': cross-entropy) +
  # feature_weight * feature term. feature_weight 0: the method's default
  # (methods.py: the CRD benchmark's betas). feature_layers: '' = the
  # method's default pairs, else a comma list of 'student:teacher' layer
  # names (one name: the same in both), paired in order.
  k.feature_logit_method = methods.SCRATCH
  k.feature_weight = 0.0
  k.feature_layers = ""
  # Every method's own fields (methods.METHODS[...].fields), at their
  # defaults.
  for name, field in methods.OWN_FIELDS.items():
    k[name] = field.default


CLASS_WEIGHTS = ("none", "balanced")
