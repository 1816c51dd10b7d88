"""The pure train and eval steps: no I/O, no config inside a jitted function.

  train_step(state, batch, hp, teacher_vars) -> (state, metrics)

`StepSpec` holds the static choices (modules, method, preprocessing,
mixed precision, the static numbers of config.kd); `hp` holds the
hyperparameters a sweep varies, as arrays: temperature, alpha, the CTKD
lambda schedule (`cosine`), the seed of the initial weights and dropout and,
when config.loss.class_weights is set, the `[C]` cross-entropy class
weights (`class_weights`; absent: unweighted).
A single run jits `train_step`; a sweep jits `jax.vmap(train_step)` over
stacked states and hyperparameters, so both run the same code (mixed
precision, the non-finite guard, logit standardisation).

A batch is a dict: `image` (uint8 `[B, H, W, C]`), `label` (`[B]`), for
CRD `index` (`[B]`: each example's row in the training split) and,
where the teacher's outputs are cached or computed once for several cells,
`teacher_logits` and (FitNets) `hint`. Without them a step with a teacher
runs the frozen teacher in inference mode on the same augmented batch (a
feature method always does: it needs the teacher's feature maps).
With mixing (config.dataset.mixup_alpha / cutmix_alpha) that batch is the
mixed one, and every method's loss becomes lam * L(y) + (1 - lam) *
L(y_partner) (`mixing.mixed_loss`): the label terms see the mixed labels.
The teacher's variables are an argument of the step, never part of the
state, so they are never saved with the student.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from kd_jax import config_lib
from kd_jax import metrics
from kd_jax import models
from kd_jax.data import datasets as data
from kd_jax.data import mixing
from kd_jax.distill import kd_modules
from kd_jax.distill import losses
from kd_jax.distill import methods


@flax.struct.dataclass
class TrainState:
  step: jnp.ndarray
  # {'student': ...} plus, by method: 'temperature' (CTKD raw scalar or the
  # instance-wise MLP), 'adapter' (FitNets), 'peer<i>' (DML cohort).
  # 'feature' (a feature method's module: VID regressors, CRD heads, ...).
  params: Any
  # The state the step updates without gradients: {'student': BN stats,
  # 'peer<i>': ...} and, for a feature method, 'feature': its module's
  # other collections (ReviewKD's BN stats, CRD's memory banks).
  batch_stats: Any
  opt_state: Any


class Frozen(NamedTuple):
  """A frozen model a stage learns from (teacher or assistant)."""
  model: Any
  variables: Any
  subclasses: int = 1  # logits per class (subclass distillation)
  path: str = ""  # the checkpoint it was loaded from


# The mixing key: this fold of a step's augmentation key (crop and flip
# split the key itself).
MIX_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """uint8 images -> normalised float32 `[B, S, S, 3]`, augmented when the
  step passes a key (evaluation and the teacher cache pass none); the
  training view (`train_view`) is then mixed as `mix` says."""
  image_size: int
  normalization: str = "half"
  # 'none' | 'pad_crop' | 'random_resized_crop' (config_lib.train_transform)
  train_transform: str = "none"
  random_flip: bool = False
  crop_padding: int = 4
  rrc_scale: tuple = (0.08, 1.0)
  rrc_ratio: tuple = (3 / 4, 4 / 3)
  mix: mixing.MixSpec = mixing.MixSpec()

  @classmethod
  def from_spec(cls, d: config_lib.DataSpec) -> "Preprocess":
    return cls(d.image_size, d.normalization, d.train_transform,
               d.random_flip, d.crop_padding, d.rrc_scale, d.rrc_ratio,
               mixing.MixSpec(d.mixup_alpha, d.cutmix_alpha, d.mix_ratio,
                              d.mix_partner))

  def __call__(self, images, rng=None):
    return data.preprocess(
        images, image_size=self.image_size, normalization=self.normalization,
        rng=rng, train_transform=self.train_transform,
        random_flip=self.random_flip, crop_padding=self.crop_padding,
        rrc_scale=self.rrc_scale, rrc_ratio=self.rrc_ratio)

  def train_view(self, images, rng):
    """(x, mixing.Mix or None): the training input, cropped and flipped
    with `rng`, then mixed with a key of its own drawn from `rng` (so crop
    and flip are the same with and without mixing)."""
    x = self(images, rng)
    if not self.mix.active:
      return x, None
    b, h, w, _ = x.shape
    mix = mixing.draw(jax.random.fold_in(rng, MIX_STREAM), self.mix, b, h, w)
    return mixing.mix_images(x, mix), mix


@dataclasses.dataclass(frozen=True)
class StepSpec:
  method: str  # a key of methods.METHODS
  student: Any  # flax module
  preprocess: Preprocess
  kd: methods.KDSpec
  steps_per_epoch: int
  data_seed: int = 0  # augmentation; the weights' and dropout's seed is hp
  teacher: Any = None  # the frozen teacher's module
  teacher_subclasses: int = 1
  subclasses: int = 1  # the student's logits per class
  peers: tuple = ()  # DML: ((params key, module), ...) beside the student
  hint: tuple | None = None  # FitNets: (student layer, teacher layer)
  adapter: Any = None  # FitNets' 1x1 adapter module
  temperature_module: Any = None  # instance-wise CTKD's MLP
  feature: Any = None  # a feature method's module (kd_modules)
  feature_layers: tuple = ()  # its ((student layer, teacher layer), ...)
  mixed_precision: bool = False  # bf16 compute; f32 params, stats and loss
  teacher_bf16: bool = False  # teacher.compute_dtype: its forward in bf16
  # Fine-tuning's first phase: the model runs in inference mode (BatchNorm
  # on its running statistics, which stay as they are; no dropout) and the
  # optimizer (`finetune_optimizers`) updates the head only.
  frozen_backbone: bool = False


def make_spec(specs: config_lib.Specs, student, method: str, *,
              steps_per_epoch, teacher=None, teacher_subclasses=1,
              subclasses=1, peers=(), hint=None, adapter=None,
              temperature_module=None, feature=None,
              feature_layers=()) -> StepSpec:
  """The static part of a run's step, from the run's specs, outside jit."""
  return StepSpec(
      method=method, student=student,
      preprocess=Preprocess.from_spec(specs.data),
      kd=specs.kd, steps_per_epoch=steps_per_epoch,
      data_seed=specs.data.data_seed, teacher=teacher,
      teacher_subclasses=teacher_subclasses, subclasses=subclasses,
      peers=tuple(peers), hint=tuple(hint) if hint else None, adapter=adapter,
      temperature_module=temperature_module, feature=feature,
      feature_layers=tuple(map(tuple, feature_layers)),
      mixed_precision=specs.run.mixed_precision,
      teacher_bf16=specs.run.teacher_bf16)


def hyperparams(specs: config_lib.Specs, class_weights=None) -> dict:
  """The per-cell hyperparameters the step takes as arrays; `class_weights`
  (`[C]`, from `class_weights`) only when the CE is weighted, so that an
  unweighted step computes exactly the unweighted losses."""
  loss = specs.loss
  hp = {"temperature": jnp.float32(loss.temperature),
        "alpha": jnp.float32(loss.alpha),
        "cosine": jnp.bool_(loss.schedule == "cosine"),
        "seed": jnp.int32(specs.run.seed)}
  swept = methods.get(loss.method).sweep_fields
  if swept:  # the method's fields a sweep may vary, per cell
    hp["kd"] = {n: jnp.float32(getattr(specs.kd, n)) for n in swept}
  if class_weights is not None:
    hp["class_weights"] = jnp.asarray(class_weights, jnp.float32)
  return hp


def stack_hyperparams(cells, class_weights=None) -> dict:
  """The cells' (`config_lib.Specs`) hyperparameters stacked on a leading
  K axis; `class_weights` is one entry per cell (None: unweighted).
  Stacked arrays need one tree structure, so once any cell is weighted the
  unweighted ones get weights of 1 (the same loss up to rounding)."""
  weights = list(class_weights or [None] * len(cells))
  given = [w for w in weights if w is not None]
  if given:
    weights = [np.ones(len(given[0])) if w is None else w for w in weights]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *[
      hyperparams(c, w) for c, w in zip(cells, weights)])


def class_weights(loss: config_lib.LossSpec, train_labels, num_classes):
  """The `[C]` float32 class weights of config.loss.class_weights for a
  training split with `train_labels` (None: unweighted). Raises UserError
  for a list of the wrong length or 'balanced' with an absent class."""
  setting = loss.class_weights
  if setting is None:
    return None
  if setting == "balanced":
    counts = np.bincount(np.asarray(train_labels), minlength=num_classes)
    if not counts.all():
      raise config_lib.UserError(
          "config.loss.class_weights='balanced' needs every class in the "
          f"training split; class {int(np.argmin(counts))} has no example")
    return losses.balanced_class_weights(train_labels,
                                         num_classes).astype(np.float32)
  if len(setting) != num_classes:
    raise config_lib.UserError(
        f"config.loss.class_weights={loss.class_weights_text!r} has "
        f"{len(setting)} weights; the data has {num_classes} classes: give "
        f"{num_classes} (or 'none' / 'balanced')")
  return np.asarray(setting, np.float32)


def step_rngs(seed, step):
  """(augmentation key, dropout key) of one step; `seed` may be traced."""
  return jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), step))


def model_variables(params, batch_stats):
  return {"params": params, "batch_stats": batch_stats} if batch_stats else {
      "params": params}


def class_logits(logits_BxK, subclasses: int):
  return (losses.subclass_to_class_logits(logits_BxK, subclasses)
          if subclasses > 1 else logits_BxK)


def to_bf16(tree):
  return jax.tree.map(lambda a: a.astype(jnp.bfloat16)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def to_f32(tree):
  return jax.tree.map(lambda a: a.astype(jnp.float32)
                      if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def frozen_forward(apply, variables, x, bf16: bool):
  """`apply(variables, x)` of a frozen model; with `bf16`, its variables and
  input in bfloat16 and its floating outputs back in float32, so the loss
  and whatever consumes them stay float32."""
  if not bf16:
    return apply(variables, x)
  return to_f32(apply(*to_bf16((variables, x))))


def new_train_state(tx, params, batch_stats) -> TrainState:
  return TrainState(jnp.int32(0), params, batch_stats, tx.init(params))


# ------------------------------------------------------------- optimizer


def lr_schedule(opt: config_lib.OptimizerSpec, *, learning_rate, num_epochs,
                steps_per_epoch):
  """The learning rate per step: a linear warmup, then cosine decay to 0,
  constant, or 'step': x `lr_decay_factor` at each of `lr_decay_epochs` (the
  CIFAR benchmark's 150,180,210 of 240). A warmup in steps takes at most
  half of a shorter stage (a teacher or tiny run of the same config)."""
  total = max(1, num_epochs * steps_per_epoch)
  warmup = (min(opt.warmup_steps, total // 2) if opt.warmup_steps
            else int(opt.warmup_epochs * steps_per_epoch))
  if opt.lr_schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0 if warmup else learning_rate, learning_rate, warmup, total)
  if opt.lr_schedule == "step":
    after = optax.piecewise_constant_schedule(learning_rate, {
        e * steps_per_epoch - warmup: opt.lr_decay_factor
        for e in opt.lr_decay_epochs})
  else:
    after = optax.constant_schedule(learning_rate)
  if not warmup:
    return after
  return optax.join_schedules(
      [optax.linear_schedule(0.0, learning_rate, warmup), after], [warmup])


def make_optimizer(opt: config_lib.OptimizerSpec, kd: methods.KDSpec, *,
                   learning_rate, num_epochs, steps_per_epoch, ctkd: bool):
  """The student's optimizer (also for adapters and DML peers); with a
  learned temperature (CTKD) a multi_transform whose 'temperature' part
  ascends the loss: update = +mu * g, where the step has already scaled g
  by the curriculum's lambda (Li et al. 2023, eq. 6; `scale_temperature_grads`)."""
  lr = lr_schedule(opt, learning_rate=learning_rate, num_epochs=num_epochs,
                   steps_per_epoch=steps_per_epoch)
  if opt.optimizer == "adam":
    student_tx = optax.adamw(lr, weight_decay=opt.weight_decay)
  else:
    student_tx = optax.chain(optax.add_decayed_weights(opt.weight_decay),
                             optax.sgd(lr, momentum=opt.momentum,
                                       nesterov=opt.nesterov))
  if opt.grad_clip_norm:  # only then: the optimizer state keeps its layout
    student_tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm),
                             student_tx)
  transforms = {"student": student_tx}
  if ctkd:
    transforms["temperature"] = optax.chain(
        optax.scale(-1.0),  # gradient reversal: the temperature maximises L
        optax.sgd(kd.temperature_lr, momentum=kd.temperature_momentum or None))
  return optax.multi_transform(transforms, lambda params: {
      k: "temperature" if k == "temperature" else "student" for k in params})


def phase_view(txs, active: int):
  """One optimizer state for all of `txs` (the same tree whichever phase a
  checkpoint is saved in, so a run resumes across phase boundaries); the
  update runs `txs[active]` on its own part and leaves the others as they
  are, so each phase starts from a fresh state (as Keras' re-compile)."""
  def init(params):
    return tuple(tx.init(params) for tx in txs)

  def update(grads, state, params=None):
    updates, part = txs[active].update(grads, state[active], params)
    return updates, state[:active] + (part,) + state[active + 1:]
  return optax.GradientTransformation(init, update)


def finetune_optimizers(opt: config_lib.OptimizerSpec, kd: methods.KDSpec,
                        head_mask, *, learning_rate, num_epochs,
                        steps_per_epoch, ctkd: bool):
  """(frozen-phase tx, full-phase tx), sharing one state (`phase_view`).
  The frozen phase trains the leaves `head_mask` marks in the model's params
  (and any non-model params: a learned temperature, an adapter) at
  `finetune.frozen_lr`; every other model leaf gets a zero update."""
  frozen = optax.multi_transform(
      {"train": make_optimizer(opt, kd, learning_rate=opt.frozen_lr,
                               num_epochs=opt.frozen_epochs,
                               steps_per_epoch=steps_per_epoch, ctkd=ctkd),
       "frozen": optax.set_to_zero()},
      lambda params: {k: jax.tree.map(
          lambda h: "train" if h else "frozen", head_mask) if k == "student"
          else jax.tree.map(lambda _: "train", v) for k, v in params.items()})
  full = make_optimizer(opt, kd, learning_rate=learning_rate,
                        num_epochs=num_epochs - opt.frozen_epochs,
                        steps_per_epoch=steps_per_epoch, ctkd=ctkd)
  txs = (frozen, full)
  return phase_view(txs, 0), phase_view(txs, 1)


def ctkd_lambda(kd: methods.KDSpec, epoch, cosine):
  """CTKD's curriculum weight at `epoch`; `cosine` (an array: sweeps vary
  it per cell) picks the cosine or the linear schedule."""
  kw = dict(lambda_min=kd.lambda_min, lambda_max=kd.lambda_max,
            epoch_cap=kd.epoch_cap)
  return jnp.where(cosine,
                   losses.curriculum_lambda(epoch, schedule="cosine", **kw),
                   losses.curriculum_lambda(epoch, schedule="linear", **kw))


def scale_temperature_grads(kd: methods.KDSpec, grads, epoch, cosine):
  lam = ctkd_lambda(kd, epoch, cosine)
  return dict(grads, temperature=jax.tree.map(lambda g: g * lam,
                                              grads["temperature"]))


# ------------------------------------------------------------------ steps


def training_view(spec: StepSpec, images, step):
  """(x, mixing.Mix or None): the step's input, `images` preprocessed with
  the step's augmentation and mixing; a function of (data seed, step) only,
  so the student, a live teacher, a sweep's cells and the cached teacher
  views all see the same images."""
  return spec.preprocess.train_view(images, step_rngs(spec.data_seed, step)[0])


def augmented(spec: StepSpec, images, step):
  """The step's input `x` (`training_view` without its mixing draw)."""
  return training_view(spec, images, step)[0]


def teacher_layers(spec: StepSpec) -> tuple:
  """The teacher features the step reads: the hint layer, the feature
  term's layers."""
  hint = (spec.hint[1],) if spec.hint else ()
  return tuple(dict.fromkeys(hint + tuple(t for _, t in spec.feature_layers)))


def teacher_outputs(spec: StepSpec, teacher_vars, x):
  """(logits, {layer: feature} or None) of the frozen teacher, inference
  mode, in float32; computed in bf16 with `teacher_bf16`, and for the
  logits alone under mixed precision."""
  layers = teacher_layers(spec)
  if layers:
    def apply(variables, inputs):
      logits, feats, _ = models.apply_with_features(
          spec.teacher, variables, inputs, train=False)
      return logits, {k: feats[k] for k in layers}
    return frozen_forward(apply, teacher_vars, x, spec.teacher_bf16)
  logits = frozen_forward(
      lambda v, inputs: spec.teacher.apply(v, inputs, train=False),
      teacher_vars, x, spec.teacher_bf16 or spec.mixed_precision)
  return logits, None


def live_teacher_logits(spec: StepSpec, teacher_vars, images, step):
  """The teacher's logits for the step's batch, exactly as `train_step`
  computes them (a sweep computes them once for all of its cells)."""
  return teacher_outputs(spec, teacher_vars, augmented(spec, images, step))[0]


def make_live_teacher_fn(spec: StepSpec):
  """`live_teacher_logits` for `spec`, jitted: `(teacher_vars, images, step)
  -> logits`, for callers that run the teacher outside the train step."""
  return jax.jit(functools.partial(live_teacher_logits, spec))


def _teacher_signal(spec, batch, teacher_vars, x):
  """(teacher logits, {layer: teacher feature} or None), constants."""
  if "teacher_logits" in batch and not spec.feature_layers:
    feats = {spec.hint[1]: batch["hint"]} if "hint" in batch else None
    return jax.lax.stop_gradient((batch["teacher_logits"], feats))
  if spec.teacher is None:
    return None, None
  return jax.lax.stop_gradient(teacher_outputs(spec, teacher_vars, x))


def _forward(spec, module, params, batch_stats, x, rng):
  """Train-mode forward: (logits, features, new batch stats), in f32."""
  variables, inputs = model_variables(params, batch_stats), x
  if spec.mixed_precision:
    variables, inputs = to_bf16((variables, x))
  train = not spec.frozen_backbone
  logits, feats, new = models.apply_with_features(
      module, variables, inputs, train=train,
      mutable=("batch_stats",) if train else (), rngs={"dropout": rng})
  stats = new.get("batch_stats", {}) if train else batch_stats
  if spec.mixed_precision:
    logits, feats = to_f32((logits, feats))
    stats = to_f32(stats) if train else stats
  return logits, feats, stats


def _temperature(spec, method, params, hp, t_logits, s_logits):
  if method.temperature == "learned":
    return losses.ctkd_temperature(params["temperature"],
                                   t_start=spec.kd.t_start, t_end=spec.kd.t_end)
  if method.temperature == "instance":
    return spec.temperature_module.apply({"params": params["temperature"]},
                                         t_logits, s_logits)
  if method.temperature == "one":
    return jnp.float32(1.0)
  return hp["temperature"]


class StepInputs(NamedTuple):
  x: Any  # the preprocessed images
  labels_B: Any
  index_B: Any  # rows in the training split (CRD), or None
  t_logits: Any
  t_feats: Any  # {teacher layer: feature} or None
  batch_stats: Any
  epoch: Any
  rng: Any  # dropout
  mix: Any = None  # mixing.Mix of the batch, or None


def _feature_term(spec, method, inputs, params, s_feats):
  """(beta, warmed up at this epoch, * the feature term, the term, its
  module's new collections)."""
  s = [s_feats[a] for a, _ in spec.feature_layers]
  t = [inputs.t_feats[b] for _, b in spec.feature_layers]
  state = inputs.batch_stats["feature"]
  batch = kd_modules.FeatureBatch(inputs.index_B, inputs.labels_B,
                                  jax.random.fold_in(inputs.rng, 1))
  term, new_state = spec.feature.apply(
      {"params": params["feature"], **state}, s, t, batch, train=True,
      mutable=list(state))
  beta = methods.feature_weight(spec.kd, method, epoch=inputs.epoch)
  return beta * term, term, new_state


def _loss(spec, method, inputs, hp, params):
  """(loss, (student logits, new batch stats, mean T, extra metrics))."""
  x, labels_B, rng = inputs.x, inputs.labels_B, inputs.rng
  t_logits, batch_stats = inputs.t_logits, inputs.batch_stats
  s_logits, s_feats, stats = _forward(spec, spec.student, params["student"],
                                      batch_stats["student"], x, rng)
  new_stats, aux, logits_in = {"student": stats}, {}, s_logits
  temperature = _temperature(spec, method, params, hp, t_logits, s_logits)
  if method.cohort:
    cohort = [s_logits]
    for i, (key, module) in enumerate(spec.peers):
      p_logits, _, new_stats[key] = _forward(
          spec, module, params[key], batch_stats[key], x,
          jax.random.fold_in(rng, i + 1))
      cohort.append(p_logits)
    aux["peer_accuracy"] = jnp.mean(jnp.stack(
        [jnp.mean(jnp.argmax(z, -1) == labels_B) for z in cohort[1:]]))
    logits_in = jnp.stack(cohort)
  kd = methods.with_swept(spec.kd, hp.get("kd"))
  loss = mixing.mixed_loss(functools.partial(
      method.loss, kd, logits_in, t_logits, temperature=temperature,
      alpha=hp["alpha"], epoch=inputs.epoch,
      class_weights=hp.get("class_weights")), labels_B, inputs.mix)
  if spec.hint:
    adapted = spec.adapter.apply({"params": params["adapter"]},
                                 s_feats[spec.hint[0]])
    aux["hint_loss"] = h = losses.hint_loss(adapted,
                                            inputs.t_feats[spec.hint[1]])
    loss = loss + (h if method.hint_only else spec.kd.hint_weight * h)
  if method.feature is not None:
    weighted, aux["feature_loss"], new_stats["feature"] = _feature_term(
        spec, method, inputs, params, s_feats)
    loss = loss + weighted
  return loss, (s_logits, new_stats, jnp.mean(temperature), aux)


@jax.custom_batching.custom_vmap
def _materialized(flag):
  """`flag`, out of a `cond` XLA does not fuse: otherwise it copies the
  and-chain over the gradient leaves into each select of the guard, and the
  step's HLO grows with the square of the leaf count."""
  return jax.lax.cond(flag, lambda: jnp.bool_(True), lambda: jnp.bool_(False))


@_materialized.def_vmap
def _materialized_vmap(axis_size, in_batched, flag_K):
  del axis_size
  if not in_batched[0]:
    return _materialized(flag_K), False
  # Under vmap a `cond` on the [K] flags would become a select; this one's
  # predicate is unbatched (always true, but not foldable by XLA) and its
  # branches differ, so that XLA keeps the conditional.
  always = jnp.sum(flag_K.astype(jnp.float32)) >= 0.0
  return jax.lax.cond(always, lambda f: f, jnp.logical_not, flag_K), True


def _all_finite(loss, grads):
  finite = jnp.isfinite(loss) & jnp.all(jnp.stack(
      [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
  return _materialized(finite)


def _metrics(spec, loss, logits, labels_B, t_logits, temperature, aux, finite):
  pred_B = jnp.argmax(class_logits(logits, spec.subclasses), -1)
  out = {"loss": loss, "accuracy": jnp.mean(pred_B == labels_B),
         "temperature": temperature, **aux}
  if t_logits is not None:
    out["agreement"] = jnp.mean(pred_B == jnp.argmax(
        class_logits(t_logits, spec.teacher_subclasses), -1))
  out["finite"] = finite.astype(jnp.float32)
  return out


def make_train_step(spec: StepSpec, tx):
  """The pure `train_step(state, batch, hp, teacher_vars)`."""
  method = methods.get(spec.method)

  def train_step(state: TrainState, batch, hp, teacher_vars):
    x, mix = training_view(spec, batch["image"], state.step)
    labels_B = batch["label"]
    t_logits, t_feats = _teacher_signal(spec, batch, teacher_vars, x)
    epoch = state.step // spec.steps_per_epoch
    rng = step_rngs(hp["seed"], state.step)[1]
    inputs = StepInputs(x, labels_B, batch.get("index"), t_logits, t_feats,
                        state.batch_stats, epoch, rng, mix)
    (loss, (logits, batch_stats, temperature, aux)), grads = (
        jax.value_and_grad(functools.partial(_loss, spec, method, inputs, hp),
                           has_aux=True)(state.params))
    if method.learns_temperature:
      grads = scale_temperature_grads(spec.kd, grads, epoch, hp["cosine"])
    finite = _all_finite(loss, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(state.step + 1,
                           optax.apply_updates(state.params, updates),
                           batch_stats, opt_state)
    # A non-finite step changes nothing (config.nan_policy decides, on the
    # host, whether the run stops or goes on): the state stays the last good
    # one, only its step counter moves on.
    new_state = jax.tree.map(lambda n, o: jnp.where(finite, n, o),
                             new_state, state).replace(step=state.step + 1)
    return new_state, _metrics(spec, loss, logits, labels_B, t_logits,
                               temperature, aux, finite)

  return train_step


def make_eval_step(preprocess: Preprocess, model, *, subclasses=1,
                   teacher=None, teacher_subclasses=1):
  """`eval_step(variables, teacher_vars, batch)` in float32; `batch` has
  `image`, `label`, `mask` and, cached, `teacher_logits`."""
  def eval_step(variables, teacher_vars, batch):
    x = preprocess(batch["image"])
    logits_BxC = class_logits(model.apply(variables, x, train=False),
                              subclasses)
    labels_B, mask_B = batch["label"], batch["mask"]
    if teacher is not None or "teacher_logits" in batch:
      t_raw = (batch["teacher_logits"] if "teacher_logits" in batch else
               teacher.apply(teacher_vars, x, train=False))
      t_logits = class_logits(t_raw, teacher_subclasses)
      agree_B = (jnp.argmax(logits_BxC, -1) == jnp.argmax(t_logits, -1))
    else:
      agree_B = jnp.zeros_like(mask_B)
    loss_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC,
                                                             labels_B)
    return metrics.EvalMetrics.single_from_model_output(
        logits=logits_BxC, labels=labels_B, mask=mask_B, loss=loss_B,
        agree=agree_B.astype(jnp.float32),
        probs=jax.nn.softmax(logits_BxC.astype(jnp.float32), axis=-1))
  return eval_step
