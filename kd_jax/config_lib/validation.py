"""The checks of a config: each bad value is a one-line UserError naming
it and what is allowed. `validate` returns the values it resolved and
leaves the config as it is."""
from __future__ import annotations

import os
import re

import ml_collections

from kd_jax import models
from kd_jax.config_lib.args import get_path
from kd_jax.config_lib.args import model_list
from kd_jax.config_lib.defaults import COMPUTE_DTYPES
from kd_jax.config_lib.defaults import CORRUPT_IMAGES
from kd_jax.config_lib.defaults import DATASETS
from kd_jax.config_lib.defaults import DEFAULT_TEMPERATURE
from kd_jax.config_lib.defaults import EVAL_TRANSFORMS
from kd_jax.config_lib.defaults import LR_SCHEDULES
from kd_jax.config_lib.defaults import MIX_PARTNERS
from kd_jax.config_lib.defaults import MIX_RATIOS
from kd_jax.config_lib.defaults import NAN_POLICIES
from kd_jax.config_lib.defaults import NORMALIZATIONS
from kd_jax.config_lib.defaults import OPTIMIZERS
from kd_jax.config_lib.defaults import SELECT_METRICS
from kd_jax.config_lib.defaults import TRAIN_TRANSFORMS
from kd_jax.config_lib.defaults import WEIGHT_SOURCES
from kd_jax.config_lib.derived import class_weights_setting
from kd_jax.config_lib.derived import feature_layer_pairs
from kd_jax.config_lib.derived import int_list
from kd_jax.config_lib.derived import normalization
from kd_jax.config_lib.derived import teacher_epochs
from kd_jax.config_lib.derived import weight_fields
from kd_jax.distill import losses
from kd_jax.distill import methods
from kd_jax.errors import UserError


def validate(c: ml_collections.ConfigDict) -> dict:
  """Raises UserError naming the bad value and what is allowed; returns
  what it resolved ({'normalization': 'auto' resolved, 'class_weights':
  config.loss.class_weights parsed}); `c` stays as it is."""

  def one_of(value, allowed, what):
    if value not in allowed:
      raise UserError(
          f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")

  _validate_dataset_name(c.dataset.name)
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
  if int(c.prefetch_depth) < 0:
    raise UserError(f"config.prefetch_depth={c.prefetch_depth} must be >= 0 (0: off)")
  _validate_dataset_numbers(c.dataset, c.runlocal)
  _validate_mixing(c, one_of)
  _validate_transforms(c.dataset, one_of)
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
  _validate_teacher_class_names(c)
  resolved = {"normalization": normalization(c),
              "class_weights": class_weights_setting(c)}
  _validate_data_files(c.dataset)
  return resolved


def _validate_lr_schedule(c):
  if c.warmup_steps < 0 or c.warmup_epochs < 0:
    raise UserError(f"config.warmup_steps={c.warmup_steps}, warmup_epochs="
                    f"{c.warmup_epochs:g} must be >= 0")
  if c.warmup_steps and c.warmup_epochs:
    raise UserError(f"config.warmup_steps={c.warmup_steps} and warmup_epochs="
                    f"{c.warmup_epochs:g} are two warmups: set one")
  if not c.grad_clip_norm >= 0:
    raise UserError(f"config.grad_clip_norm={c.grad_clip_norm} must be >= 0 "
                    "(0: off)")
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
  if not float(d.in_memory_mb) >= 0:
    raise UserError(f"config.dataset.in_memory_mb={d.in_memory_mb} must be "
                    ">= 0 (0: stream every TFDS dataset)")


# A TFDS dataset name: 'name', 'name/config', 'name:version'.
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.-]+)?(:[0-9.*]+)?")


def _validate_dataset_name(name):
  """A built-in source or the name of a TFDS dataset; whether TFDS has
  it, prepared, as image classification, is checked when the data loads
  (data/tfds_source.py), where a near miss of a built-in name is named."""
  if name in DATASETS or _TFDS_NAME.fullmatch(str(name)):
    return
  raise UserError(f"unknown config.dataset.name {name!r}; allowed: "
                  f"{', '.join(DATASETS)} or a TFDS image-classification "
                  "dataset's name (e.g. imagenet2012, oxford_flowers102)")


def _validate_transforms(d, one_of):
  """The training crop and the evaluation geometry (data/transforms.py)."""
  one_of(d.train_transform, TRAIN_TRANSFORMS, "config.dataset.train_transform")
  one_of(d.eval_transform, EVAL_TRANSFORMS, "config.dataset.eval_transform")
  if d.random_crop and d.train_transform not in ("", "pad_crop"):
    raise UserError(
        f"config.dataset.random_crop=True asks for the pad crop but "
        f"train_transform={d.train_transform!r}; set one of the two")
  if not 0.0 < d.rrc_min_scale <= d.rrc_max_scale <= 1.0:
    raise UserError(
        f"config.dataset.rrc_min_scale={d.rrc_min_scale:g}, rrc_max_scale="
        f"{d.rrc_max_scale:g} must satisfy 0 < min <= max <= 1")
  if not 0.0 < d.rrc_min_ratio <= d.rrc_max_ratio:
    raise UserError(
        f"config.dataset.rrc_min_ratio={d.rrc_min_ratio:g}, rrc_max_ratio="
        f"{d.rrc_max_ratio:g} must satisfy 0 < min <= max")
  for name in ("train_source_size", "eval_resize_size"):
    v = int(d[name])
    if v and v < d.image_size:
      raise UserError(f"config.dataset.{name}={v} must be 0 (automatic) or "
                      f">= image_size ({d.image_size})")


def _validate_mixing(c, one_of):
  """Mixup / CutMix: the teacher must see the student's mixed images, so
  neither a logits file (logits of unmixed images) nor a feature method
  (CRD's memory banks and labels are per example) mixes."""
  d = c.dataset
  one_of(d.mix_ratio, MIX_RATIOS, "config.dataset.mix_ratio")
  one_of(d.mix_partner, MIX_PARTNERS, "config.dataset.mix_partner")
  for name in ("mixup_alpha", "cutmix_alpha"):
    if not 0.0 <= d[name] < float("inf"):
      raise UserError(f"config.dataset.{name}={d[name]} must be >= 0 (0: off)")
  if not (d.mixup_alpha or d.cutmix_alpha):
    return
  what = (f"config.dataset.mixup_alpha={d.mixup_alpha:g}, "
          f"cutmix_alpha={d.cutmix_alpha:g} mixes the training images")
  method = methods.get(c.kd.method)
  if c.teacher.logits and method.teacher:
    raise UserError(f"{what}; config.teacher.logits holds the teacher's "
                    "logits of unmixed images: set config.teacher.checkpoint "
                    "so that the teacher sees the mixed images")
  if method.feature is not None:
    raise UserError(f"{what}; feature method {c.kd.method!r} does not mix "
                    "(its term reads per-example features and labels): set "
                    "both alphas to 0")


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
  if c.bn_recalibration_steps < 0:
    raise UserError(f"config.bn_recalibration_steps={c.bn_recalibration_steps}"
                    " must be >= 0 (0: off)")
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


def _validate_teacher_class_names(c):
  """The list itself; whether it names the data's classes is known once
  the data is read (`pipeline.load_frozen`). A run without a teacher
  ignores it, as it ignores teacher.checkpoint."""
  names = model_list(c.teacher.class_names)
  method = methods.get(c.kd.method)
  if not names or not method.teacher:
    return
  what = f"config.teacher.class_names={','.join(names)}"
  twice = sorted({n for n in names if names.count(n) > 1})
  if twice:
    raise UserError(f"{what} names {', '.join(twice)} more than once (one "
                    "name per teacher output)")
  if c.teacher.logits:
    raise UserError(f"{what} reorders a teacher.checkpoint's classifier; the "
                    "columns of config.teacher.logits must already be in the "
                    "data's class order")
  if not c.teacher.checkpoint:
    raise UserError(f"{what} gives the output order of a teacher trained "
                    "elsewhere (config.teacher.checkpoint); the teacher this "
                    "run trains is in the data's class order")
  if method.subclass_logits:
    raise UserError(f"{what}: kd.method={c.kd.method} needs a teacher with "
                    f"kd.subclasses={c.kd.subclasses} logits per class in "
                    "the data's class order; teacher.class_names reorders "
                    "a teacher with one output per class only")


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
  _validate_loss_weights(k)
  _refuse_ignored_options(c)


def _validate_loss_weights(k) -> None:
  """kd.ce_weight and kd.kd_weight: both -1 (unset) or both >= 0."""
  for name in ("ce_weight", "kd_weight"):
    if k[name] < 0 and k[name] != -1:
      raise UserError(f"config.kd.{name}={k[name]} must be >= 0 (or -1: "
                      "unset)")
  if (k.ce_weight < 0) != (k.kd_weight < 0):
    raise UserError(f"config.kd.ce_weight={k.ce_weight:g}, kd_weight="
                    f"{k.kd_weight:g}: set both (>= 0) or leave both at -1 "
                    "(weights 1 - alpha and alpha)")


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
              f"loss.class_weights={c.loss.class_weights!r}"),
             (k.ce_weight >= 0 and not logit.loss_weights,
              f"kd.ce_weight={k.ce_weight:g}, kd.kd_weight={k.kd_weight:g}")]
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


def _validate_pretrain(c) -> None:
  """A method with a pre-training stage (methods.Pretrain): its epochs, and
  one teacher to pre-train against."""
  k = c.kd
  pretrain = methods.get(k.method).pretrain
  if pretrain is None:
    return
  if k[pretrain.epochs] < 1:
    raise UserError(f"config.kd.{pretrain.epochs}={k[pretrain.epochs]} must "
                    "be >= 1 (the pre-training stage's epochs)")
  if k.assistants:
    raise UserError(f"method {k.method!r} pre-trains the student against "
                    "its teacher: teacher assistants are not supported")


def _validate_features(c, one_of, models) -> None:
  """The feature and relation methods' settings (the layer names, per link,
  against the models: `feature_layer_pairs`)."""
  k = c.kd
  term = methods.feature_term(k.method)
  if term is None:
    return
  one_of(k.feature_logit_method, methods.LOGIT_TERMS,
         "config.kd.feature_logit_method")
  _validate_pretrain(c)
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
  for name, low, what in (("crd_negatives", 1, ">= 1"), ("crd_dim", 1, ">= 1"),
                          ("cc_dim", 1, ">= 1"), ("kdsvd_k", 1, ">= 1")):
    if k[name] < low:
      raise UserError(f"config.kd.{name}={k[name]} must be {what}")
  for name in ("crd_temperature", "ft_init_lr"):
    if not k[name] > 0:
      raise UserError(f"config.kd.{name}={k[name]} must be > 0")
  if not 0.0 <= k.crd_momentum < 1.0:
    raise UserError(f"config.kd.crd_momentum={k.crd_momentum} must be in [0, 1)")
  if term.warmup and k[term.warmup] < 0:
    raise UserError(f"config.kd.{term.warmup}={k[term.warmup]} must be >= 0 "
                    "(0: no warm-up)")
  chain = [c.teacher.name] + model_list(k.assistants) + [c.student.name]
  size = c.dataset.image_size
  for teacher, student in zip(chain[:-1], chain[1:]):
    pairs = feature_layer_pairs(k.method, k.feature_layers,
                                models.feature_shapes(student, 10, size),
                                models.feature_shapes(teacher, 10, size),
                                student_name=student, teacher_name=teacher)
    if term.teacher_bn:
      _check_teacher_bn(k.method, teacher, [t for _, t in pairs])


def _check_teacher_bn(method, teacher, layers) -> None:
  """Each of `layers` of `teacher` has a BatchNorm before its ReLU (OFD's
  margin: models.bn_before_relu)."""
  model = models.get_model(teacher, num_classes=10)
  have = list(model.preact_bn()) if hasattr(model, "preact_bn") else []
  allowed = ", ".join(have) or "none (the CIFAR ResNets and plain CNNs have)"
  for layer in layers:
    if layer not in have:
      raise UserError(
          f"config.kd.feature_layers: method {method!r} takes its margin from "
          f"the BatchNorm before the teacher layer's ReLU; {teacher}.{layer} "
          f"has none known; allowed: {allowed}")


