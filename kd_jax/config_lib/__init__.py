"""What a kd_jax config is: the defaults, the cell arg string, the checks.

Every file in `configs/` is an ml_collections `get_config(arg=None)` that
starts from `base_config()` and applies `apply_arg(config, arg)`; the arg
string names one ablation cell, e.g. ``schedule=linear,seed=1,runlocal``.
Keys are config paths (``kd.temperature=4``) or the short aliases in
`ALIASES`; a bare word is a flag (``runlocal``/``tiny``: the tiny mode used
by tests and Colab).
"""
from __future__ import annotations

import importlib.util
import os
import re

import ml_collections

from kd_jax import models
from kd_jax import weight_spec
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError

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
# config.kd.temperature's default. A learned-temperature method (CTKD)
# refuses any other value: a fixed T given to it would be silently unused.
DEFAULT_TEMPERATURE = 4.0


def load_config_module(path: str):
  """The config (or study) file at `path` as a module: configs/ is not a
  package, so its files are loaded by path."""
  spec = importlib.util.spec_from_file_location(
      "kd_jax_config_" + os.path.splitext(os.path.basename(path))[0], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def sibling_config(config_file: str, name: str):
  """The config module `name` (e.g. "crd_resnet8x4.py"), relative to the
  folder of `config_file` (a config's `__file__`): for a cell that starts
  from another file's recipe."""
  return load_config_module(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), name))


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
  c.optimizer = "adam"
  c.learning_rate = 1e-3
  c.momentum = 0.9  # sgd only
  c.nesterov = False  # sgd only: Nesterov momentum (Sutskever et al. 2013)
  c.weight_decay = 0.0
  c.warmup_epochs = 0.0
  c.lr_schedule = "cosine"  # after the warmup: 'cosine' decay, 'constant' or 'step'
  c.lr_decay_epochs = ""  # 'step': comma list of epochs, e.g. '150,180,210'
  c.lr_decay_factor = 0.1  # 'step': the lr is multiplied by it at each
  c.early_stopping_patience = 5  # epochs without val improvement; 0 = off
  # The validation metric that picks the best checkpoint and drives early
  # stopping: accuracy | macro_f1 | balanced_accuracy | auc (ROC-AUC; one-vs-
  # rest macro for more than 2 classes).
  c.select_metric = "accuracy"
  c.checkpoint_every_steps = 500  # plus one at every epoch end
  c.log_every_steps = 50
  c.max_steps_per_epoch = 0  # 0 = full epoch (tiny mode caps it)
  c.scratch_baseline = False  # also train the student without a teacher
  c.mixed_precision = False  # bf16 compute in training (f32 params, loss)
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


def _dataset_config() -> ml_collections.ConfigDict:
  d = ml_collections.ConfigDict()
  d.name = "default"
  # TFDS data_dir, the image-folder root ('folder'), or the directory the
  # CSV's file names are relative to ('csv').
  d.data_dir = ""
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
  d.random_crop = False
  d.random_flip = False
  d.crop_padding = 4
  d.corrupt_images = "refuse"  # image folders: 'refuse' or 'skip' (warn + count)
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
  return t


def _kd_config() -> ml_collections.ConfigDict:
  """The distillation fields: the shared ones, hints' and assistants';
  then the feature methods' and every method's own (`_add_feature_kd_fields`)."""
  k = ml_collections.ConfigDict()
  k.method = "vanilla"
  k.temperature = DEFAULT_TEMPERATURE  # fixed-temperature methods only
  k.alpha = 0.5
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
  # Feature and relation methods (at, pkt, sp, rkd, vid, crd, reviewkd):
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


ALIASES = {
    "T": "kd.temperature", "temperature": "kd.temperature",
    "alpha": "kd.alpha", "method": "kd.method", "schedule": "kd.schedule",
    "student": "student.name", "teacher": "teacher.name",
    "dataset": "dataset.name", "seed": "seed", "epochs": "num_epochs",
    "image_size": "dataset.image_size", "assistants": "kd.assistants",
    "peers": "kd.peers", "hint_stages": "kd.hint_stages",
    "subclasses": "kd.subclasses", "ls": "kd.logit_standardization",
}
FLAGS_IN_ARG = ("runlocal", "tiny")


def _coerce(old, text: str):
  if isinstance(old, bool):
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise UserError(f"config arg value {text!r} is not a boolean")
  if isinstance(old, int):
    return int(text)
  if isinstance(old, float):
    return float(text)
  return text


def parse_arg(arg: str | None) -> dict:
  """'schedule=linear,seed=1,runlocal' -> {'kd.schedule': 'linear', ...}."""
  out = {}
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      if item not in FLAGS_IN_ARG:
        raise UserError(f"config arg {item!r} is neither key=value nor one "
                        f"of {', '.join(FLAGS_IN_ARG)}")
      out["runlocal"] = "true"
      continue
    key, value = item.split("=", 1)
    out[ALIASES.get(key.strip(), key.strip())] = value.strip()
  return out


def _parent(config: ml_collections.ConfigDict, path: str):
  """(the ConfigDict that holds the last key of dotted `path`, that key);
  UserError when a key along `path` does not exist."""
  *parents, leaf = path.split(".")
  node = config
  for key in parents:
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      raise UserError(f"config key {path!r} does not exist")
    node = node[key]
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    raise UserError(f"config key {path!r} does not exist")
  return node, leaf


def set_path(config: ml_collections.ConfigDict, path: str, value):
  """Sets dotted `path` (``"kd.temperature"``) of `config` to `value` in
  place and returns `config`. The key must already exist and `value` must fit
  its type (UserError otherwise): a typo must not add a field that nothing
  reads."""
  node, leaf = _parent(config, path)
  try:
    node[leaf] = value
  except TypeError as e:  # ConfigDict's type safety, e.g. a str for an int
    raise UserError(f"config key {path!r}: {str(e).splitlines()[0]}") from None
  return config


def get_path(config: ml_collections.ConfigDict, path: str):
  node, leaf = _parent(config, path)
  return node[leaf]


def flatten(d: dict, prefix: str = "") -> dict:
  """Nested dicts -> one dict of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + k + "."))
    else:
      out[prefix + k] = v
  return out


def apply_arg(config: ml_collections.ConfigDict, arg: str | None):
  """Applies a cell arg string to `config` in place; returns it."""
  for path, text in parse_arg(arg).items():
    try:
      node, leaf = _parent(config, path)
    except UserError:
      raise UserError(f"config arg key {path!r} does not exist") from None
    try:
      value = _coerce(node[leaf], text)
    except ValueError as e:
      raise UserError(f"config arg {path}={text!r}: {e}") from None
    set_path(config, path, value)
  if config.runlocal:
    make_tiny(config)
  return config


TINY_TEACHERS = ("simple_cnn", "tiny_cnn", "mlp", "mlp_1200x2", "mlp_small")
# Same feature names and downsampling per block as the big model.
TINY_HINT_TEACHERS = {"vgg16": "vgg_cifar", "vgg16_bn": "vgg_cifar",
                      "resnet50": "resnet18"}


def make_tiny(c: ml_collections.ConfigDict):
  """Tiny/runlocal mode: seconds on a CPU; same code path as a real run."""
  c.runlocal = True
  c.num_epochs = min(c.num_epochs, 2)
  if c.lr_schedule == "step":  # the decays land inside the short run
    c.lr_decay_epochs = "1"
  c.batch_size = 16
  c.eval_batch_size = 32
  c.max_steps_per_epoch = 4
  c.log_every_steps = 2
  c.checkpoint_every_steps = 2
  c.dataset.image_size = min(c.dataset.image_size, 32)
  c.dataset.train_limit = 128
  c.dataset.eval_limit = 64
  # The student is kept; a big teacher (VGG16: 138M params) is swapped for a
  # small CNN so a tiny run takes seconds on a CPU. With hint layers the
  # swap keeps the family, so the teacher's feature names still exist.
  named_layers = c.kd.hint_teacher_layer or c.kd.feature_layers
  if (not (c.teacher.checkpoint or c.teacher.init_from or c.teacher.logits)
      and c.teacher.name not in TINY_TEACHERS):
    c.teacher.name = (TINY_HINT_TEACHERS.get(c.teacher.name, "simple_cnn")
                      if named_layers else "simple_cnn")
  c.kd.assistants = ",".join(
      m if m in TINY_TEACHERS else "tiny_cnn" for m in model_list(c.kd.assistants))
  if c.teacher.num_epochs > 0:
    c.teacher.num_epochs = min(c.teacher.num_epochs, 2)
  if c.kd.hint_epochs > 0:
    c.kd.hint_epochs = min(c.kd.hint_epochs, 2)
  c.finetune.frozen_epochs = min(c.finetune.frozen_epochs, 1)
  return c


def teacher_epochs(c) -> int:
  return c.teacher.num_epochs if c.teacher.num_epochs > 0 else c.num_epochs


def hint_epochs(c) -> int:
  return c.kd.hint_epochs if c.kd.hint_epochs > 0 else c.num_epochs


def teacher_bf16(c) -> bool:
  """Whether the frozen teacher's forwards (live and cached) run in bf16."""
  return c.teacher.compute_dtype == "bfloat16"


def teacher_lr(c) -> float:
  return c.teacher.learning_rate if c.teacher.learning_rate > 0 else c.learning_rate


def validate(c: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the bad value and what is allowed; then fixes
  `dataset.normalization='auto'` to its value (`auto_normalization`)."""

  def one_of(value, allowed, what):
    if value not in allowed:
      raise UserError(
          f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")

  one_of(c.dataset.name, DATASETS, "config.dataset.name")
  one_of(c.student.name, sorted(models.MODELS), "config.student.name")
  one_of(c.kd.method, methods.USER_METHODS, "config.kd.method")
  if c.kd.method in methods.TEACHER_METHODS or c.scratch_baseline:
    one_of(c.teacher.name, sorted(models.MODELS), "config.teacher.name")
  one_of(c.kd.schedule, losses.SCHEDULES, "config.kd.schedule")
  one_of(c.optimizer, OPTIMIZERS, "config.optimizer")
  one_of(c.lr_schedule, LR_SCHEDULES, "config.lr_schedule")
  one_of(c.select_metric, SELECT_METRICS, "config.select_metric")
  one_of(c.dataset.normalization, NORMALIZATIONS, "config.dataset.normalization")
  one_of(c.nan_policy, NAN_POLICIES, "config.nan_policy")
  one_of(c.dataset.corrupt_images, CORRUPT_IMAGES, "config.dataset.corrupt_images")
  one_of(c.teacher.compute_dtype, COMPUTE_DTYPES, "config.teacher.compute_dtype")
  if not c.kd.temperature > 0:
    raise UserError(
        f"config.kd.temperature={c.kd.temperature} must be > 0")
  if not 0.0 <= c.kd.alpha <= 1.0:
    raise UserError(f"config.kd.alpha={c.kd.alpha} must be in [0, 1]")
  for name in ("num_epochs", "batch_size", "eval_batch_size"):
    if int(c[name]) <= 0:
      raise UserError(f"config.{name}={c[name]} must be a positive integer")
  if c.teacher.num_epochs == 0 or c.teacher.num_epochs < -1:
    raise UserError(f"config.teacher.num_epochs={c.teacher.num_epochs} must "
                    "be a positive integer (or -1: same as num_epochs)")
  if not c.learning_rate > 0:
    raise UserError(f"config.learning_rate={c.learning_rate} must be > 0")
  _validate_dataset_numbers(c.dataset, c.runlocal)
  if c.nesterov and c.optimizer != "sgd":
    raise UserError(f"config.nesterov=True needs config.optimizer='sgd' "
                    f"(got {c.optimizer!r})")
  _validate_lr_schedule(c)
  if methods.get(c.kd.method).learns_temperature:
    _validate_learned_temperature(c.kd)
  _validate_methods(c, one_of, models)
  _validate_hint_links(c)
  _validate_features(c, one_of, models)
  _validate_weights(c)
  if c.dataset.normalization == "auto":
    c.dataset.normalization = auto_normalization(c)
  _validate_data_files(c.dataset)


def _validate_lr_schedule(c):
  if c.lr_schedule != "step":
    return
  try:
    epochs = int_list(c.lr_decay_epochs)
  except ValueError:
    epochs = []
  if not epochs or any(not 0 < e <= c.num_epochs for e in epochs):
    raise UserError(
        f"config.lr_decay_epochs={c.lr_decay_epochs!r}: lr_schedule='step' "
        f"needs a comma list of epochs in [1, num_epochs={c.num_epochs}]")
  if not 0 < c.lr_decay_factor <= 1:
    raise UserError(
        f"config.lr_decay_factor={c.lr_decay_factor} must be in (0, 1]")


def int_list(text) -> list[int]:
  """'150,180,210' -> [150, 180, 210] (a single int is a list of one)."""
  return [int(x) for x in str(text).split(",") if x.strip()]


def _validate_learned_temperature(k):
  if k.temperature != DEFAULT_TEMPERATURE:
    raise UserError(
        f"config.kd.temperature={k.temperature:g} is a fixed temperature; "
        f"method {k.method!r} learns its own (from config.kd.init_raw): "
        f"leave kd.temperature at its default {DEFAULT_TEMPERATURE:g}")
  if not (k.t_start > 0 and k.t_end >= 0):
    raise UserError(f"CTKD temperature range t_start={k.t_start}, "
                    f"t_end={k.t_end}: need t_start > 0 and t_end >= 0")
  if k.epoch_cap <= 0:
    raise UserError(f"config.kd.epoch_cap={k.epoch_cap} must be > 0")


def _validate_dataset_numbers(d, runlocal):
  if not 28 <= d.image_size <= 224 and not runlocal:
    raise UserError(
        f"config.dataset.image_size={d.image_size} must be in [28, 224]")
  if d.image_size < 8:
    raise UserError(f"config.dataset.image_size={d.image_size} is too small")
  for name in ("train_limit", "eval_limit", "transfer_limit"):
    if int(d[name]) < 0:
      raise UserError(f"config.dataset.{name}={d[name]} must be >= 0 (0: all)")
  if not 0.0 <= d.val_fraction < 1.0:
    raise UserError(
        f"config.dataset.val_fraction={d.val_fraction} must be in [0, 1)")


def _validate_data_files(d):
  """The paths a file-based source needs (their contents: data.load)."""
  if d.name == "folder" and not d.data_dir:
    raise UserError("config.dataset.name='folder' needs "
                    "config.dataset.data_dir=<root with train/ and test/>")
  if d.name == "csv" and not (d.data_dir and d.csv):
    raise UserError("config.dataset.name='csv' needs config.dataset.csv="
                    "<annotations CSV> and config.dataset.data_dir=<the "
                    f"images' directory> (got csv={d.csv!r}, "
                    f"data_dir={d.data_dir!r})")


def _validate_weight_spec(spec, what):
  head, sep, path = spec.partition(":")
  if sep and head in WEIGHT_SOURCES and not path:
    raise UserError(f"{what}={spec!r} names no file")
  if sep and head in WEIGHT_SOURCES and not os.path.isfile(path):
    raise UserError(f"{what}={spec!r}: no such file {path!r}")
  if spec and not sep and not os.path.exists(spec):
    raise UserError(f"{what}={spec!r} does not exist (allowed: a kd_jax "
                    f"workdir or checkpoint, or {'|'.join(WEIGHT_SOURCES)}"
                    ":PATH)")


def weight_fields(c) -> list[str]:
  """The weight specs this config uses (a run without a teacher ignores
  the teacher's)."""
  teacher = (["teacher.checkpoint", "teacher.init_from"]
             if c.kd.method in methods.TEACHER_METHODS else [])
  return teacher + ["student.init_from"]


def _validate_weights(c):
  for what in weight_fields(c):
    _validate_weight_spec(get_path(c, what), f"config.{what}")
  if c.teacher.logits and c.teacher.checkpoint:
    raise UserError("config.teacher.logits and config.teacher.checkpoint are "
                    "two teachers; set one")
  if c.teacher.logits and (c.kd.hint_student_layer or c.kd.assistants
                           or methods.get(c.kd.method).subclass_logits):
    raise UserError("config.teacher.logits holds the teacher's logits only: "
                    "hint layers, teacher assistants and subclass "
                    "distillation need the teacher model (teacher.checkpoint)")
  if c.teacher.logits and not os.path.isfile(c.teacher.logits):
    raise UserError(f"config.teacher.logits={c.teacher.logits!r}: no such file")
  f = c.finetune
  if f.frozen_epochs < 0:
    raise UserError(f"config.finetune.frozen_epochs={f.frozen_epochs} must be "
                    ">= 0")
  if f.frozen_epochs and not f.frozen_lr > 0:
    raise UserError(f"config.finetune.frozen_lr={f.frozen_lr} must be > 0")
  for role, spec in (("teacher", c.teacher.init_from),
                     ("student", c.student.init_from)):
    epochs = teacher_epochs(c) if role == "teacher" else c.num_epochs
    if spec and f.frozen_epochs >= epochs:
      raise UserError(
          f"config.finetune.frozen_epochs={f.frozen_epochs} leaves no epoch "
          f"to fine-tune the whole {role} ({epochs} epochs)")


CLASS_WEIGHTS = ("none", "balanced")


def class_weights_setting(c):
  """config.loss.class_weights parsed: None ('none'), 'balanced' or a tuple
  of positive floats (their count is checked against the data's classes
  where the data is known: step.class_weights)."""
  text = str(c.loss.class_weights).strip()
  if text in CLASS_WEIGHTS:
    return None if text == "none" else text
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if not values or not all(v > 0 and v < float("inf") for v in values):
    raise UserError(
        f"config.loss.class_weights={c.loss.class_weights!r} is not allowed; "
        "allowed: 'none', 'balanced' or a comma list of positive floats, one "
        "per class (e.g. '1,2.5')")
  return values


def normalization(c) -> str:
  """`dataset.normalization` with 'auto' resolved (`auto_normalization`)."""
  n = c.dataset.normalization
  return auto_normalization(c) if n == "auto" else n


def auto_normalization(c) -> str:
  """The normalisation imported weights expect ('half' without any); one
  line when the teacher's and the student's weights disagree."""
  specs = [get_path(c, what) for what in weight_fields(c)]
  found = {weight_spec.normalization(s) for s in specs} - {None}
  if len(found) > 1:
    raise UserError(
        "the imported teacher and student weights expect different input "
        f"normalisations ({', '.join(sorted(found))}); set "
        "config.dataset.normalization to one of them")
  return found.pop() if found else "half"


def model_list(text: str) -> list[str]:
  return [m.strip() for m in text.split(",") if m.strip()]


def hints_enabled(c) -> bool:
  return (bool(c.kd.hint_student_layer)
          and methods.get(c.kd.method).teacher)


def subclasses(c) -> int:
  """Logits per class of teacher and student (1 unless the method has
  subclass logits)."""
  return c.kd.subclasses if methods.get(c.kd.method).subclass_logits else 1


def peers(c) -> list[str]:
  if not methods.get(c.kd.method).cohort:
    return []
  return model_list(c.kd.peers) or [c.student.name]


def _validate_methods(c, one_of, models) -> None:
  k = c.kd
  method = methods.get(k.method)
  if method.hints == "required" and not (k.hint_student_layer
                                         and k.hint_teacher_layer):
    raise UserError(f"method {k.method!r} needs config.kd.hint_student_layer "
                    "and config.kd.hint_teacher_layer (feature names; list "
                    "them with `python -m kd_jax.models --list`)")
  if bool(k.hint_student_layer) != bool(k.hint_teacher_layer):
    raise UserError("set both config.kd.hint_student_layer and "
                    "config.kd.hint_teacher_layer, or neither")
  if k.hint_student_layer and not method.teacher:
    raise UserError(f"hint layers need a teacher; method {k.method!r} has none")
  if k.hint_student_layer and method.hints == "refused":
    raise UserError(f"hint layers are not supported with method {k.method!r}")
  if k.hint_stages not in (1, 2):
    raise UserError(f"config.kd.hint_stages={k.hint_stages} must be 1 "
                    "(hint term added to KD) or 2 (hints first, then KD)")
  if k.hint_weight < 0:
    raise UserError(f"config.kd.hint_weight={k.hint_weight} must be >= 0")
  if k.hint_epochs == 0 or k.hint_epochs < -1:
    raise UserError(f"config.kd.hint_epochs={k.hint_epochs} must be a "
                    "positive integer (or -1: same as num_epochs)")
  for name in model_list(k.assistants):
    one_of(name, sorted(models.MODELS), "teacher assistant (config.kd.assistants)")
  if k.assistants and not method.teacher:
    raise UserError(f"teacher assistants need a teacher; method {k.method!r} "
                    "has none")
  if method.subclass_logits and k.subclasses < 2:
    raise UserError(f"config.kd.subclasses={k.subclasses} must be >= 2")
  if method.cohort:
    for name in model_list(k.peers):
      one_of(name, sorted(models.MODELS), "peer model (config.kd.peers)")
  for name in ("dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma",
               "subclass_aux_weight"):
    if k[name] < 0:
      raise UserError(f"config.kd.{name}={k[name]} must be >= 0")
  if k.dkd_warmup_epochs < 0:
    raise UserError(f"config.kd.dkd_warmup_epochs={k.dkd_warmup_epochs} must be >= 0")
  if k.subclass_aux_temperature <= 0:
    raise UserError(f"config.kd.subclass_aux_temperature="
                    f"{k.subclass_aux_temperature} must be > 0")
  if k.temperature_hidden <= 0:
    raise UserError(f"config.kd.temperature_hidden={k.temperature_hidden} "
                    "must be > 0")
  class_weights_setting(c)  # config.loss: every method's CE weights
  _refuse_ignored_options(c)


def _refuse_ignored_options(c) -> None:
  """A shared option the run's loss ignores is refused, not silently
  unused (the registry entry of the method, or of a feature method's
  logit term, says which apply)."""
  k = c.kd
  logit = methods.logit_method(k)
  shown = (k.method if logit is methods.get(k.method)
           else f"{k.method} (kd.feature_logit_method={k.feature_logit_method})")
  ignored = [(bool(k.logit_standardization) and not logit.logit_standardization,
              "kd.logit_standardization=True"),
             (not k.t_squared and not logit.t_squared, "kd.t_squared=False"),
             (class_weights_setting(c) is not None and not logit.class_weights,
              f"loss.class_weights={c.loss.class_weights!r}")]
  for is_ignored, what in ignored:
    if is_ignored:
      raise UserError(f"{what} has no effect with kd.method={shown}")


def _validate_hint_links(c) -> None:
  k = c.kd
  assistants = model_list(k.assistants)
  layers = model_list(k.hint_assistant_layers)
  if not (assistants and k.hint_student_layer):
    if layers:
      raise UserError("config.kd.hint_assistant_layers is set without "
                      "teacher assistants and hint layers")
    return
  if len(layers) not in (1, len(assistants)):
    raise UserError(
        f"config.kd.hint_assistant_layers={k.hint_assistant_layers!r}: hint "
        f"layers with {len(assistants)} teacher assistant(s) need one layer "
        "per assistant (or one name for all): the layer its teacher's hint "
        "guides and that gives the hint to the next link")
  if k.hint_stages != 1:
    raise UserError("hint layers with teacher assistants add the hint term "
                    "to every link's loss: set config.kd.hint_stages=1")


def hint_links(c) -> list[tuple[str, str, tuple[str, str]]]:
  """(model, its teacher, (guided layer, hint layer)) of each distillation
  link with hints, teacher side first: the assistants, then the student.
  Each assistant's layer is guided by its teacher's and hints the next."""
  k = c.kd
  models_ = model_list(k.assistants) + [c.student.name]
  layers = model_list(k.hint_assistant_layers)
  layers = layers * len(models_[:-1]) if len(layers) == 1 else layers
  guided = layers + [k.hint_student_layer]
  teachers = [c.teacher.name] + models_[:-1]
  hints = [k.hint_teacher_layer] + layers
  return [(m, t, (g, h)) for m, t, g, h in zip(models_, teachers, guided, hints)]


def _validate_features(c, one_of, models) -> None:
  """The feature and relation methods' settings (the layer names, per link,
  against the models: `feature_layer_pairs`)."""
  k = c.kd
  term = methods.get(k.method).feature
  if term is None:
    return
  one_of(k.feature_logit_method, methods.LOGIT_TERMS,
         "config.kd.feature_logit_method")
  if not k.feature_weight >= 0:
    raise UserError(f"config.kd.feature_weight={k.feature_weight} must be >= 0 "
                    f"(0: method {k.method!r}'s default {term.weight:g})")
  if c.teacher.logits:
    raise UserError(f"method {k.method!r} needs the teacher's features: "
                    "config.teacher.logits holds its logits only (set "
                    "config.teacher.checkpoint)")
  if k.assistants and k.feature_layers:
    raise UserError("config.kd.feature_layers names the layers of one "
                    "teacher and student; with teacher assistants leave it "
                    "'' (each link pairs its models' default layers)")
  for name, low, what in (("crd_negatives", 1, ">= 1"), ("crd_dim", 1, ">= 1")):
    if k[name] < low:
      raise UserError(f"config.kd.{name}={k[name]} must be {what}")
  if not k.crd_temperature > 0:
    raise UserError(f"config.kd.crd_temperature={k.crd_temperature} must be > 0")
  if not 0.0 <= k.crd_momentum < 1.0:
    raise UserError(f"config.kd.crd_momentum={k.crd_momentum} must be in [0, 1)")
  chain = [c.teacher.name] + model_list(k.assistants) + [c.student.name]
  size = c.dataset.image_size
  for teacher, student in zip(chain[:-1], chain[1:]):
    feature_layer_pairs(c, models.feature_shapes(student, 10, size),
                        models.feature_shapes(teacher, 10, size),
                        student_name=student, teacher_name=teacher)


def _natural_key(name: str):
  """'stage10' after 'stage9': digits compare as numbers."""
  return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def stage_maps(shapes: dict) -> list[str]:
  """A model's stage outputs, shallow to deep: its `[B, H, W, C]` features
  but the stem, in the natural order of their names (block1, block2, ...;
  the models number their stages)."""
  return sorted((n for n, s in shapes.items() if len(s) == 4 and n != "stem"),
                key=_natural_key)


def _default_pairs(rule, s_shapes, t_shapes, names):
  pooled = ("pre_logits", "pre_logits")
  s_maps, t_maps = stage_maps(s_shapes), stage_maps(t_shapes)
  n = min(len(s_maps), len(t_maps))
  if rule != "pooled" and not n:
    who = names[0] if not s_maps else names[1]
    raise UserError(f"{who} has no feature maps ([B, H, W, C] features) for "
                    "the method's default layers; set config.kd.feature_layers")
  stages = list(zip(s_maps[len(s_maps) - n:], t_maps[len(t_maps) - n:]))
  return {"stages": stages, "last_stage": stages[-1:], "pooled": [pooled],
          "stages_and_pooled": stages + [pooled]}[rule]


def feature_layer_pairs(c, student_shapes, teacher_shapes, *, student_name,
                        teacher_name) -> tuple:
  """((student layer, teacher layer), ...) of config.kd.method's feature
  term for these models ({name: shape}: models.feature_shapes): those of
  config.kd.feature_layers, else the method's default (methods.FeatureTerm:
  the deepest stage maps of both models paired from the last, and/or
  'pre_logits'). UserError for a name a model lacks, or a flat feature
  where the method needs maps."""
  term = methods.get(c.kd.method).feature
  names = (student_name, teacher_name)
  pairs = [tuple(p.split(":", 1)) if ":" in p else (p, p)
           for p in model_list(c.kd.feature_layers)]
  pairs = pairs or _default_pairs(term.layers, student_shapes, teacher_shapes,
                                  names)
  if term.one_pair and len(pairs) != 1:
    raise UserError(f"config.kd.feature_layers={c.kd.feature_layers!r}: "
                    f"method {c.kd.method!r} takes one layer pair")
  for pair in pairs:
    for layer, shapes, name in zip(pair, (student_shapes, teacher_shapes),
                                   names):
      if layer not in shapes:
        raise UserError(f"config.kd.feature_layers: {layer!r} is not a feature"
                        f" of {name}; allowed: {', '.join(shapes)}")
      if term.maps and len(shapes[layer]) != 4:
        raise UserError(
            f"config.kd.feature_layers: method {c.kd.method!r} needs feature "
            f"maps [B, H, W, C]; {name}.{layer} has shape "
            f"{'x'.join(map(str, shapes[layer][1:]))}")
  return tuple(pairs)


def hint_shapes(config, num_classes, link=-1):
  """Shapes of the guided and the hint feature of distillation link `link`
  (config_lib.hint_links: the assistants', then the student's), checked:
  both names must exist and the spatial sizes must agree (the 1x1 adapter
  only maps channels)."""
  size = config.dataset.image_size
  links = hint_links(config)
  student, teacher, (guided, hint) = links[link]
  last = link % len(links) == len(links) - 1
  fields = ("hint_student_layer" if last else "hint_assistant_layers",
            "hint_teacher_layer" if link % len(links) == 0
            else "hint_assistant_layers")

  def feature_shape(name, layer, what):
    feats = models.feature_shapes(name, num_classes, size)
    if layer not in feats:
      raise UserError(f"config.kd.{what}={layer!r} is not a feature of "
                      f"{name}; allowed: {', '.join(feats)}")
    return feats[layer]

  s_shape = feature_shape(student, guided, fields[0])
  t_shape = feature_shape(teacher, hint, fields[1])
  if len(s_shape) != len(t_shape) or s_shape[1:-1] != t_shape[1:-1]:
    raise UserError(
        f"hint layers do not match in spatial size at {size}px: student "
        f"{student}.{guided} is "
        f"{'x'.join(map(str, s_shape[1:]))}, teacher {teacher}."
        f"{hint} is {'x'.join(map(str, t_shape[1:]))} "
        "(pick layers with equal height and width)")
  return s_shape, t_shape
