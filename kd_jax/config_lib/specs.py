"""The validated config read once into small frozen specs: what the epoch
loop, batching, evaluation, preprocessing and the optimizer read. Each is
hashable, so a jitted function may close over it."""
from __future__ import annotations

import dataclasses

from kd_jax.config_lib.derived import int_list, normalization, teacher_bf16
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
  balanced_sampling: bool = False
  data_seed: int = 0  # the data order and augmentation's (config.data_seed, or seed)


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


@dataclasses.dataclass(frozen=True)
class Specs:
  data: DataSpec
  optimizer: OptimizerSpec
  kd: methods.KDSpec
  run: RunSpec


def data_seed(c) -> int:
  """Seed of the data order and augmentation (config.data_seed, or seed)."""
  return c.data_seed if c.data_seed >= 0 else c.seed


def data_spec(c) -> DataSpec:
  d = c.dataset
  return DataSpec(
      image_size=int(d.image_size), batch_size=int(c.batch_size),
      eval_batch_size=int(c.eval_batch_size), normalization=normalization(c),
      random_crop=bool(d.random_crop), random_flip=bool(d.random_flip),
      crop_padding=int(d.crop_padding),
      balanced_sampling=bool(d.balanced_sampling), data_seed=data_seed(c))


def optimizer_spec(c) -> OptimizerSpec:
  return OptimizerSpec(
      optimizer=c.optimizer, learning_rate=float(c.learning_rate),
      momentum=float(c.momentum), nesterov=bool(c.nesterov),
      weight_decay=float(c.weight_decay), lr_schedule=c.lr_schedule,
      warmup_epochs=float(c.warmup_epochs),
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
      mixed_precision=bool(c.mixed_precision), teacher_bf16=teacher_bf16(c))


def optimizer_and_kd(c) -> tuple[OptimizerSpec, methods.KDSpec]:
  """`step.make_optimizer`'s first two arguments."""
  return optimizer_spec(c), methods.kd_spec(c.kd)


def read_specs(c) -> Specs:
  """The specs of a validated config."""
  return Specs(data_spec(c), optimizer_spec(c), methods.kd_spec(c.kd),
               run_spec(c))
