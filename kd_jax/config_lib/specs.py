"""The validated config read once into small frozen specs: what the epoch
loop, batching, evaluation, preprocessing and the optimizer read. Each is
hashable, so a jitted function may close over it."""
from __future__ import annotations

import dataclasses
import json

from kd_jax.config_lib.args import model_list
from kd_jax.config_lib.derived import (as_json, class_weights_setting,
                                       int_list, normalization, teacher_bf16)
from kd_jax.distill import methods


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Batching, preprocessing and evaluation."""
  image_size: int
  batch_size: int
  eval_batch_size: int
  normalization: str  # 'auto' resolved
  random_crop: bool = False
  random_flip: bool = False
  crop_padding: int = 4
  # 'none' | 'pad_crop' | 'random_resized_crop' (random_crop resolved)
  train_transform: str = "none"
  rrc_scale: tuple = (0.08, 1.0)
  rrc_ratio: tuple = (3 / 4, 4 / 3)
  # The stored geometry of decoded image files (data/transforms.storage):
  # what the teacher cache's key names beside the files' sizes and mtimes.
  train_source_size: int = 0
  eval_transform: str = "resize"
  eval_resize_size: int = 0
  # Mixing after crop/flip (data/mixing.py; alpha 0: off)
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_ratio: str = "beta"
  mix_partner: str = "permutation"
  balanced_sampling: bool = False
  data_seed: int = 0  # the data order and augmentation's (config.data_seed, or seed)
  transfer_limit: int = 0  # the distilled stages' training images (0: all)
  prefetch_depth: int = 2  # batches placed on the devices ahead (0: none)

  @property
  def mixes(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  @property
  def augments(self) -> bool:
    """A training example's input changes from epoch to epoch."""
    return (self.train_transform != "none" or self.random_flip
            or self.mixes)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """The student's optimizer and learning-rate schedule (the learned
  temperature's own optimizer reads KDSpec)."""
  optimizer: str
  learning_rate: float
  momentum: float = 0.9
  nesterov: bool = False
  weight_decay: float = 0.0
  lr_schedule: str = "cosine"
  warmup_epochs: float = 0.0
  warmup_steps: int = 0  # > 0: the warmup in steps (instead of epochs)
  grad_clip_norm: float = 0.0  # > 0: the student's gradient clipped to it
  lr_decay_epochs: tuple = ()  # 'step': epochs of the decays
  lr_decay_factor: float = 0.1
  frozen_epochs: int = 0  # fine-tuning's head-only phase: its epochs
  frozen_lr: float = 1e-3  # and its learning rate


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The epoch loop's cadence and decisions."""
  seed: int
  num_epochs: int
  max_steps_per_epoch: int = 0
  log_every_steps: int = 50
  checkpoint_every_steps: int = 500
  nan_policy: str = "stop"
  select_metric: str = "accuracy"
  early_stopping_patience: int = 5
  mixed_precision: bool = False
  teacher_bf16: bool = False  # teacher.compute_dtype: its forward in bf16
  bn_recalibration_steps: int = 0  # precise BN before evaluations (0: off)


@dataclasses.dataclass(frozen=True)
class TeacherSpec:
  """Where the frozen teacher comes from and how its logits are computed
  and cached."""
  name: str
  checkpoint: str = ""
  cache_dir: str = ""  # '' : no teacher cache
  compute_dtype: str = "float32"
  # teacher.class_names: the checkpoint's output order; () = the data's
  class_names: tuple = ()


@dataclasses.dataclass(frozen=True)
class LossSpec:
  """The method, its per-cell numbers (the step takes them as arrays), its
  feature layers and the cross-entropy's class weights."""
  method: str
  temperature: float
  alpha: float
  schedule: str = "cosine"
  feature_layers: str = ""  # config.kd.feature_layers ('' : the method's)
  class_weights: object = None  # None, 'balanced' or a tuple of floats
  class_weights_text: str = "none"  # as given, for messages


@dataclasses.dataclass(frozen=True)
class Specs:
  data: DataSpec
  optimizer: OptimizerSpec
  kd: methods.KDSpec
  run: RunSpec
  teacher: TeacherSpec
  loss: LossSpec
  # The resolved config as recorded (config_lib.as_json, sorted keys): what
  # a stage's checkpoint fingerprint hashes.
  config_json: str


def data_seed(c) -> int:
  """Seed of the data order and augmentation (config.data_seed, or seed)."""
  return c.data_seed if c.data_seed >= 0 else c.seed


def train_transform(d) -> str:
  """config.dataset.train_transform with '' resolved from random_crop."""
  if d.train_transform:
    return d.train_transform
  return "pad_crop" if d.random_crop else "none"


def data_spec(c) -> DataSpec:
  d = c.dataset
  return DataSpec(
      image_size=int(d.image_size), batch_size=int(c.batch_size),
      eval_batch_size=int(c.eval_batch_size), normalization=normalization(c),
      random_crop=bool(d.random_crop), random_flip=bool(d.random_flip),
      crop_padding=int(d.crop_padding),
      train_transform=train_transform(d),
      rrc_scale=(float(d.rrc_min_scale), float(d.rrc_max_scale)),
      rrc_ratio=(float(d.rrc_min_ratio), float(d.rrc_max_ratio)),
      train_source_size=int(d.train_source_size),
      eval_transform=d.eval_transform,
      eval_resize_size=int(d.eval_resize_size),
      mixup_alpha=float(d.mixup_alpha),
      cutmix_alpha=float(d.cutmix_alpha), mix_ratio=d.mix_ratio,
      mix_partner=d.mix_partner,
      balanced_sampling=bool(d.balanced_sampling), data_seed=data_seed(c),
      transfer_limit=int(d.transfer_limit),
      prefetch_depth=int(c.prefetch_depth))


def optimizer_spec(c) -> OptimizerSpec:
  return OptimizerSpec(
      optimizer=c.optimizer, learning_rate=float(c.learning_rate),
      momentum=float(c.momentum), nesterov=bool(c.nesterov),
      weight_decay=float(c.weight_decay), lr_schedule=c.lr_schedule,
      warmup_epochs=float(c.warmup_epochs), warmup_steps=int(c.warmup_steps),
      grad_clip_norm=float(c.grad_clip_norm),
      lr_decay_epochs=tuple(int_list(c.lr_decay_epochs)),
      lr_decay_factor=float(c.lr_decay_factor),
      frozen_epochs=int(c.finetune.frozen_epochs),
      frozen_lr=float(c.finetune.frozen_lr))


def run_spec(c) -> RunSpec:
  return RunSpec(
      seed=int(c.seed), num_epochs=int(c.num_epochs),
      max_steps_per_epoch=int(c.max_steps_per_epoch),
      log_every_steps=int(c.log_every_steps),
      checkpoint_every_steps=int(c.checkpoint_every_steps),
      nan_policy=c.nan_policy, select_metric=c.select_metric,
      early_stopping_patience=int(c.early_stopping_patience),
      mixed_precision=bool(c.mixed_precision), teacher_bf16=teacher_bf16(c),
      bn_recalibration_steps=int(c.bn_recalibration_steps))


def teacher_spec(c) -> TeacherSpec:
  t = c.teacher
  return TeacherSpec(name=t.name, checkpoint=t.checkpoint,
                     cache_dir=t.cache_dir, compute_dtype=t.compute_dtype,
                     class_names=tuple(model_list(t.class_names)))


def loss_spec(c) -> LossSpec:
  k = c.kd
  return LossSpec(
      method=k.method, temperature=float(k.temperature),
      alpha=float(k.alpha), schedule=k.schedule,
      feature_layers=str(k.feature_layers),
      class_weights=class_weights_setting(c),
      class_weights_text=str(c.loss.class_weights))


def optimizer_and_kd(c) -> tuple[OptimizerSpec, methods.KDSpec]:
  """`step.make_optimizer`'s first two arguments."""
  return optimizer_spec(c), methods.kd_spec(c.kd)


def read_specs(c) -> Specs:
  """The specs of a validated config."""
  return Specs(data_spec(c), optimizer_spec(c), methods.kd_spec(c.kd),
               run_spec(c), teacher_spec(c), loss_spec(c),
               json.dumps(as_json(c), sort_keys=True))
